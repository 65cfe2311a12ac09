"""Build trioproxy/config/envoy_v3.pb, the Envoy v3 API as a FileDescriptorSet.

The runtime loads this file into a private ``DescriptorPool`` so that trioproxy needs only
``protobuf`` at run time; ``xds-protos`` (which ships the generated ``_pb2`` modules) is a
development tool. The script imports every ``_pb2`` module under the packages listed in
``ROOTS``, collects their file descriptors with all transitive dependencies (well-known types,
``validate/`` for PGV rules, ``udpa/``, ``xds/``), orders them dependencies-first with ties
broken by file name, and writes the serialized set. Output is deterministic.

Re-run after upgrading xds-protos::

    /work/venv/bin/python tools/build_descriptors.py
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

ROOTS = (
    "envoy.config",
    "envoy.extensions",
    "envoy.admin.v3",
    "envoy.service.discovery.v3",
    "envoy.type",
    "envoy.data",
    "envoy.watchdog",
    "envoy.service",
    "xds.type.matcher",
    "xds.core",
    "xds.type.v3",
    "udpa.type.v1",
)
OUT = Path(__file__).resolve().parent.parent / "trioproxy" / "config" / "envoy_v3.pb"


def _modules(root: str) -> list[str]:
    pkg = importlib.import_module(root)
    names = [
        info.name
        for info in pkgutil.walk_packages(pkg.__path__, prefix=root + ".")
        if info.name.endswith("_pb2")
    ]
    return sorted(names)


def main() -> int:
    files: dict[str, FileDescriptor] = {}
    for root in ROOTS:
        for name in _modules(root):
            if "/v2" in name.replace(".", "/") or ".v4alpha" in name:
                continue
            try:
                mod = importlib.import_module(name)
            except Exception as exc:
                print(f"skip {name}: {exc}", file=sys.stderr)
                continue
            fd = getattr(mod, "DESCRIPTOR", None)
            if isinstance(fd, FileDescriptor):
                files[fd.name] = fd
    # close over dependencies
    stack = list(files.values())
    while stack:
        fd = stack.pop()
        for dep in fd.dependencies:
            if dep.name not in files:
                files[dep.name] = dep
                stack.append(dep)
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for dep in sorted(d.name for d in files[n].dependencies):
            visit(dep)
        ordered.append(n)

    for n in sorted(files):
        visit(n)
    fds = descriptor_pb2.FileDescriptorSet()
    for n in ordered:
        proto = fds.file.add()
        files[n].CopyToProto(proto)
    data = fds.SerializeToString(deterministic=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(ordered)} files, {len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
