"""HTTP/2 flood and rapid-reset protections (DEFAULTS.md), driven by a raw frame client."""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest
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


# -- empty frames of every kind (Envoy's max_consecutive_inbound_frames_with_empty_payload: 1)

DATA, HEADERS, PING, CONTINUATION = 0x0, 0x1, 0x6, 0x9
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
POST = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]


def raw(ftype: int, flags: int, payload: bytes = b"", sid: int = 1) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    return head + payload


def post_head() -> tuple[h2.connection.H2Connection, bytes, bytes]:
    """A client, its preface and SETTINGS, and the header block of a POST on stream 1 (to be
    framed by hand)."""
    conn = client()
    preface = conn.data_to_send()
    conn.send_headers(1, POST, end_stream=False)
    return conn, preface, conn.data_to_send()[9:]


PING_FRAME = raw(PING, 0, b"12345678", sid=0)

# frames sent after the preface, given the request's header block: each has two empty frames
# in a row, as Envoy counts them
FLOODS = {
    "empty-continuations": lambda block: (
        raw(HEADERS, 0, block) + raw(CONTINUATION, 0) + raw(CONTINUATION, 0)
    ),
    "empty-headers-then-empty-continuation": lambda block: (
        raw(HEADERS, 0) + raw(CONTINUATION, 0) + raw(CONTINUATION, END_HEADERS, block)
    ),
    "empty-last-continuation-then-empty-data": lambda block: (
        raw(HEADERS, 0, block) + raw(CONTINUATION, END_HEADERS) + raw(DATA, 0)
    ),
    # END_STREAM means nothing on a CONTINUATION: it does not start the count again
    "continuations-flagged-end-stream": lambda block: (
        raw(HEADERS, 0, block) + raw(CONTINUATION, END_STREAM) + raw(CONTINUATION, END_STREAM)
    ),
    # frames of other types neither count nor start the count again
    "a-ping-between-empty-data": lambda block: (
        raw(HEADERS, END_HEADERS, block) + raw(DATA, 0) + PING_FRAME + raw(DATA, 0)
    ),
}

# one empty frame at a time: the request is served
SERVED = {
    "one-empty-headers-frame": lambda block: (
        raw(HEADERS, 0) + raw(CONTINUATION, END_HEADERS, block) + raw(DATA, END_STREAM)
    ),
    "an-empty-data-frame-then-end-stream": lambda block: (
        raw(HEADERS, END_HEADERS, block) + raw(DATA, 0) + raw(DATA, END_STREAM)
    ),
    # HEADERS with END_STREAM is not empty in Envoy's sense, whatever its size
    "empty-headers-ending-the-stream": lambda block: (
        raw(HEADERS, END_STREAM) + raw(CONTINUATION, 0) + raw(CONTINUATION, END_HEADERS, block)
    ),
    # padding is payload in a HEADERS frame (Envoy 1.40 counts the frame's length)
    "headers-of-padding-only": lambda block: (
        raw(HEADERS, PADDED, b"\x03" + bytes(3))
        + raw(CONTINUATION, 0)
        + raw(CONTINUATION, END_HEADERS, block)
        + raw(DATA, END_STREAM)
    ),
}


@pytest.mark.parametrize("frames_after", FLOODS.values(), ids=FLOODS.keys())
async def test_two_empty_frames_in_a_row_close_the_connection(
    nursery: trio.Nursery, frames_after: Callable[[bytes], bytes]
) -> None:
    proxy = await start(nursery)
    _, preface, block = post_head()
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(preface + frames_after(block))
        received = await read_until_closed(stream)
    assert proxy.stat("http.ingress_http.http2.inbound_empty_frames_flood") == 1
    assert not any(isinstance(f, hyperframe.frame.HeadersFrame) for f in frames(received))


@pytest.mark.parametrize("frames_after", SERVED.values(), ids=SERVED.keys())
async def test_one_empty_frame_at_a_time_is_served(
    nursery: trio.Nursery, frames_after: Callable[[bytes], bytes]
) -> None:
    proxy = await start(nursery)
    conn, preface, block = post_head()
    status = b""
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(preface + frames_after(block))
        with trio.fail_after(5):
            while not status:
                for event in conn.receive_data(await stream.receive_some(65536)):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
    assert status == b"200"
