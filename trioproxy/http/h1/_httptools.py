"""The llhttp backend (PyPI ``httptools``): the hot path.

llhttp drives callbacks on this object while ``feed`` runs; the callbacks only append to an
event list, and ``next_event`` pops from it.  A message's EndOfMessage pauses the parser
until ``start_next_cycle`` (llhttp may already have parsed pipelined successors; they wait in
the list).  Errors are deferred: events parsed before the bad byte are still delivered, then
``next_event`` raises the ProtocolError.  Our own checks (limits, ``common.analyse``) raise
``_Abort`` inside a callback, which llhttp turns into a callback error that ``feed`` unwraps.

llhttp cannot be told that a response has no body (HEAD) through httptools, so a response to
HEAD is parsed by feeding only its head bytes to a throw-away parser. Nor that a 2xx response
to CONNECT ends with its head (what follows is the tunnel's): its head is fed alone too.
"""

from __future__ import annotations

from typing import Any, Final

import httptools

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

_HttpParserError = httptools.HttpParserError
_CallbackError = httptools.HttpParserCallbackError
_Upgrade = httptools.HttpParserUpgrade


def _new(cls: Any, proto: Any) -> Any:
    """A parser that keeps parsing after a ``Connection: close`` message, like h11: whether
    the connection lives on is the caller's decision from ``keep_alive``."""
    p = cls(proto)
    p.set_dangerous_leniencies(lenient_data_after_close=True)
    return p


# Wire header name → lower-case str; bounded in number and name length, so that hostile peers
# cannot grow it without limit (or pin long names).
_NAMES: Final[dict[bytes, str]] = {}
_FINAL: Final = object()  # queued after the EndOfMessage of a message that is not keep-alive
#: ``_headers`` between a head and the next message (never appended to: ``on_message_begin``
#: starts a new list, and headers after the head are trailers).
_NO_HEADERS: Final[list[tuple[str, str]]] = []


class _Abort(Exception):
    pass


def _map_llhttp(exc: Exception) -> ProtocolError:
    msg = str(exc)
    if "Transfer-Encoding" in msg:
        if "Content-Length" in msg:
            return common.error(msg, common.CL_AND_TE)
        return common.error(msg, common.INVALID_TE, 501)
    if "header value char" in msg:
        return common.error(msg, common.INVALID_CHARACTERS)
    return common.error(msg or "malformed HTTP/1.1 message")


class _Base:
    __slots__ = (
        "_abort",
        "_eof",
        "_error",
        "_events",
        "_pos",
        "_headers",
        "_hsize",
        "_in_head",
        "_keep_alive",
        "_max_header_bytes",
        "_max_headers",
        "_max_uri",
        "_p",
        "_paused",
        "_raw",
        "_raw_limit",
        "_trailers",
        "_trailing",
        "_upgrade_ignored",
        "_upgraded",
    )

    _p: Any

    def __init__(self, max_header_bytes: int, max_headers: int, max_uri: int) -> None:
        # A list read from ``_pos`` rather than a deque: a parser waits in a pool between
        # requests (``ServerParserPool``), and an empty deque holds a 64-slot block (760
        # bytes) where a list holds nothing; emptied whenever it has been read to the end.
        self._events: list[Any] = []
        self._pos = 0
        self._error: ProtocolError | None = None
        self._abort: ProtocolError | None = None
        self._paused = False
        self._upgraded = False
        self._upgrade_ignored = False  # the head's Upgrade is not taken (see ``_feed``)
        self._trailing = b""
        self._eof = False
        self._in_head = False
        self._keep_alive = True
        self._raw = 0
        self._headers: list[tuple[str, str]] = []
        self._hsize = 0
        self._trailers: list[tuple[str, str]] | None = None
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_uri = max_uri
        self._raw_limit = max_header_bytes + max_uri + 1024

    def _failed(self) -> bool:
        """Whether an error is recorded. (Loops that call ``_feed``, which may record one,
        ask this method: mypy keeps ``self._error`` narrowed across the call, and code
        compiled by mypyc would trust the narrowed type.)"""
        return self._error is not None

    def _fail(self, exc: ProtocolError) -> None:
        self._abort = exc
        raise _Abort()

    # -- llhttp callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = []
        self._hsize = 0
        self._trailers = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if value and value[-1] in (32, 9):
            value = value.rstrip(b" \t")
        trailers = self._trailers
        if trailers is not None:
            if len(trailers) >= self._max_headers:
                self._fail(common.too_many())
            trailers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
            return
        headers = self._headers
        self._hsize += len(name) + len(value)
        if self._hsize > self._max_header_bytes:
            self._fail(common.too_large())
        if len(headers) >= self._max_headers:
            self._fail(common.too_many())
        lname = _NAMES.get(name)
        if lname is None:
            lname = name.decode("latin-1").lower()
            if len(_NAMES) < 4096 and len(name) <= 64:
                _NAMES[name] = lname
        headers.append((lname, value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    # -- feeding --------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        try:
            self._p.feed_data(data)
        except _Upgrade as exc:
            rest = data[exc.args[0] :]
            if self._upgrade_ignored:
                # llhttp switches protocols on any Upgrade; the head says this one is not
                # taken (h2c): what follows is the next request, for a fresh llhttp parser.
                self._upgrade_ignored = False
                self._p = _new(type(self._p), self)
                if rest:
                    self._feed(rest)
                return
            self._upgraded = True
            self._trailing = rest
            return
        except _CallbackError as exc:
            err = self._abort
            if err is None:
                err = common.error(f"callback failed: {exc.__context__!r}")
            self._error = err
            return
        except _HttpParserError as exc:
            self._error = _map_llhttp(exc)
            return
        if self._in_head:
            self._raw += len(data)
            if self._raw > self._raw_limit:
                self._error = common.too_large()

    def next_event(self) -> Any:
        if self._paused:
            return PAUSED
        events = self._events
        if events:
            pos = self._pos
            ev = events[pos]
            pos += 1
            if pos == len(events):
                events.clear()
                pos = 0
            self._pos = pos
            if type(ev) is EndOfMessage:
                self._paused = True
            elif ev is _FINAL:
                self._upgraded = True  # nothing follows a Connection: close message
                return PAUSED
            return ev
        if self._error is not None:
            raise self._error
        if self._upgraded:
            return PAUSED
        return NEED_DATA

    def start_next_cycle(self) -> None:
        self._paused = False

    def at_rest(self) -> bool:
        """Between messages with nothing parsed ahead and nothing wrong: a parser in this
        state is as good as a new one (llhttp keeps nothing of the last message once the next
        has not begun; bytes before it, CR and LF, are skipped, as by a new parser)."""
        return not (
            self._paused
            or self._events
            or self._in_head
            or self._upgraded
            or self._eof
            or self._error is not None
        )

    def trailing_data(self) -> bytes:
        return self._trailing

    def has_leftover(self) -> bool:
        """Whether anything came after the message just ended: (part of) another, an error,
        the peer's close. An upstream connection whose response has a leftover is not
        reused: what follows was not asked for."""
        return bool(
            self._events or self._in_head or self._eof or self._error is not None or self._trailing
        )


class ServerParser(_Base):
    """Parses requests (the downstream side)."""

    __slots__ = ("_url",)

    def __init__(
        self, max_header_bytes: int = 60 * 1024, max_headers: int = 100, max_uri: int = 16 * 1024
    ) -> None:
        super().__init__(max_header_bytes, max_headers, max_uri)
        self._url = b""
        self._p = _new(httptools.HttpRequestParser, self)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = []
        self._hsize = 0
        self._trailers = None
        self._url = b""

    def on_url(self, url: bytes) -> None:
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self._max_uri:
            self._fail(common.uri_too_long())

    def on_headers_complete(self) -> None:
        p = self._p
        method = p.get_method().decode("ascii")
        version = p.get_http_version()
        headers = self._headers
        try:
            keep_alive, chunked, length, expect, upgrade = common.analyse(headers, version, True)
            if method == "CONNECT":
                common.check_connect(self._url.decode("latin-1"), chunked, length)
                upgrade = "CONNECT"
        except ProtocolError as exc:
            self._fail(exc)
        self._upgrade_ignored = upgrade is None
        self._events.append(
            RequestHead(
                method,
                self._url.decode("latin-1"),
                version,
                headers,
                keep_alive,
                chunked,
                length,
                expect,
                upgrade,
            )
        )
        self._keep_alive = keep_alive
        self._in_head = False
        self._raw = 0
        self._trailers = []
        self._headers = _NO_HEADERS  # the event owns them; an idle parser keeps nothing

    def on_message_complete(self) -> None:
        self._events.append(EndOfMessage(self._trailers or []))
        if not self._keep_alive:
            self._events.append(_FINAL)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._upgraded:
            self._trailing += data
            return
        if not data:
            self._eof = True
            return
        self._feed(data)


class ClientParser(_Base):
    """Parses responses (upstream connections); call ``expect(method)`` before each one."""

    __slots__ = (
        "_buf",
        "_close_delimited",
        "_connect",
        "_dead",
        "_head_only",
        "_interim",
        "_reason",
    )

    def __init__(
        self, max_header_bytes: int = 60 * 1024, max_headers: int = 100, max_uri: int = 16 * 1024
    ) -> None:
        super().__init__(max_header_bytes, max_headers, max_uri)
        self._reason = b""
        self._head_only = False
        self._connect = False  # the response is to a CONNECT (see ``_feed_connect``)
        self._buf = b""
        self._close_delimited = False
        self._interim = False
        self._dead = False  # the llhttp parser was used for a HEAD response; make a new one
        self._p = _new(httptools.HttpResponseParser, self)

    def expect(self, method: str) -> None:
        self._head_only = method == "HEAD"
        self._connect = method == "CONNECT"
        if self._dead and not self._head_only:
            self._dead = False
            self._p = _new(httptools.HttpResponseParser, self)
            buf, self._buf = self._buf, b""
            if buf:
                self._feed(buf)
        elif self._head_only and self._buf:
            self._feed_head_only(b"")

    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = []
        self._hsize = 0
        self._trailers = None
        self._reason = b""

    def has_leftover(self) -> bool:
        return bool(self._buf) or super().has_leftover()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        p = self._p
        status = p.get_status_code()
        version = p.get_http_version()
        headers = self._headers
        try:
            keep_alive, chunked, length, _, _ = common.analyse(headers, version, False)
        except ProtocolError as exc:
            self._fail(exc)
        no_body = self._head_only or status < 200 or status == 204 or status == 304
        self._interim = 100 <= status < 200 and status != 101
        self._close_delimited = not no_body and not chunked and length is None
        if self._close_delimited:
            keep_alive = False
        self._events.append(
            ResponseHead(
                status,
                self._reason.decode("latin-1"),
                version,
                headers,
                keep_alive,
                chunked,
                length,
            )
        )
        self._keep_alive = keep_alive
        self._in_head = False
        self._raw = 0
        self._trailers = []
        self._headers = _NO_HEADERS  # the event owns them; an idle parser keeps nothing

    def on_message_complete(self) -> None:
        if self._interim or self._head_only:
            return
        self._close_delimited = False
        self._events.append(EndOfMessage(self._trailers or []))
        if not self._keep_alive:
            self._events.append(_FINAL)

    def _head_end(self, buf: bytes) -> int:
        """Where the response head in ``buf`` ends (its blank line), or -1: not yet, or it
        is bad (a bare LF, or too long: the error is set)."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n" in buf.replace(b"\r\n", b""):
                self._error = common.error("bare LF in response head")
            elif len(buf) > self._raw_limit:
                self._error = common.too_large()
        return end

    def _feed_head_only(self, data: bytes) -> None:
        buf = self._buf + data
        while not self._failed():
            end = self._head_end(buf)
            if end < 0:
                break
            head, buf = buf[: end + 4], buf[end + 4 :]
            self._p = _new(httptools.HttpResponseParser, self)
            self._dead = True
            n = len(self._events) - self._pos
            self._feed(head)
            if self._failed() or len(self._events) - self._pos == n:
                if not self._failed():
                    self._error = common.error("malformed response head")
                break
            if not self._interim:
                self._events.append(EndOfMessage([]))
                if not self._keep_alive:
                    self._events.append(_FINAL)
                self._head_only = False
                break
        self._buf = buf

    def _feed_connect(self, data: bytes) -> None:
        """A response to CONNECT: its head goes to llhttp alone. A 2xx ends there, and the
        bytes after it are the tunnel's (``trailing_data``, as after a 101); any other final
        status is read on as usual, its body included."""
        buf = self._buf + data
        while not self._failed():
            end = self._head_end(buf)
            if end < 0:
                break
            head, buf = buf[: end + 4], buf[end + 4 :]
            n = len(self._events)
            self._feed(head)
            if self._failed() or self._upgraded:  # (a 101 switched protocols already)
                break
            if len(self._events) == n:
                self._error = common.error("malformed response head")
                break
            if self._interim:
                continue  # a 1xx: the final head follows
            self._connect = False
            status: int = self._events[-1].status
            if 200 <= status < 300:
                self._events.append(EndOfMessage([]))
                self._close_delimited = False
                self._upgraded = True
                self._dead = True  # llhttp waits for a body that never comes
                self._trailing = buf
            elif buf:
                self._feed(buf)
            buf = b""
            break
        self._buf = buf

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._upgraded:
            self._trailing += data
            return
        if not data:
            self._eof = True
            if self._close_delimited:
                self._close_delimited = False
                self._events.append(EndOfMessage([]))
            return
        if self._head_only:
            self._feed_head_only(data)
        elif self._connect:
            self._feed_connect(data)
        elif self._dead:
            self._buf += data
        else:
            self._feed(data)
