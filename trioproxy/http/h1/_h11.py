"""The pure-Python backend on h11 (used when httptools is missing, or on request).

h11 is more lenient than DEFAULTS.md in the head grammar (bare LF, obs-fold, control
characters, unknown methods), so every head is first checked on the raw bytes still in h11's
receive buffer (``common.check_head_bytes``) and analysed by ``common.analyse`` exactly like
the llhttp backend; h11 then does the framing (bodies, chunks, trailers, EOF).  We never send
through h11: each cycle gets a fresh ``h11.Connection`` fed with the previous one's unparsed
bytes, which also gives HTTP/1.0 keep-alive that h11 itself does not support.
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11

from trioproxy.errors import ProtocolError
from trioproxy.http.h1 import common
from trioproxy.http.h1.events import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    RequestHead,
    ResponseHead,
)

# As llhttp: runs of spaces between the parts, a target of visible ASCII only.
_REQUEST_LINE: Final = re.compile(rb"([^ ]+) +([\x21-\x7e]+) +HTTP/([0-9]\.[0-9])")
_STATUS_LINE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (.*))?", re.S)
_LAST_CHUNK: Final = re.compile(rb"0+(?:;[^\r\n]*)?\r\n")
_CHUNK_LINE: Final = re.compile(rb"[0-9A-Fa-f]+(?:;[^\r\n]*)?")
_BIG = 1 << 40
_EOF_MESSAGES = ("peer closed", "peer unexpectedly closed")


def _decode(headers: Any) -> list[tuple[str, str]]:
    return [(n.decode("ascii").lower(), v.decode("latin-1")) for n, v in headers]


class _Base:
    _role: Any = None

    def __init__(
        self, max_header_bytes: int = 60 * 1024, max_headers: int = 100, max_uri: int = 16 * 1024
    ) -> None:
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_uri = max_uri
        self._raw_limit = max_header_bytes + max_uri + 1024
        self._conn = h11.Connection(self._role, max_incomplete_event_size=_BIG)
        self._paused = False
        self._upgraded = False
        self._eof = False
        self._head: Any = None  # the validated head of the current message
        self._error: ProtocolError | None = None
        self._tail: bytes | None = None  # bytes after a 101 response head

    def feed(self, data: bytes) -> None:
        if self._tail is not None:
            self._tail += data
            return
        if self._eof:
            return
        if not data:
            self._eof = True
        self._conn.receive_data(data)

    def start_next_cycle(self) -> None:
        if self._head is not None and not self._head.keep_alive:
            self._upgraded = True  # nothing follows a Connection: close message
        if self._upgraded:
            return
        self._renew(self._conn.trailing_data[0])
        self._paused = False
        self._head = None

    def at_rest(self) -> bool:
        """Between messages with nothing buffered and nothing wrong (see ``_httptools``)."""
        buffered, closed = self._conn.trailing_data
        return not (
            self._paused
            or self._upgraded
            or self._eof
            or closed
            or buffered
            or self._head is not None
            or self._tail is not None
            or self._error is not None
        )

    def has_leftover(self) -> bool:
        """Whether anything came after the message just ended (see ``_httptools``)."""
        buffered, closed = self._conn.trailing_data
        return bool(buffered or closed or self._eof or self._tail or self._error is not None)

    def trailing_data(self) -> bytes:
        if self._tail is not None:
            return self._tail
        return self._conn.trailing_data[0] if self._upgraded else b""

    def _prescan(self) -> Any:
        """Validate the head in h11's buffer: a head, NEED_DATA, or raise ProtocolError."""
        buf = self._conn.trailing_data[0]
        if buf[:1] in (b"\r", b"\n"):
            buf = buf.lstrip(b"\r\n")  # empty lines before a message are ignored, as llhttp does
            if not buf:
                return NEED_DATA
        end = buf.find(b"\r\n\r\n")
        line_end = buf.find(b"\r\n")
        if end < 0:
            if b"\n" in buf.replace(b"\r\n", b""):
                common.check_head_bytes(buf[line_end + 2 :] if line_end >= 0 else b"")
                raise common.error("bare LF")
            if line_end < 0:
                self._check_partial_start(buf)
            if len(buf) > self._raw_limit:
                raise common.too_large()
            return NEED_DATA
        start = buf[:line_end]
        common.check_start_bytes(start)
        head = self._parse_start(start)
        headers = common.check_head_bytes(buf[line_end + 2 : end] if end > line_end else b"")
        if len(headers) > self._max_headers:
            raise common.too_many()
        if sum(len(n) + len(v) for n, v in headers) > self._max_header_bytes:
            raise common.too_large()
        made = self._make_head(head, headers)
        if self._switches(made):
            # Switching protocols (or CONNECT): like llhttp, the message ends with its head
            # and the rest of the stream belongs to the new protocol.
            self._tail = buf[end + 4 :]
            self._upgraded = True
            return made
        # Hand h11 a canonical head carrying only the framing; it never sees our quirks.
        framing = b"Host: x\r\n"
        if made.chunked:
            framing += b"Transfer-Encoding: chunked\r\n"
        elif made.content_length is not None:
            framing += b"Content-Length: %d\r\n" % made.content_length
        self._renew(self._canonical_start(made) + framing + b"\r\n" + buf[end + 4 :])
        return made

    def _renew(self, data: bytes) -> None:
        closed = self._conn.trailing_data[1]
        self._conn = h11.Connection(self._role, max_incomplete_event_size=_BIG)
        self._started()
        if data:
            self._conn.receive_data(data)
        if closed:
            self._conn.receive_data(b"")

    def _started(self) -> None:
        pass

    def _canonical_start(self, head: Any) -> bytes:
        raise NotImplementedError

    def _check_partial_start(self, buf: bytes) -> None:
        pass

    def _switches(self, head: Any) -> bool:
        """Whether the stream belongs to another protocol after ``head``."""
        return getattr(head, "upgrade", None) is not None

    def _parse_start(self, start: bytes) -> Any:
        raise NotImplementedError

    def _make_head(self, start: Any, headers: list[tuple[str, str]]) -> Any:
        raise NotImplementedError

    def _check_trailers(self) -> None:
        """Hold chunk lines and trailers to llhttp's grammar (h11 takes OWS after a chunk
        size, folds obs-fold and takes bare LF in trailers).

        Peeks at h11's chunked reader (private state, read defensively): at a chunk boundary
        a zero-size chunk line means the trailer block follows.
        """
        reader = getattr(self._conn, "_reader", None)
        if getattr(reader, "_bytes_in_chunk", 1) != 0:
            return
        buf = self._conn.trailing_data[0]
        discard = getattr(reader, "_bytes_to_discard", b"")
        if discard:
            if not buf.startswith(discard):
                return
            buf = buf[len(discard) :]
        if not getattr(reader, "_reading_trailer", False):
            line_end = buf.find(b"\r\n")
            if line_end >= 0 and _CHUNK_LINE.fullmatch(buf, 0, line_end) is None:
                raise common.error("invalid chunk size line")  # h11 allows OWS; llhttp not
            m = _LAST_CHUNK.match(buf)
            if m is None:
                return
            buf = buf[m.end() :]
        if buf.startswith(b"\r\n"):
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n" in buf.replace(b"\r\n", b""):
                raise common.error("bare LF in trailers")
            return
        common.check_head_bytes(buf[:end])

    def _h11_event(self) -> Any:
        if self._head.chunked:
            self._check_trailers()
        try:
            return self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            msg = str(exc)
            if self._eof and msg.startswith(_EOF_MESSAGES):
                return NEED_DATA
            if "Transfer-Encoding" in msg:
                raise common.error(msg, common.INVALID_TE, 501) from exc
            raise common.error(msg) from exc


def _method_prefix(text: str) -> bool:
    return any(m.startswith(text) for m in common.KNOWN_METHODS)


class ServerParser(_Base):
    """Parses requests (the downstream side)."""

    _role = h11.SERVER

    def _check_partial_start(self, buf: bytes) -> None:
        # A method is refused from its first wrong byte, as llhttp does: a client speaking
        # another protocol (a TLS hello) gets its 400 now, not the header timeout's 408.
        method, space, _ = buf.partition(b" ")
        name = method.decode("latin-1")
        if name not in common.KNOWN_METHODS if space else not _method_prefix(name):
            raise common.error(f"invalid method {name!r}")
        parts = buf.split(None, 2)
        if len(parts) >= 2 and len(parts[1]) > self._max_uri:
            raise common.uri_too_long()

    def _parse_start(self, start: bytes) -> Any:
        m = _REQUEST_LINE.fullmatch(start)
        method = start.split(b" ", 1)[0].decode("latin-1")
        if method not in common.KNOWN_METHODS:
            raise common.error(f"invalid method {method!r}")
        parts = start.split()
        if len(parts) > 1 and len(parts[1]) > self._max_uri:
            raise common.uri_too_long()
        if m is None:
            raise common.error("malformed request line")
        return method, m.group(2).decode("latin-1"), m.group(3).decode("ascii")

    def _canonical_start(self, head: Any) -> bytes:
        return b"POST / HTTP/1.1\r\n"

    def _make_head(self, start: Any, headers: list[tuple[str, str]]) -> Any:
        method, target, version = start
        keep_alive, chunked, length, expect, upgrade = common.analyse(headers, version, True)
        if method == "CONNECT":
            common.check_connect(target, chunked, length)
            upgrade = "CONNECT"
        return RequestHead(
            method, target, version, headers, keep_alive, chunked, length, expect, upgrade
        )

    def next_event(self) -> Any:
        if self._paused:
            return PAUSED
        if self._error is not None:
            raise self._error
        try:
            if self._head is None:
                head = self._prescan()
                if head is NEED_DATA:
                    return NEED_DATA
                self._head = head
                if self._tail is not None:
                    return head
            if self._tail is not None:
                self._paused = True
                return EndOfMessage([])
            ev = self._h11_event()
        except ProtocolError as exc:
            self._error = exc
            raise
        t = type(ev)
        if t is h11.Data:
            return Data(bytes(ev.data))
        if t is h11.Request:
            return self._head
        if t is h11.EndOfMessage:
            self._paused = True
            head = self._head
            if head.upgrade is not None:
                self._upgraded = True
            if len(ev.headers) > self._max_headers:
                self._error = common.too_many()
                raise self._error
            return EndOfMessage(_decode(ev.headers))
        if ev is h11.PAUSED:
            return PAUSED
        return NEED_DATA  # NEED_DATA or ConnectionClosed


class ClientParser(_Base):
    """Parses responses (upstream connections); call ``expect(method)`` before each one."""

    _role = h11.CLIENT

    def __init__(
        self, max_header_bytes: int = 60 * 1024, max_headers: int = 100, max_uri: int = 16 * 1024
    ) -> None:
        super().__init__(max_header_bytes, max_headers, max_uri)
        self._method = "GET"

    def expect(self, method: str) -> None:
        self._method = method
        if self._upgraded:
            return
        self._renew(self._conn.trailing_data[0])

    def _canonical_start(self, head: Any) -> bytes:
        return b"HTTP/1.1 %d X\r\n" % head.status

    def _switches(self, head: Any) -> bool:
        # a 101, or a 2xx to CONNECT: the tunnel is open (RFC 9110 §9.3.6)
        status: int = head.status
        return status == 101 or (self._method == "CONNECT" and 200 <= status < 300)

    def _started(self) -> None:
        conn = self._conn
        conn.send(h11.Request(method=self._method, target="/", headers=[("Host", "upstream")]))
        conn.send(h11.EndOfMessage())

    def _parse_start(self, start: bytes) -> Any:
        m = _STATUS_LINE.fullmatch(start)
        if m is None:
            raise common.error("malformed status line")
        return int(m.group(2)), (m.group(3) or b"").decode("latin-1"), m.group(1).decode("ascii")

    def _make_head(self, start: Any, headers: list[tuple[str, str]]) -> Any:
        status, reason, version = start
        keep_alive, chunked, length, _, _ = common.analyse(headers, version, False)
        no_body = self._method == "HEAD" or status < 200 or status == 204 or status == 304
        if not no_body and not chunked and length is None:
            keep_alive = False
        return ResponseHead(status, reason, version, headers, keep_alive, chunked, length)

    def next_event(self) -> Any:
        if self._paused:
            return PAUSED
        if self._error is not None:
            raise self._error
        try:
            if self._head is None:
                head = self._prescan()
                if head is NEED_DATA:
                    return NEED_DATA
                self._head = head
                if self._tail is not None:
                    return head
            if self._tail is not None:
                self._paused = True
                return EndOfMessage([])
            ev = self._h11_event()
        except ProtocolError as exc:
            self._error = exc
            raise
        t = type(ev)
        if t is h11.Data:
            return Data(bytes(ev.data))
        if t is h11.InformationalResponse:
            head = self._head
            self._head = None
            return head
        if t is h11.Response:
            return self._head
        if t is h11.EndOfMessage:
            self._paused = True
            if len(ev.headers) > self._max_headers:
                self._error = common.too_many()
                raise self._error
            return EndOfMessage(_decode(ev.headers))
        if ev is h11.PAUSED:
            return PAUSED
        return NEED_DATA
