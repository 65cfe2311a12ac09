"""HTTP/1.1 CONNECT through the proxy: terminated at the router (``connect_config``, a TCP
connection to the cluster's host) or forwarded to an upstream proxy, and refused as Envoy
refuses it. What Envoy answers in each case is in ``tests/differential/test_connect.py``."""

from __future__ import annotations

import socket
from functools import partial

import trio

from tests.support import Proxy, raw_exchange, simple_config, start_proxy, until

HCM_CONNECT = """
upgrade_configs:
- upgrade_type: CONNECT
"""
TERMINATE = """
              - name: tunnel
                match: {connect_matcher: {}}
                route:
                  cluster: backend
                  upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]
              - match: {prefix: "/"}
                route: {cluster: backend}"""
FORWARD = """
              - name: tunnel
                match: {connect_matcher: {}}
                route: {cluster: backend}"""
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


class Echo:
    """A TCP upstream that echoes, says ``hi`` first if asked, and records how it ended."""

    def __init__(self, greet: bool = False) -> None:
        self.greet = greet
        self.received = b""
        self.eof = trio.Event()
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            if self.greet:
                await stream.send_all(b"hi")
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.eof.set()
                    return
                self.received += data
                if data.endswith(b"BYE\n"):  # the upstream ends the tunnel
                    await stream.send_all(b"bye\n")
                    return
                await stream.send_all(data)


async def serve(nursery: trio.Nursery, handler: object) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    buf = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, buf
            buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


async def read_exactly(stream: trio.SocketStream, n: int, have: bytes = b"") -> bytes:
    buf = have
    with trio.fail_after(5):
        while len(buf) < n:
            data = await stream.receive_some(65536)
            assert data, buf
            buf += data
    return buf


async def _open_tunnel(
    nursery: trio.Nursery, hcm_extra: str = ""
) -> tuple[Echo, Proxy, trio.SocketStream]:
    """An echo upstream, a proxy terminating CONNECT to it, and a client whose tunnel is
    open (the 200 read)."""
    echo = Echo()
    port = await serve(nursery, echo.handle)
    proxy = await start_proxy(
        nursery, simple_config([port], routes=TERMINATE, hcm_extra=HCM_CONNECT + hcm_extra)
    )
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(CONNECT)
    await read_head(client)
    return echo, proxy, client


async def test_terminated_connect_tunnels_bytes_both_ways(nursery: trio.Nursery) -> None:
    echo = Echo(greet=True)
    port = await serve(nursery, echo.handle)
    proxy = await start_proxy(
        nursery, simple_config([port], routes=TERMINATE, hcm_extra=HCM_CONNECT)
    )
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(CONNECT + b"early")  # bytes right behind the head are the tunnel's
    head, rest = await read_head(client)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    names = sorted(line.split(":")[0].lower() for line in lines[1:])
    assert names == ["date", "server"]  # no framing: the tunnel's bytes follow (as Envoy)
    assert await read_exactly(client, 7, rest) == b"hiearly"
    big = bytes(range(256)) * 4096  # 1 MiB, more than any buffer on the way
    async with trio.open_nursery() as both:
        both.start_soon(client.send_all, big)
        assert await read_exactly(client, len(big)) == big
    await client.aclose()
    with trio.fail_after(5):
        await echo.eof.wait()  # the client's close reaches the upstream
    assert echo.received == b"early" + big
    await until(lambda: proxy.stat("cluster.backend.upstream_cx_destroy_local_with_active_rq"))
    assert proxy.stat("http.ingress_http.downstream_cx_upgrades_total") == 1
    assert proxy.stat("http.ingress_http.downstream_cx_upgrades_active") == 0
    assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 1
    assert proxy.stat("http.ingress_http.downstream_cx_destroy_remote_active_rq") == 1
    assert proxy.stat("cluster.backend.upstream_rq_200") == 1
    assert proxy.stat("cluster.backend.upstream_cx_total") == 1
    assert proxy.stat("cluster.backend.upstream_cx_http1_total") == 0  # plain TCP
    assert proxy.stat("cluster.backend.upstream_cx_tx_bytes_total") == len(b"early" + big)
    assert proxy.stat("cluster.backend.upstream_cx_rx_bytes_total") == len(b"hiearly" + big)
    assert proxy.stat("cluster.backend.upstream_cx_active") == 0


async def test_a_half_closing_client_closes_the_tunnel(nursery: trio.Nursery) -> None:
    # Envoy takes an HTTP/1.1 client's half-close as a close: the upstream sees its end and
    # nothing it sends afterwards reaches the client
    echo, proxy, client = await _open_tunnel(nursery)
    await client.send_all(b"ping")
    assert await read_exactly(client, 4) == b"ping"
    client.socket.shutdown(socket.SHUT_WR)
    with trio.fail_after(5):
        await echo.eof.wait()
        assert await client.receive_some(100) == b""
    await client.aclose()
    assert proxy.stat("http.ingress_http.downstream_rq_rx_reset") == 1


async def test_the_upstreams_close_ends_the_tunnel(nursery: trio.Nursery) -> None:
    echo, proxy, client = await _open_tunnel(nursery)
    await client.send_all(b"BYE\n")
    with trio.fail_after(5):
        assert await read_exactly(client, 4) == b"bye\n"
        assert await client.receive_some(100) == b""  # then the connection ends
    await client.aclose()
    await until(lambda: proxy.stat("cluster.backend.upstream_cx_destroy") == 1)


async def test_the_stream_idle_timeout_applies_to_the_tunnel(nursery: trio.Nursery) -> None:
    echo, proxy, client = await _open_tunnel(nursery, "stream_idle_timeout: 0.3s\n")
    for _ in range(3):  # traffic keeps it open
        await trio.sleep(0.15)
        await client.send_all(b"x")
        assert await read_exactly(client, 1) == b"x"
    with trio.fail_after(3):
        assert await client.receive_some(100) == b""
        await echo.eof.wait()
    await client.aclose()
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1


async def test_an_upstream_that_refuses_the_connection_is_a_503(nursery: trio.Nursery) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    proxy = await start_proxy(
        nursery, simple_config([dead], routes=TERMINATE, hcm_extra=HCM_CONNECT)
    )
    raw = await raw_exchange(proxy.port, CONNECT + b"lost")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nconnection: close" in head
    assert body == (
        b"upstream connect error or disconnect/reset before headers. reset reason: "
        b"remote connection failure"
    )
    assert proxy.stat("cluster.backend.upstream_cx_connect_fail") == 1
    assert proxy.stat("cluster.backend.upstream_rq_pending_failure_eject") == 1
    assert proxy.stat("cluster.backend.upstream_rq_503") == 1


async def test_forwarded_connect_reaches_the_upstream_proxy(nursery: trio.Nursery) -> None:
    heads: list[bytes] = []

    async def upstream_proxy(stream: trio.SocketStream) -> None:
        async with stream:
            head, rest = await read_head(stream)
            heads.append(head)
            # the 200 and the first tunnel bytes in one write
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\nx-up: 1\r\n\r\nhi")
            if rest:
                await stream.send_all(rest)
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    port = await serve(nursery, upstream_proxy)
    proxy = await start_proxy(nursery, simple_config([port], routes=FORWARD, hcm_extra=HCM_CONNECT))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(CONNECT + b"early")
    head, rest = await read_head(client)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")  # (the reason phrase is our own)
    assert b"x-up: 1" in head and b"x-envoy-upstream-service-time" not in head
    assert await read_exactly(client, 7, rest) == b"hiearly"
    await client.send_all(b"more")
    assert await read_exactly(client, 4) == b"more"
    await client.aclose()
    (sent,) = heads
    lines = sent.decode().split("\r\n")
    assert lines[0] == "CONNECT example.com:443 HTTP/1.1"  # authority-form, as received
    assert "host: example.com:443" in lines
    assert not any(line.startswith(("content-length", "upgrade", "connection")) for line in lines)
    await until(lambda: proxy.stat("cluster.backend.upstream_cx_destroy") == 1)
    assert proxy.stat("cluster.backend.upstream_cx_http1_total") == 1
    assert proxy.stat("cluster.backend.upstream_rq_200") == 1


async def test_an_upstream_proxy_refusing_connect_is_a_plain_response(
    nursery: trio.Nursery,
) -> None:
    async def refusing(stream: trio.SocketStream) -> None:
        async with stream:
            await read_head(stream)
            await stream.send_all(
                b"HTTP/1.1 407 Proxy Auth Required\r\ncontent-length: 3\r\n\r\nno!"
            )
            await stream.receive_some(100)

    port = await serve(nursery, refusing)
    proxy = await start_proxy(nursery, simple_config([port], routes=FORWARD, hcm_extra=HCM_CONNECT))
    raw = await raw_exchange(proxy.port, CONNECT)
    assert raw.startswith(b"HTTP/1.1 407 ")
    assert raw.endswith(b"\r\n\r\nno!")
    assert b"\r\nconnection: close\r\n" in raw  # the connection cannot carry another request


async def test_connect_is_refused_unless_configured(nursery: trio.Nursery) -> None:
    echo = Echo()
    port = await serve(nursery, echo.handle)
    # a connect_matcher route without the upgrade enabled anywhere: 403 upgrade_failed
    proxy = await start_proxy(nursery, simple_config([port], routes=FORWARD))
    raw = await raw_exchange(proxy.port, CONNECT + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert raw.count(b"HTTP/1.1") == 1  # what followed the CONNECT is never a request
    assert proxy.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1
    # no connect_matcher route: no route for a CONNECT, 404 (with or without the upgrade)
    for hcm in ("", HCM_CONNECT):
        proxy = await start_proxy(nursery, simple_config([port], hcm_extra=hcm))
        raw = await raw_exchange(proxy.port, CONNECT)
        assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert proxy.stat("http.ingress_http.no_route") == 1
    assert echo.connections == 0


async def test_connect_with_a_bad_target_is_a_400(nursery: trio.Nursery) -> None:
    proxy = await start_proxy(nursery, simple_config([1], routes=TERMINATE, hcm_extra=HCM_CONNECT))
    for target in (b"example.com", b"/path", b"http://example.com:80/", b"example.com:99999"):
        raw = await raw_exchange(proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
        assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), target
        assert raw.endswith(b"\r\n\r\nBad Request")
    assert proxy.stat("http.ingress_http.downstream_cx_protocol_error") == 4


async def test_http2_connect_is_refused(nursery: trio.Nursery) -> None:
    # HTTP/2 CONNECT (plain or extended) is not supported yet: refused (400, as a request
    # without :path), and nothing is opened upstream
    from tests.h2client import H2Client

    echo = Echo()
    port = await serve(nursery, echo.handle)
    proxy = await start_proxy(
        nursery, simple_config([port], routes=TERMINATE, hcm_extra=HCM_CONNECT)
    )
    client = await H2Client.connect(proxy.port)
    nursery.start_soon(client.reader)
    sid = client.conn.get_next_available_stream_id()
    client._responses[sid] = {}
    client._events[sid] = trio.Event()
    client.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:443")])
    await client._flush()
    with trio.fail_after(5):
        await client._events[sid].wait()
    headers = client._responses[sid]["headers"]
    assert isinstance(headers, dict) and headers[":status"] == "400"
    assert echo.connections == 0
    await client.aclose()
