"""A port of h2spec's server cases (RFC 7540 / 9113 sections), run against an h2c listener
and a TLS listener with ALPN h2. Each case sends what h2spec sends and accepts what h2spec
accepts (see raw.py). The case names are h2spec's section numbers."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import hyperframe.frame as hf
import pytest
import trio
import trustme

from tests.h2spec.raw import (
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    Raw,
    frame_bytes,
)
from tests.support import Backend, simple_config, start_proxy

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, END_HEADERS, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20

Case = Callable[[Raw], Awaitable[bool]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def setting(ident: int, value: int) -> bytes:
    return ident.to_bytes(2, "big") + u32(value)


# -- 3.5 connection preface -----------------------------------------------------------------


@case("3.5/1 sends client connection preface")
async def _(c: Raw) -> bool:
    return await c.ping_answered()


# -- 4.1 frame format ----------------------------------------------------------------------


@case("4.1/1 unknown frame type is ignored")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(0x16, 0, 0, b"ignore me"))
    return await c.ping_answered()


@case("4.1/2 undefined flags are ignored")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0x16, 0, b"h2spec!!"))
    f = await c.wait_for(lambda f: f.type == PING and "ACK" in f.flags)
    return f is not None


@case("4.1/3 reserved bit of the stream id is ignored")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0, 0x80000000, b"h2spec!!"))
    f = await c.wait_for(lambda f: f.type == PING and "ACK" in f.flags)
    return f is not None


# -- 4.2 frame size ------------------------------------------------------------------------


@case("4.2/1 DATA of 2^14 octets is accepted")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"x" * 16384))
    return await c.response_status(1) == 200


@case("4.2/2 DATA beyond SETTINGS_MAX_FRAME_SIZE")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"x" * 16385))
    return await c.stream_error(FRAME_SIZE_ERROR)


@case("4.2/3 HEADERS beyond SETTINGS_MAX_FRAME_SIZE")
async def _(c: Raw) -> bool:
    block = c.encoder.encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x-dummy", "x" * 16384)],
        huffman=False,
    )
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(FRAME_SIZE_ERROR)


# -- 4.3 header compression and decompression ------------------------------------------------


@case("4.3/1 invalid header block fragment")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, b"\x00\x00\x00\x00"))
    return await c.connection_error(COMPRESSION_ERROR)


@case("4.3/2 PRIORITY while sending a header block")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0) + b"\x10"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("4.3/3 headers of another stream while sending a header block")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 3, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


# -- 5.1 stream states -----------------------------------------------------------------------


@case("5.1/1 idle: DATA")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/2 idle: RST_STREAM")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(RST, 0, 1, u32(8)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/3 idle: WINDOW_UPDATE")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(WINDOW, 0, 1, u32(100)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/4 idle: CONTINUATION")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(CONT, END_HEADERS, 1, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/5 half-closed (remote): DATA")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(STREAM_CLOSED)


@case("5.1/6 half-closed (remote): HEADERS")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(c.request_headers(1))
    return await c.stream_error(STREAM_CLOSED)


@case("5.1/7 half-closed (remote): CONTINUATION")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(CONT, END_HEADERS, 1, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/8 closed: DATA after RST_STREAM")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(RST, 0, 1, u32(8)))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(STREAM_CLOSED)


@case("5.1/9 closed: HEADERS after RST_STREAM")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(RST, 0, 1, u32(8)))
    await c.send(c.request_headers(1))
    return await c.stream_error(STREAM_CLOSED)


@case("5.1/10 closed: CONTINUATION after RST_STREAM")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(RST, 0, 1, u32(8)))
    await c.send(frame_bytes(CONT, END_HEADERS, 1, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1/11 closed: DATA after the stream ended both ways")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.wait_for(lambda f: f.stream_id == 1 and "END_STREAM" in f.flags)
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(STREAM_CLOSED)


@case("5.1.1/1 even-numbered stream identifier")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(2))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1.1/2 stream identifier lower than a previous one")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(5))
    await c.send(c.request_headers(3))
    return await c.connection_error(PROTOCOL_ERROR)


@case("5.1.2/1 more streams than SETTINGS_MAX_CONCURRENT_STREAMS")
async def _(c: Raw) -> bool:
    for i in range(101):  # the proxy announces 100
        await c.send(c.request_headers(1 + 2 * i, end_stream=False, method="POST"))
    return await c.stream_error(PROTOCOL_ERROR, REFUSED_STREAM)


# -- 5.3 and 5.4, 5.5 -----------------------------------------------------------------------


@case("5.3.1/1 HEADERS depending on itself")
async def _(c: Raw) -> bool:
    block = u32(1) + b"\x10" + c.headers_block()
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM | PRIO, 1, block))
    return await c.stream_error(PROTOCOL_ERROR)


@case("5.3.1/2 PRIORITY depending on itself")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(1) + b"\x10"))
    return await c.stream_error(PROTOCOL_ERROR)


@case("5.4.1/1 invalid PING frame: connection error with GOAWAY")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0, 0, b"too short"[:6]))
    return await c.connection_error(FRAME_SIZE_ERROR)


@case("5.5/1 unknown extension frame is ignored")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(0xFF, 0, 0, b"\x00" * 8))
    return await c.ping_answered()


@case("5.5/2 unknown extension frame in the middle of a header block")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(0xFF, 0, 1, b"\x00" * 8))
    return await c.connection_error(PROTOCOL_ERROR)


# -- 6.x frame definitions -------------------------------------------------------------------


@case("6.1/1 DATA with stream id 0")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(DATA, END_STREAM, 0, b"test"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.1/3 DATA with an invalid pad length")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM | PADDED, 1, b"\x06" + b"x" * 5))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.2/2 HEADERS with stream id 0")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 0, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.2/3 HEADERS with an invalid pad length")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    payload = bytes([len(block) + 1]) + block
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, payload))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.2/4 HEADERS without END_HEADERS followed by a PRIORITY frame")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0) + b"\x10"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.3/1 PRIORITY with stream id 0")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 0, u32(1) + b"\x10"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.3/2 PRIORITY of 4 octets")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0)))
    return await c.stream_error(FRAME_SIZE_ERROR)


@case("6.4/1 RST_STREAM with stream id 0")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(RST, 0, 0, u32(8)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.4/2 RST_STREAM on an idle stream")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(RST, 0, 3, u32(8)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.4/3 RST_STREAM of 3 octets")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(RST, 0, 1, b"\x00\x00\x08"))
    return await c.connection_error(FRAME_SIZE_ERROR)


#: Cases trioproxy is known to fail, with why (run as strict xfails: a fix must remove them).
KNOWN_FAILURES: dict[str, str] = {}


@case("6.5/1 SETTINGS ACK with a payload")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0x1, 0, setting(0x3, 100)))
    return await c.connection_error(FRAME_SIZE_ERROR)


@case("6.5/2 SETTINGS with a stream id")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 1, setting(0x3, 100)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.5/3 SETTINGS of a length not a multiple of 6")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x3, 100)[:5]))
    return await c.connection_error(FRAME_SIZE_ERROR)


@case("6.5.2/1 SETTINGS_ENABLE_PUSH of 2")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x2, 2)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.5.2/2 SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 2**31)))
    return await c.connection_error(FLOW_CONTROL_ERROR)


@case("6.5.2/3 SETTINGS_MAX_FRAME_SIZE below the initial value")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x5, 16383)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.5.2/4 SETTINGS_MAX_FRAME_SIZE above the maximum")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x5, 2**24)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.5.2/5 an unknown setting is ignored")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0xFF, 1)))
    f = await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
    return f is not None


@case("6.5.3/2 SETTINGS are acknowledged")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x3, 50)))
    f = await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
    return f is not None


@case("6.7/1 PING is acknowledged with the same data")
async def _(c: Raw) -> bool:
    return await c.ping_answered()


@case("6.7/2 a PING ACK is not answered")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0x1, 0, b"invalid!"))
    return await c.ping_answered()  # and the next answer is to our PING, not to the ACK


@case("6.7/3 PING with a stream id")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0, 1, b"h2spec!!"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.7/4 PING of 6 octets")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0, 0, b"h2spec"))
    return await c.connection_error(FRAME_SIZE_ERROR)


@case("6.8/1 GOAWAY with a stream id")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(GOAWAY, 0, 1, u32(0) + u32(0)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.9/1 WINDOW_UPDATE of 0 on the connection")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(WINDOW, 0, 0, u32(0)))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.9/2 WINDOW_UPDATE of 0 on a stream")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(WINDOW, 0, 1, u32(0)))
    return await c.stream_error(PROTOCOL_ERROR)


@case("6.9/3 WINDOW_UPDATE of 3 octets")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(WINDOW, 0, 0, b"\x00\x00\x01"))
    return await c.connection_error(FRAME_SIZE_ERROR)


@case("6.9.1/2 connection window beyond 2^31-1")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(WINDOW, 0, 0, u32(2**31 - 1)))
    await c.send(frame_bytes(WINDOW, 0, 0, u32(2**31 - 1)))
    return await c.connection_error(FLOW_CONTROL_ERROR)


@case("6.9.1/3 stream window beyond 2^31-1")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(WINDOW, 0, 1, u32(2**31 - 1)))
    await c.send(frame_bytes(WINDOW, 0, 1, u32(2**31 - 1)))
    return await c.stream_error(FLOW_CONTROL_ERROR)


@case("6.10/1 CONTINUATION after HEADERS with END_HEADERS")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(CONT, END_HEADERS, 1, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.10/2 CONTINUATION with stream id 0")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(CONT, END_HEADERS, 0, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.10/3 DATA in the middle of a header block")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, 0, 1, c.headers_block(method="POST")))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.connection_error(PROTOCOL_ERROR)


# -- 8.1 HTTP request/response exchange --------------------------------------------------------


@case("8.1/1 a second HEADERS without END_STREAM")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(HEADERS, END_HEADERS, 1, c.encoder.encode([("x-trailer", "1")])))
    return await c.stream_error(PROTOCOL_ERROR)


def _header_case(name: str, extra: list[tuple[str, str]], *, path: str = "/") -> None:
    @case(name)
    async def _(c: Raw) -> bool:
        await c.send(
            frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, c.headers_block(extra, path=path))
        )
        return await c.stream_error(PROTOCOL_ERROR)


_header_case("8.1.2/1 upper-case header field name", [("X-Test", "ok")])
_header_case("8.1.2.1/1 unknown pseudo-header", [(":test", "ok")])
_header_case("8.1.2.1/2 response pseudo-header in a request", [(":status", "200")])
_header_case("8.1.2.1/4 duplicated pseudo-header", [(":method", "GET")])
_header_case("8.1.2.2/1 connection-specific header field", [("connection", "keep-alive")])
_header_case("8.1.2.2/2 TE other than trailers", [("te", "gzip")])
_header_case("8.1.2.3/1 empty :path", [], path="")


@case("8.1.2.1/3 pseudo-header after a regular header")
async def _(c: Raw) -> bool:
    block = c.encoder.encode(
        [
            (":method", "GET"),
            (":scheme", "http"),
            ("x-test", "ok"),
            (":path", "/"),
            (":authority", c.authority),
        ]
    )
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.stream_error(PROTOCOL_ERROR)


@case("8.1.2.3/2 missing :method")
async def _(c: Raw) -> bool:
    block = c.encoder.encode([(":scheme", "http"), (":path", "/"), (":authority", c.authority)])
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.stream_error(PROTOCOL_ERROR)


@case("8.1.2.6/1 content-length that does not match the DATA")
async def _(c: Raw) -> bool:
    block = c.headers_block([("content-length", "1")], method="POST")
    await c.send(frame_bytes(HEADERS, END_HEADERS, 1, block))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(PROTOCOL_ERROR)


@case("8.2/1 PUSH_PROMISE from a client")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(PUSH, END_HEADERS, 1, u32(2) + c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


# -- more of h2spec's HTTP/2 section ----------------------------------------------------------


@case("5.4.1/2 invalid PING frame: no further stream is served")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PING, 0, 0, b"h2spec"))
    if not await c.connection_error(FRAME_SIZE_ERROR):
        return False
    await c.send(c.request_headers(1))
    return await c.response_status(1) is None


@case("6.1/2 DATA on a stream that is not open")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(STREAM_CLOSED)


@case("6.2/1 HEADERS without END_HEADERS followed by a non-CONTINUATION frame")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, c.headers_block()))
    await c.send(frame_bytes(DATA, 0, 1, b"test"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.5.3/1 several values of SETTINGS_INITIAL_WINDOW_SIZE")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 100) + setting(0x4, 1)))
    await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
    await c.send(c.request_headers(1))
    f = await c.wait_for(lambda f: f.type == DATA and f.stream_id == 1)
    return f is not None and len(f.data) == 1  # the last value wins: a window of 1


@case("6.9.2/1 SETTINGS_INITIAL_WINDOW_SIZE changed after HEADERS")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 0)))
    await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
    await c.send(c.request_headers(1))
    if await c.response_status(1) != 200:
        return False
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 1)))
    f = await c.wait_for(lambda f: f.type == DATA and f.stream_id == 1)
    return f is not None and len(f.data) == 1


@case("6.9.2/2 a SETTINGS change that makes a window negative")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 5)))
    await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
    await c.send(c.request_headers(1))
    await c.wait_for(lambda f: f.type == DATA and f.stream_id == 1)
    await c.send(frame_bytes(SETTINGS, 0, 0, setting(0x4, 0)))  # now -5 for stream 1
    await c.send(frame_bytes(WINDOW, 0, 1, u32(6)))
    f = await c.wait_for(lambda f: f.type == DATA and f.stream_id == 1)
    return f is not None and len(f.data) == 1


@case("6.10/4 CONTINUATION followed by a non-CONTINUATION frame")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, block[:2]))
    await c.send(frame_bytes(CONT, 0, 1, block[2:]))
    await c.send(frame_bytes(DATA, 0, 1, b"test"))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.10/5 CONTINUATION of another stream")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    await c.send(frame_bytes(HEADERS, END_STREAM, 1, block[:2]))
    await c.send(frame_bytes(CONT, END_HEADERS, 3, block[2:]))
    return await c.connection_error(PROTOCOL_ERROR)


@case("6.10/6 CONTINUATION after a closed stream's HEADERS ended")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(CONT, END_HEADERS, 1, c.headers_block()))
    return await c.connection_error(PROTOCOL_ERROR)


_header_case("8.1.2.3/5 duplicated :scheme", [(":scheme", "https")])
_header_case("8.1.2.3/6 duplicated :path", [(":path", "/other")])


def _block_case(name: str, fields: Callable[[Raw], list[tuple[str, str]]]) -> None:
    @case(name)
    async def _(c: Raw) -> bool:
        block = c.encoder.encode(fields(c))
        await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
        return await c.stream_error(PROTOCOL_ERROR)


_block_case(
    "8.1.2.3/3 missing :scheme",
    lambda c: [(":method", "GET"), (":path", "/"), (":authority", c.authority)],
)
_block_case(
    "8.1.2.3/4 missing :path",
    lambda c: [(":method", "GET"), (":scheme", "http"), (":authority", c.authority)],
)


@case("8.1.2.1/5 pseudo-header in trailers")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, 0, 1, b"test"))
    trailers = c.encoder.encode([(":method", "POST"), ("x-trailer", "1")])
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, trailers))
    return await c.stream_error(PROTOCOL_ERROR)


@case("8.1.2.6/2 DATA frames exceeding content-length")
async def _(c: Raw) -> bool:
    block = c.headers_block([("content-length", "4")], method="POST")
    await c.send(frame_bytes(HEADERS, END_HEADERS, 1, block))
    await c.send(frame_bytes(DATA, 0, 1, b"test"))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await c.stream_error(PROTOCOL_ERROR)


# -- h2spec's HPACK section --------------------------------------------------------------------


@case("hpack 2.3.3/1 indexed field beyond the static and dynamic tables")
async def _(c: Raw) -> bool:
    block = c.headers_block() + b"\xff\x80\x80\x01"  # index 2^21: nothing there
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(COMPRESSION_ERROR)


@case("hpack 2.3.3/2 literal with a name index beyond the tables")
async def _(c: Raw) -> bool:
    block = c.headers_block() + b"\x7f\x80\x80\x01\x01a"
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(COMPRESSION_ERROR)


@case("hpack 4.2/1 dynamic table size update above the limit")
async def _(c: Raw) -> bool:
    block = b"\x3f\xe1\xff\x03" + c.headers_block()  # 65536 > 4096
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(COMPRESSION_ERROR)


@case("hpack 5.2/1 Huffman string with EOS padding beyond 7 bits")
async def _(c: Raw) -> bool:
    block = c.headers_block() + b"\x40\x81\xff\x81\xff"
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(COMPRESSION_ERROR)


@case("hpack 6.1/1 index 0")
async def _(c: Raw) -> bool:
    block = c.headers_block() + b"\x80"
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await c.connection_error(COMPRESSION_ERROR)


# -- h2spec's generic section: what must simply work ---------------------------------------------


async def _ok(c: Raw, stream: int = 1) -> bool:
    return await c.response_status(stream) == 200


@case("generic 2/1 PRIORITY on an idle stream")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 3, u32(0) + b"\x10"))
    await c.send(c.request_headers(1))
    return await _ok(c)


@case("generic 2/2 WINDOW_UPDATE on a half-closed (remote) stream")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1) + frame_bytes(WINDOW, 0, 1, u32(1)))
    return await _ok(c)


@case("generic 2/3 PRIORITY on a half-closed (remote) stream")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1) + frame_bytes(PRIORITY, 0, 1, u32(0) + b"\x10"))
    return await _ok(c)


@case("generic 2/4 RST_STREAM on a half-closed (remote) stream")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1) + frame_bytes(RST, 0, 1, u32(8)))
    return await c.ping_answered()


@case("generic 2/5 PRIORITY on a closed stream")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.wait_for(lambda f: f.stream_id == 1 and "END_STREAM" in f.flags)
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0) + b"\x10"))
    return await c.ping_answered()


@case("generic 3.1/1 DATA")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await _ok(c)


@case("generic 3.1/2 several DATA frames")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, 0, 1, b"test") + frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await _ok(c)


@case("generic 3.1/3 DATA with padding")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM | PADDED, 1, b"\x04test\x00\x00\x00\x00"))
    return await _ok(c)


@case("generic 3.2/1 HEADERS")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    return await _ok(c)


@case("generic 3.2/2 HEADERS with padding")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    await c.send(
        frame_bytes(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, b"\x08" + block + b"\x00" * 8)
    )
    return await _ok(c)


@case("generic 3.2/3 HEADERS with priority")
async def _(c: Raw) -> bool:
    block = u32(0) + b"\xff" + c.headers_block()
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM | PRIO, 1, block))
    return await _ok(c)


@case("generic 3.3/1 PRIORITY with weight 1")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0) + b"\x00") + c.request_headers(1))
    return await _ok(c)


@case("generic 3.3/2 PRIORITY with weight 256")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 1, u32(0) + b"\xff") + c.request_headers(1))
    return await _ok(c)


@case("generic 3.3/3 PRIORITY with a stream dependency")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(PRIORITY, 0, 3, u32(1) + b"\x10") + c.request_headers(3))
    return await _ok(c, 3)


@case("generic 3.3/4 PRIORITY with the exclusive flag")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    await c.send(frame_bytes(PRIORITY, 0, 3, u32(0x80000001) + b"\x10") + c.request_headers(3))
    return await _ok(c, 3)


@case("generic 3.3/5 PRIORITY for an idle stream, then HEADERS")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(PRIORITY, 0, 3, u32(0) + b"\x10") + c.request_headers(3))
    return await _ok(c, 3)


@case("generic 3.4/1 RST_STREAM")
async def _(c: Raw) -> bool:
    await c.send(
        c.request_headers(1, end_stream=False, method="POST") + frame_bytes(RST, 0, 1, u32(8))
    )
    return await c.ping_answered()


def _settings_case(name: str, ident: int, value: int) -> None:
    @case(name)
    async def _(c: Raw) -> bool:
        await c.send(frame_bytes(SETTINGS, 0, 0, setting(ident, value)))
        f = await c.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags)
        return f is not None


_settings_case("generic 3.5/1 SETTINGS_HEADER_TABLE_SIZE", 0x1, 0)
_settings_case("generic 3.5/2 SETTINGS_ENABLE_PUSH", 0x2, 0)
_settings_case("generic 3.5/3 SETTINGS_MAX_CONCURRENT_STREAMS", 0x3, 0)
_settings_case("generic 3.5/4 SETTINGS_INITIAL_WINDOW_SIZE", 0x4, 100)
_settings_case("generic 3.5/5 SETTINGS_MAX_FRAME_SIZE", 0x5, 16384)
_settings_case("generic 3.5/6 SETTINGS_MAX_HEADER_LIST_SIZE", 0x6, 65535)
_settings_case("generic 3.5/7 an undefined setting", 0xFF, 0)


@case("generic 3.7/1 PING")
async def _(c: Raw) -> bool:
    return await c.ping_answered()


@case("generic 3.8/1 GOAWAY")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(GOAWAY, 0, 0, u32(0) + u32(0)))
    # not an error: the server closes (nothing was in flight) without complaint
    while (f := await c.next_frame()) is not None:
        if isinstance(f, hf.GoAwayFrame) and f.error_code != 0:
            return False
    return c.closed


@case("generic 3.9/1 WINDOW_UPDATE on the connection")
async def _(c: Raw) -> bool:
    await c.send(frame_bytes(WINDOW, 0, 0, u32(1)))
    return await c.ping_answered()


@case("generic 3.9/2 WINDOW_UPDATE on a stream")
async def _(c: Raw) -> bool:
    await c.send(
        c.request_headers(1, end_stream=False, method="POST") + frame_bytes(WINDOW, 0, 1, u32(1))
    )
    return await c.ping_answered()


@case("generic 3.10/1 CONTINUATION")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    await c.send(
        frame_bytes(HEADERS, END_STREAM, 1, block[:3])
        + frame_bytes(CONT, END_HEADERS, 1, block[3:])
    )
    return await _ok(c)


@case("generic 3.10/2 several CONTINUATION frames")
async def _(c: Raw) -> bool:
    block = c.headers_block()
    frames = frame_bytes(HEADERS, END_STREAM, 1, block[:2])
    frames += frame_bytes(CONT, 0, 1, block[2:4]) + frame_bytes(CONT, END_HEADERS, 1, block[4:])
    await c.send(frames)
    return await _ok(c)


@case("generic 4/1 GET")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1))
    return await _ok(c)


@case("generic 4/2 HEAD")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, method="HEAD"))
    return await _ok(c)


@case("generic 4/3 POST")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, END_STREAM, 1, b"test"))
    return await _ok(c)


@case("generic 4/4 POST with trailers")
async def _(c: Raw) -> bool:
    await c.send(c.request_headers(1, end_stream=False, method="POST"))
    await c.send(frame_bytes(DATA, 0, 1, b"test"))
    await c.send(
        frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, c.encoder.encode([("x-trailer", "1")]))
    )
    return await _ok(c)


def _hpack_ok(name: str, block: Callable[[Raw], bytes]) -> None:
    @case(name)
    async def _(c: Raw) -> bool:
        await c.send(
            frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, c.headers_block() + block(c))
        )
        return await _ok(c)


_hpack_ok("generic 5/1 indexed header field", lambda c: b"\x90")  # accept-encoding: gzip
_hpack_ok("generic 5/2 literal, incremental indexing, indexed name", lambda c: b"\x53\x03abc")
_hpack_ok("generic 5/3 literal, incremental indexing, new name", lambda c: b"\x40\x04x-ab\x03abc")
_hpack_ok("generic 5/4 literal without indexing, indexed name", lambda c: b"\x0f\x04\x03abc")
_hpack_ok("generic 5/5 literal without indexing, new name", lambda c: b"\x00\x04x-ab\x03abc")
_hpack_ok("generic 5/6 literal never indexed, indexed name", lambda c: b"\x1f\x04\x03abc")
_hpack_ok("generic 5/7 literal never indexed, new name", lambda c: b"\x10\x04x-ab\x03abc")
_hpack_ok(
    "generic 5/9 Huffman string literal", lambda c: b"\x40\x84\x25\xa8\x49\xe9\x83\xf0\xe1\x07"
)


@case("generic 5/8 dynamic table size update")
async def _(c: Raw) -> bool:
    block = b"\x20" + c.headers_block()  # size 0: empties the table
    await c.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, block))
    return await _ok(c)


# -- the test ------------------------------------------------------------------------------


async def _proxy(nursery: trio.Nursery, kind: str, tmp: Path) -> tuple[int, ssl.SSLContext | None]:
    backend = Backend()
    port = await nursery.start(backend.serve)
    if kind == "h2c":
        proxy = await start_proxy(nursery, simple_config([port]))
        return proxy.port, None
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp / "c.pem", tmp / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{filename: {cert_path}}}
            private_key: {{filename: {key_path}}}
"""
    config = simple_config([port]).replace(
        "    filter_chains:\n    - filters:",
        "    filter_chains:\n    -"
        + tls.replace(
            "\n    ",
            "\n      ",
        ).rstrip()
        + "\n      filters:",
        1,
    )
    proxy = await start_proxy(nursery, config)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    return proxy.port, ctx


@pytest.mark.parametrize("kind", ["h2c", "tls"])
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[n]))
        if n in KNOWN_FAILURES
        else n
        for n in sorted(CASES)
    ],
)
async def test_h2spec(nursery: trio.Nursery, tmp_path: Path, kind: str, name: str) -> None:
    port, ctx = await _proxy(nursery, kind, tmp_path)
    client = await Raw.connect(port, ctx)
    try:
        with trio.fail_after(10):
            assert await CASES[name](client), name
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["h2c", "tls"])
async def test_invalid_preface(nursery: trio.Nursery, tmp_path: Path, kind: str) -> None:
    port, ctx = await _proxy(nursery, kind, tmp_path)
    client = await Raw.connect(port, ctx, handshake=False)
    try:
        await client.send(PREFACE[:-6] + b"XXXXXX" + frame_bytes(SETTINGS, 0, 0, b""))
        with trio.fail_after(10):
            # h2c under AUTO hears HTTP/1.1 and answers 400; over TLS (ALPN h2) a GOAWAY
            data = b""
            while chunk := await client.stream.receive_some(65536):
                data += chunk
        # a connection error: the connection closed (reaching here means EOF), with a
        # GOAWAY or without; over TLS the server's own SETTINGS may come first
        assert data.startswith(b"HTTP/1.1 400") or data[3:4] in (b"\x04", b"\x07", b""), data[:40]
    finally:
        await client.aclose()
