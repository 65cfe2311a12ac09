"""http_inspector and tls_inspector choosing filter chains on plaintext connections."""

from __future__ import annotations

import trio

from tests.plugins.test_tcp_proxy import (
    bootstrap,
    cluster,
    named_upstream,
    read_all,
    tcp_chain,
)
from tests.support import start_proxy


async def _send(port: int, data: bytes) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        with trio.fail_after(5):
            return await read_all(stream)


async def test_http_inspector_tells_h2c_from_http1_and_other(nursery: trio.Nursery) -> None:
    ports = {n: await named_upstream(nursery, n) for n in ("h2c", "h1", "other")}
    listener = {
        "listener_filters": [
            {"name": "envoy.filters.listener.tls_inspector"},
            {"name": "envoy.filters.listener.http_inspector"},
        ],
        "filter_chains": [
            {"filter_chain_match": {"application_protocols": ["h2c"]}, **tcp_chain(cluster="h2c")},
            {
                "filter_chain_match": {"application_protocols": ["http/1.1", "http/1.0"]},
                **tcp_chain(cluster="h1"),
            },
        ],
        "default_filter_chain": tcp_chain(cluster="other"),
    }
    proxy = await start_proxy(
        nursery, bootstrap(listener, [cluster(n, p) for n, p in ports.items()])
    )
    assert await _send(proxy.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == b"h2c"
    assert await _send(proxy.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n") == b"h1"
    assert await _send(proxy.port, b"SSH-2.0-OpenSSH_9.0\r\n") == b"other"
    assert proxy.stat("http_inspector.http2_found") == 1
    assert proxy.stat("http_inspector.http11_found") == 1
    assert proxy.stat("http_inspector.http_not_found") == 1
    assert proxy.stat("tls_inspector.tls_not_found") == 3
