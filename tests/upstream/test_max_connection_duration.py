"""``common_http_protocol_options.max_connection_duration`` on a cluster: a connection older
than that takes no new request, closes once idle, and counts
``upstream_cx_max_duration_reached`` once."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, simple_config, start_proxy

from .test_h2_upstream import H2Echo

DURATION = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_connection_duration: 0.4s}
        explicit_http_config:
          PROTOCOL: {}"""


async def _three_requests(port: int) -> list[int]:
    """Three requests in turn on one client connection, the last once the upstream
    connection of the first two is older than its duration."""
    statuses = []
    client = await Client.connect(port)
    try:
        for delay in (0, 0, 0.7):
            await trio.sleep(delay)
            resp, _ = await client.request("GET", "/")
            statuses.append(resp.status_code)
    finally:
        await client.aclose()
    return statuses


async def test_an_http1_upstream_connection_is_not_used_past_its_duration(
    nursery: trio.Nursery,
) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    extra = DURATION.replace("PROTOCOL", "http_protocol_options")
    proxy = await start_proxy(nursery, simple_config([port], cluster_extra=extra))
    assert await _three_requests(proxy.port) == [200, 200, 200]
    assert backend.connections == 2  # the first two shared one; the third needed a new one
    assert proxy.stat("cluster.backend.upstream_cx_max_duration_reached") == 1
    assert proxy.stat("cluster.backend.upstream_cx_destroy_local") == 1


async def test_an_http2_upstream_connection_is_not_used_past_its_duration(
    nursery: trio.Nursery,
) -> None:
    upstream = H2Echo()
    await nursery.start(upstream.serve)
    extra = DURATION.replace("PROTOCOL", "http2_protocol_options")
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=extra))
    assert await _three_requests(proxy.port) == [200, 200, 200]
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 2
    assert proxy.stat("cluster.backend.upstream_cx_max_duration_reached") == 1
    await trio.sleep(0.1)
    assert proxy.stat("cluster.backend.upstream_cx_destroy_local") == 1
