"""One HTTP/1.1 exchange on a pooled upstream connection.

``send_request`` writes the head (and a small body in the same write), ``read_response_head``
returns the final response head plus whatever body bytes came with it, and ``iter_body``
streams the rest. Whether the connection can go back to the pool is decided here, from the
response's keep-alive and whether both messages were complete.

Upstream failures are mapped to ``UpstreamError`` with Envoy's response flags: ``UC``
(connection terminated before a response), ``UPE`` (the upstream broke the protocol).

Stats: as in Envoy, an HTTP/1.1 request failing counts none of the ``upstream_rq_*_reset``
or ``upstream_rq_pending_failure_eject`` counters (Envoy's HTTP/1.1 pool takes no stream-reset
callbacks; checked side by side with Envoy 1.40). What it counts is the connection's end
with the request unfinished, ``upstream_cx_destroy_{local,remote}_with_active_rq``: the
exchange marks its connection ``busy`` until the whole response is in, and ``peer_closed``
when the upstream closed it, and the pool reads both when it closes the connection.
"""

from __future__ import annotations

import math
from typing import Any, Final

import trio

from trioproxy.errors import ProtocolError, UpstreamError
from trioproxy.http import h1
from trioproxy.http.headers import Headers

READ_SIZE: Final = 65536
#: Methods whose bodiless requests go out without ``content-length: 0`` (Envoy's rule).
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "TRACE", "CONNECT"})


class Exchange:
    """The state of one request/response on an upstream connection."""

    __slots__ = (
        "conn",
        "parser",
        "rx",
        "tx",
        "complete",
        "keep_alive",
        "trailers",
        "deadline",
        "timed_out",
        "in_body",
        "proper",
    )

    def __init__(self, conn: Any, deadline: float = math.inf, proper: bool = False) -> None:
        self.conn = conn
        parser = conn.codec
        if parser is None:
            parser = conn.codec = h1.make_client_parser()
        else:
            parser.start_next_cycle()
        self.parser = parser
        self.rx = 0
        self.tx = 0
        self.complete = False
        self.keep_alive = False
        self.trailers: Headers | None = None
        self.deadline = deadline  # the route timeout, enforced by the watchdog
        self.timed_out = False
        self.in_body = False  # the final response head is in, its body is not
        self.proper = proper  # header names proper-cased (``header_key_format``)
        conn.busy = True

    def expire(self) -> None:
        """The route timeout passed: close the connection, which wakes a waiting read or
        write; they then raise ``UpstreamError(flag="UT")``."""
        self.timed_out = True
        self.conn.stream.close()

    def _failed(self, exc: Exception) -> UpstreamError:
        if self.timed_out:
            return UpstreamError("upstream request timeout", flag="UT")
        self.conn.peer_closed = True
        return UpstreamError("connection termination", flag="UC")

    def _protocol_error(self, exc: ProtocolError) -> UpstreamError:
        """The response broke HTTP/1.1: the connection is closed (``upstream_cx_protocol_error``)
        and the router answers 502, as Envoy does."""
        self.conn.stats.upstream_cx_protocol_error.value += 1
        return UpstreamError(f"protocol error: {exc.reason}", flag="UPE")

    async def send(self, data: bytes) -> None:
        try:
            await self.conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failed(exc) from exc
        self.tx += len(data)

    async def send_body(self, chunk: bytes, chunked: bool) -> None:
        await self.send(h1.encode_chunk(chunk) if chunked else chunk)

    async def end_body(self, trailers: Headers | None, chunked: bool) -> None:
        if chunked:
            await self.send(h1.encode_last_chunk(list(trailers) if trailers else [], self.proper))

    async def send_request_head(
        self, method: str, headers: Headers, body: bytes = b"", *, end_stream: bool = False
    ) -> None:
        self.parser.expect(method)
        items = []
        authority = ""
        path = "/"
        for name, value in headers:
            if name[0] == ":":
                if name == ":authority":
                    authority = value
                elif name == ":path":
                    path = value
                continue
            items.append((name, value))
        items.insert(0, ("host", authority))
        if method == "CONNECT":
            path = authority  # authority-form (a CONNECT has no :path)
        # a bodiless POST, PUT, OPTIONS … says so, as Envoy's HTTP/1 codec does
        if (
            end_stream
            and not body
            and method not in _NO_LENGTH_METHODS
            and not any(name == "content-length" for name, _ in items)
        ):
            items.append(("content-length", "0"))
        await self.send(h1.encode_request_head(method, path, items, self.proper) + body)

    async def _event(self) -> Any:
        parser = self.parser
        try:
            ev = parser.next_event()
            stream = self.conn.stream
            receive = getattr(stream, "receive_some_after_wait", stream.receive_some)
            while ev is h1.NEED_DATA:
                try:
                    data = await receive(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise self._failed(exc) from exc
                self.rx += len(data)
                parser.feed(data)
                ev = parser.next_event()
                if not data and ev is h1.NEED_DATA:
                    self.conn.peer_closed = True
                    if self.in_body:
                        # a body cut short by the upstream's close: Envoy's codec takes it
                        # for a protocol error (still a reset, ``UC``, for the router)
                        self.conn.stats.upstream_cx_protocol_error.value += 1
                    raise UpstreamError("connection termination", flag="UC")
        except ProtocolError as exc:
            raise self._protocol_error(exc) from exc
        return ev

    async def read_response_head(self) -> tuple[h1.ResponseHead, bytes]:
        """The final (non-1xx) response head and the body bytes already received."""
        while True:
            ev = await self._event()
            if type(ev) is h1.ResponseHead and ev.status >= 200:
                break
            if type(ev) is h1.ResponseHead and ev.status == 101:
                break
        head: h1.ResponseHead = ev
        self.keep_alive = head.keep_alive
        # Collect body bytes that are already parsed, without waiting for more.
        parser = self.parser
        chunks: list[bytes] = []
        try:
            while True:
                nxt = parser.next_event()
                if type(nxt) is h1.Data:
                    chunks.append(nxt.data)
                elif type(nxt) is h1.EndOfMessage:
                    self._finish(nxt)
                    break
                else:
                    break
        except ProtocolError as exc:
            raise self._protocol_error(exc) from exc
        self.in_body = not self.complete
        return head, b"".join(chunks)

    def _finish(self, ev: h1.EndOfMessage) -> None:
        self.complete = True
        self.conn.busy = False
        if ev.trailers:
            self.trailers = Headers(ev.trailers)

    def iter_body(self) -> _ResponseBody:
        """The rest of the response body (the route timeout still applies: see ``expire``)."""
        return _ResponseBody(self)

    @property
    def reusable(self) -> bool:
        """The response is whole and keep-alive. (``Http1Pool.release`` still refuses the
        connection if the upstream sent anything after it.)"""
        return self.complete and self.keep_alive


class _ResponseBody:
    """``Exchange.iter_body``: a class, not an async generator, so that mypyc can compile
    this module (setup.py)."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        ex = self.exchange
        while not ex.complete:
            ev = await ex._event()
            if type(ev) is h1.Data:
                return ev.data
            if type(ev) is h1.EndOfMessage:
                ex._finish(ev)
            else:  # pragma: no cover - parser contract
                raise UpstreamError(f"unexpected event {ev!r}", flag="UPE")
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """(Nothing to release: the router decides whether the connection is reused.)"""
