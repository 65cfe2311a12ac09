"""A raw HTTP/2 client for conformance cases: frames written by hand (hyperframe, hpack), the
server's answer read back as frames. The verdicts follow h2spec's: a connection error is a
GOAWAY with the expected code or the connection closing; a stream error is an RST_STREAM
with the expected code (a GOAWAY with it is accepted too, as h2spec does)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable

import hpack
import hyperframe.frame as hf
import trio

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 4, 5, 6, 7
CANCEL, COMPRESSION_ERROR = 8, 9


def frame_bytes(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """Any frame, valid or not, as bytes on the wire."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([ftype, flags])
        + stream.to_bytes(4, "big")
        + payload
    )


class Raw:
    def __init__(self, stream: trio.abc.Stream, authority: str) -> None:
        self.stream = stream
        self.authority = authority
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.closed = False

    @classmethod
    async def connect(
        cls, port: int, tls: ssl.SSLContext | None = None, handshake: bool = True
    ) -> Raw:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls is not None:
            s = trio.SSLStream(stream, tls, server_hostname="localhost")
            await s.do_handshake()
            stream = s
        raw = cls(stream, f"localhost:{port}")
        if handshake:
            await raw.send(PREFACE + frame_bytes(0x4, 0, 0, b""))
            await raw.wait_for(lambda f: isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags)
            await raw.send(frame_bytes(0x4, 0x1, 0, b""))  # ACK theirs
        return raw

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True

    def headers_block(
        self, extra: Iterable[tuple[str, str]] = (), *, method: str = "GET", path: str = "/"
    ) -> bytes:
        base = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
        ]
        return self.encoder.encode([*base, *extra])

    def request_headers(self, stream: int, *, end_stream: bool = True, **kw: object) -> bytes:
        flags = 0x4 | (0x1 if end_stream else 0)
        return frame_bytes(0x1, flags, stream, self.headers_block(**kw))  # type: ignore[arg-type]

    async def next_frame(self, timeout: float = 3.0) -> hf.Frame | None:
        """The server's next frame; None when the connection closed (or nothing came)."""
        with trio.move_on_after(timeout):
            while True:
                if len(self.buf) >= 9:
                    frame, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
                    if len(self.buf) >= 9 + length:
                        frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                        self.buf = self.buf[9 + length :]
                        if isinstance(frame, hf.HeadersFrame):
                            # decoded in order: the server's HPACK table depends on it
                            frame.decoded = dict(self.decoder.decode(frame.data))  # type: ignore[attr-defined]
                        return frame
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.closed = True
                    return None
                self.buf += data
        return None

    async def wait_for(self, pred: object, timeout: float = 3.0) -> hf.Frame | None:
        end = trio.current_time() + timeout
        while trio.current_time() < end:
            f = await self.next_frame(end - trio.current_time())
            if f is None:
                return None
            if pred(f):  # type: ignore[operator]
                return f
        return None

    async def connection_error(self, *codes: int) -> bool:
        """GOAWAY with one of ``codes``, or the connection closed."""
        while True:
            f = await self.next_frame()
            if f is None:
                return self.closed
            if isinstance(f, hf.GoAwayFrame):
                return f.error_code in codes
            if isinstance(f, hf.RstStreamFrame):
                continue

    async def stream_error(self, *codes: int) -> bool:
        """RST_STREAM (or GOAWAY) with one of ``codes``; a close counts too."""
        while True:
            f = await self.next_frame()
            if f is None:
                return self.closed
            if isinstance(f, hf.RstStreamFrame | hf.GoAwayFrame):
                return f.error_code in codes

    async def ping_answered(self) -> bool:
        """The connection still works: a PING comes back acknowledged."""
        await self.send(frame_bytes(0x6, 0, 0, b"h2spec!!"))
        f = await self.wait_for(lambda f: isinstance(f, hf.PingFrame) and "ACK" in f.flags)
        return f is not None and f.opaque_data == b"h2spec!!"

    async def response_status(self, stream: int) -> int | None:
        f = await self.wait_for(lambda f: isinstance(f, hf.HeadersFrame) and f.stream_id == stream)
        if f is None:
            return None
        decoded = f.decoded  # type: ignore[attr-defined]
        return int(decoded[":status"]) if ":status" in decoded else None

    async def aclose(self) -> None:
        await self.stream.aclose()
