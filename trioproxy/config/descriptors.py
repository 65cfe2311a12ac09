"""The Envoy v3 API as a private protobuf ``DescriptorPool``.

``envoy_v3.pb`` is a FileDescriptorSet built by tools/build_descriptors.py from the xds-protos
package; loading it needs only the protobuf runtime (about 50 ms, once, on first use).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

_PB = Path(__file__).with_name("envoy_v3.pb")
_pool: descriptor_pool.DescriptorPool | None = None


def pool() -> descriptor_pool.DescriptorPool:
    """The private pool holding the Envoy v3 API (loaded on first use)."""
    global _pool
    if _pool is None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(_PB.read_bytes())
        p = descriptor_pool.DescriptorPool()
        for f in fds.file:
            p.Add(f)
        _pool = p
    return _pool
