"""HTTP/2 flood and rapid-reset protections (DEFAULTS.md), driven by a raw frame client."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import trio

from tests.support import Backend, Proxy, Reply, simple_config, start_proxy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


async def read_until_closed(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    out = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset also means closed
                return out
            if not data:
                return out
            out += data


def frames(data: bytes) -> list[hyperframe.frame.Frame]:
    out = []
    while len(data) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


async def start(nursery: trio.Nursery, backend: Backend | None = None) -> Proxy:
    if backend is None:
        backend = Backend()
    port = await nursery.start(backend.serve)
    return await start_proxy(nursery, simple_config([port]))


async def test_ping_flood_closes_the_connection(nursery: trio.Nursery) -> None:
    proxy = await start(nursery)
    conn = client()
    ping = hyperframe.frame.PingFrame(0)
    ping.opaque_data = b"12345678"
    flood = conn.data_to_send() + ping.serialize() * 2000  # never reading the ACKs
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(flood)
        await read_until_closed(stream)
    assert proxy.stat("http.ingress_http.http2.outbound_control_flood") == 1


async def test_empty_data_frames_flood_closes_the_connection(nursery: trio.Nursery) -> None:
    proxy = await start(nursery)
    conn = client()
    conn.send_headers(
        1,
        [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
        end_stream=False,
    )
    empty = hyperframe.frame.DataFrame(1)
    empty.data = b""
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(conn.data_to_send() + empty.serialize() * 3)
        await read_until_closed(stream)
    assert proxy.stat("http.ingress_http.http2.inbound_empty_frames_flood") == 1


async def test_rapid_reset_gets_goaway(nursery: trio.Nursery) -> None:
    slow = Backend(handler=lambda rec: Reply(delay=5.0))
    proxy = await start(nursery, slow)
    conn = client()
    request = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    received = b""
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        try:
            await stream.send_all(conn.data_to_send())
            for i in range(600):
                sid = 1 + 2 * i
                conn.send_headers(sid, request, end_stream=True)
                conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                await stream.send_all(conn.data_to_send())
                with trio.move_on_after(0.001):
                    received += await stream.receive_some(65536)
        except trio.BrokenResourceError:
            pass  # closed by the proxy while we were still sending: what we want
        received += await read_until_closed(stream, timeout=20)
    assert proxy.stat("http.ingress_http.downstream_rq_too_many_premature_resets") == 1
    goaways = [f for f in frames(received) if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert goaways and goaways[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
