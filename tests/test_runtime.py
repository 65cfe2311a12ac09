"""layered_runtime: static, disk and admin layers, read by routes' runtime_fraction at request
time; /runtime shows the layers, POST /runtime_modify changes the admin layer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from tests.support import Backend, Client, Reply, simple_config, start_proxy

ROUTES = """
              - match:
                  prefix: "/"
                  runtime_fraction:
                    default_value: {numerator: 50}
                    runtime_key: routing.canary
                route: {cluster: backend}
                request_headers_to_add: [{header: {key: x-canary, value: "1"}}]
              - match: {prefix: "/"}
                route: {cluster: backend}"""


def with_runtime(config: str, layers: str) -> str:
    return (
        config
        + f"""
layered_runtime:
  layers:{layers}
"""
    )


async def canary_share(port: int, backend: Backend, n: int = 200) -> float:
    before = len(backend.requests)
    client = await Client.connect(port)
    try:
        for _ in range(n):
            await client.request("GET", "/")
    finally:
        await client.aclose()
    seen = backend.requests[before:]
    return sum(1 for r in seen if r.header("x-canary") == "1") / n


async def admin(port: int, method: str, target: str) -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        resp, body = await client.request(method, target)
    finally:
        await client.aclose()
    return resp.status_code, body


async def test_the_default_fraction_splits_traffic(nursery: trio.Nursery) -> None:
    backend = Backend(handler=lambda rec: Reply())
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port], routes=ROUTES))
    assert 0.35 < await canary_share(proxy.port, backend, 400) < 0.65  # 50 %, not all


async def test_static_and_admin_layers_decide(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    layers = """
  - name: base
    static_layer: {routing: {canary: 0}}
  - name: admin
    admin_layer: {}"""
    proxy = await start_proxy(nursery, with_runtime(simple_config([port], routes=ROUTES), layers))
    assert await canary_share(proxy.port, backend) == 0.0  # the static layer says 0 %
    status, _ = await admin(proxy.admin_port, "POST", "/runtime_modify?routing.canary=100")
    assert status == 200
    assert await canary_share(proxy.port, backend) == 1.0  # the admin layer wins
    status, body = await admin(proxy.admin_port, "GET", "/runtime")
    dump = json.loads(body)
    assert dump["layers"] == ["base", "admin"]
    assert dump["entries"]["routing.canary"] == {"final_value": "100", "layer_values": ["0", "100"]}
    assert proxy.stat("runtime.admin_overrides_active") == 1
    # an empty value takes the override away
    await admin(proxy.admin_port, "POST", "/runtime_modify?routing.canary=")
    assert await canary_share(proxy.port, backend) == 0.0


async def test_a_disk_layer_follows_a_symlink_swap(nursery: trio.Nursery, tmp_path: Path) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    for version, value in (("v1", "0"), ("v2", "100")):
        (tmp_path / version / "routing").mkdir(parents=True)
        (tmp_path / version / "routing" / "canary").write_text(value + "\n")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    layers = f"""
  - name: disk
    disk_layer: {{symlink_root: "{current}", subdirectory: ""}}"""
    proxy = await start_proxy(nursery, with_runtime(simple_config([port], routes=ROUTES), layers))
    assert await canary_share(proxy.port, backend) == 0.0
    tmp = tmp_path / "next"
    tmp.symlink_to(tmp_path / "v2")
    os.replace(tmp, current)  # the atomic swap deployments do
    with trio.fail_after(5):
        while True:
            if await canary_share(proxy.port, backend, 20) == 1.0:
                break
            await trio.sleep(0.2)
    assert proxy.stat("runtime.load_success") >= 2


async def test_weighted_clusters_read_weights_from_the_runtime(nursery: trio.Nursery) -> None:
    stable, canary = Backend(name="stable"), Backend(name="canary")
    port = await nursery.start(stable.serve)
    canary_port = await nursery.start(canary.serve)
    routes = """
              - match: {prefix: "/"}
                route:
                  weighted_clusters:
                    runtime_key_prefix: routing.split
                    clusters: [{name: backend, weight: 100}, {name: canary, weight: 0}]"""
    cluster = f"""
  - name: canary
    load_assignment:
      cluster_name: canary
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {canary_port}}}}}"""
    config = simple_config([port], routes=routes).replace(
        "\n  clusters:\n", "\n  clusters:" + cluster + "\n", 1
    )
    layers = """
  - name: admin
    admin_layer: {}"""
    proxy = await start_proxy(nursery, with_runtime(config, layers))

    async def bodies() -> set[bytes]:
        client = await Client.connect(proxy.port)
        try:
            return {(await client.request("GET", "/"))[1] for _ in range(20)}
        finally:
            await client.aclose()

    assert await bodies() == {b"stable"}
    target = "/runtime_modify?routing.split.backend=0&routing.split.canary=100"
    assert (await admin(proxy.admin_port, "POST", target))[0] == 200
    assert await bodies() == {b"canary"}


async def test_filters_read_their_runtime_keys(nursery: trio.Nursery) -> None:
    """local_ratelimit's filter_enabled points at a runtime key the static layer sets to 0:
    the filter limits nothing although its default is 100 %."""
    port = await nursery.start(Backend().serve)
    limiter = """
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: lrl
    token_bucket: {max_tokens: 1, fill_interval: 60s}
    filter_enabled: {default_value: {numerator: 100}, runtime_key: lrl.enabled}
    filter_enforced: {default_value: {numerator: 100}}"""
    layers = """
  - name: base
    static_layer: {lrl: {enabled: 0}}
  - name: admin
    admin_layer: {}"""
    proxy = await start_proxy(
        nursery, with_runtime(simple_config([port], http_filters=limiter), layers)
    )

    async def statuses() -> list[int]:
        client = await Client.connect(proxy.port)
        try:
            return [(await client.request("GET", "/"))[0].status_code for _ in range(3)]
        finally:
            await client.aclose()

    assert await statuses() == [200, 200, 200]
    await admin(proxy.admin_port, "POST", "/runtime_modify?lrl.enabled=100")
    assert await statuses() == [200, 429, 429]


async def test_the_fault_filter_reads_envoys_runtime_keys(nursery: trio.Nursery) -> None:
    """A fault configured at 0 % aborts every request once the runtime says 100 %, with the
    status the runtime gives (Envoy's default key names)."""
    port = await nursery.start(Backend().serve)
    fault = """
- name: envoy.filters.http.fault
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    abort: {http_status: 503, percentage: {numerator: 0}}"""
    layers = """
  - name: admin
    admin_layer: {}"""
    proxy = await start_proxy(
        nursery, with_runtime(simple_config([port], http_filters=fault), layers)
    )

    async def status() -> int:
        client = await Client.connect(proxy.port)
        try:
            return (await client.request("GET", "/"))[0].status_code
        finally:
            await client.aclose()

    assert await status() == 200
    target = "/runtime_modify?fault.http.abort.abort_percent=100&fault.http.abort.http_status=418"
    await admin(proxy.admin_port, "POST", target)
    assert await status() == 418
