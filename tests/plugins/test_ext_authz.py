"""ext_authz when the authorization service fails: refused with status_on_error, or let
through with failure_mode_allow; a slow service is an error after its timeout."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, Reply, free_ports, simple_config, start_proxy

AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


def authz_filter(*extra: str, timeout: str = "0.3s") -> str:
    lines = "".join(f"\n    {line}" for line in extra)
    return f"""
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": {AUTHZ}
    http_service:
      server_uri: {{uri: "http://authz", cluster: authz, timeout: {timeout}}}{lines}"""


def with_authz_cluster(config: str, port: int) -> str:
    cluster = f"""
  - name: authz
    load_assignment:
      cluster_name: authz
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}"""
    return config.replace("\n  clusters:\n", "\n  clusters:" + cluster + "\n", 1)


async def get(port: int) -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        resp, body = await client.request("GET", "/orders")
    finally:
        await client.aclose()
    return resp.status_code, body


async def test_a_dead_service_refuses_with_status_on_error(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    (dead,) = free_ports(1)
    filters = authz_filter("status_on_error: {code: ServiceUnavailable}")
    config = with_authz_cluster(simple_config([port], http_filters=filters), dead)
    proxy = await start_proxy(nursery, config)
    assert await get(proxy.port) == (503, b"")
    assert backend.requests == []
    assert proxy.stat("http.ingress_http.ext_authz.error") == 1


async def test_failure_mode_allow_lets_requests_through_marked(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    (dead,) = free_ports(1)
    filters = authz_filter("failure_mode_allow: true", "failure_mode_allow_header_add: true")
    proxy = await start_proxy(
        nursery, with_authz_cluster(simple_config([port], http_filters=filters), dead)
    )
    assert await get(proxy.port) == (200, b"backend")
    assert backend.requests[0].header("x-envoy-auth-failure-mode-allowed") == "true"
    assert proxy.stat("http.ingress_http.ext_authz.failure_mode_allowed") == 1


async def test_a_slow_service_is_an_error_after_its_timeout(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    slow = Backend(handler=lambda rec: Reply(delay=2.0))
    slow_port = await nursery.start(slow.serve)
    filters = authz_filter(timeout="0.2s")
    proxy = await start_proxy(
        nursery, with_authz_cluster(simple_config([port], http_filters=filters), slow_port)
    )
    start = trio.current_time()
    assert await get(proxy.port) == (403, b"")
    assert trio.current_time() - start < 1.0
    assert proxy.stat("cluster.authz.upstream_rq_timeout") == 1
