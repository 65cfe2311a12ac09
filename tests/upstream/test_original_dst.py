"""ORIGINAL_DST clusters over HTTP: the host comes from `x-envoy-original-dst-host`."""

from __future__ import annotations

import trio

from tests.support import HCM_TYPE, Backend, Client, start_proxy


def config(cleanup: str = "5s") -> str:
    return f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: passthrough}}
  clusters:
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    cleanup_interval: {cleanup}
    original_dst_lb_config: {{use_http_header: true}}
"""


async def test_the_header_picks_the_host(nursery: trio.Nursery) -> None:
    a, b = Backend(name="a"), Backend(name="b")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    proxy = await start_proxy(nursery, config())
    client = await Client.connect(proxy.port)
    try:
        for backend in (a, b, a):
            hdr = ("x-envoy-original-dst-host", f"127.0.0.1:{backend.port}")
            resp, body = await client.request("GET", "/", [hdr])
            assert (resp.status_code, body) == (200, backend.name.encode())
        # no header and no restored destination (no original_dst listener filter): no host
        resp, body = await client.request("GET", "/")
        assert resp.status_code == 503
        assert body == b"no healthy upstream"
        resp, _ = await client.request("GET", "/", [("x-envoy-original-dst-host", "nonsense")])
        assert resp.status_code == 503
    finally:
        await client.aclose()
    assert proxy.stat("cluster.passthrough.membership_total") == 2
    assert proxy.stat("cluster.passthrough.upstream_cx_none_healthy") == 2


async def test_unused_hosts_are_forgotten(nursery: trio.Nursery) -> None:
    a = Backend(name="a")
    await nursery.start(a.serve)
    proxy = await start_proxy(nursery, config(cleanup="0.2s"))
    client = await Client.connect(proxy.port)
    try:
        hdr = ("x-envoy-original-dst-host", f"127.0.0.1:{a.port}")
        resp, _ = await client.request("GET", "/", [hdr])
        assert resp.status_code == 200
    finally:
        await client.aclose()
    assert proxy.stat("cluster.passthrough.membership_total") == 1
    # forgotten once unpicked for cleanup_interval; its idle keep-alive connection closes
    with trio.fail_after(5):
        while proxy.stat("cluster.passthrough.membership_total"):  # noqa: ASYNC110
            await trio.sleep(0.05)
    with trio.fail_after(5):
        while proxy.stat("cluster.passthrough.upstream_cx_active"):  # noqa: ASYNC110
            await trio.sleep(0.05)
