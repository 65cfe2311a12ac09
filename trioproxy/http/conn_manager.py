"""The HTTP connection manager for HTTP/1.1 downstream connections.

Theory of operation
-------------------
One task serves one downstream connection, request after request (pipelined requests are parsed
ahead but answered strictly in order). For each request:

1. read the head under the connection's timeouts (idle before the first byte, then
   ``request_headers_timeout``); a parse error answers ``ProtocolError.status_hint`` and closes;
2. turn it into a ``Headers`` map with pseudo-headers, apply Envoy's header mutations and path
   normalisation, create the ``HttpStream`` the filters see;
3. run the request-header phases of the compiled chain, then the terminal filter (router) with
   the request body as an async iterator passing through the request-data phases;
4. run the response phases in reverse order while writing the response with HTTP/1.1 framing
   (the upstream's Content-Length is kept when no filter rewrites the body, chunked otherwise);
5. record stats, call log phases and access loggers.

Everything a stream does happens inside its cancel scope: a stream timeout cancels whatever a
filter was awaiting (and the upstream exchange, whose connection is then closed, not pooled).
After the 504 of a stream idle timeout on a whole request the connection goes on under a new
scope, as Envoy's does; a 408 (the request body unread) closes it. A filter that raises fails
only its stream (500, or a closed connection if the response had started), and is counted in
``http.<prefix>.downstream_rq_filter_error``.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import trio

from trioproxy import watchdog
from trioproxy.errors import ProtocolError
from trioproxy.http import h1
from trioproxy.http.conn_manager_config import HcmConfig, ListenerHttpStats
from trioproxy.http.filter import HttpStream, LocalReply, Response, Tunnel
from trioproxy.http.headers import Headers
from trioproxy.http.local_reply import (
    FILTER_ERROR,
    HEADER_TIMEOUT,
    NO_ROUTE,
    for_request,
    http_date,
    reply_headers,
)
from trioproxy.http.request_head import refuse_upgrade, request_headers
from trioproxy.http.request_headers import mutate_response_headers
from trioproxy.http.stream_common import (
    count_status,
    filtered_request_body,
    filtered_response_body,
    log_stream,
    start_span,
    timeout_reply,
)
from trioproxy.http.stream_info import StreamInfo
from trioproxy.http.stream_info import now as _now
from trioproxy.netutil import address_string
from trioproxy.network.filter import DownstreamConnection

log = logging.getLogger(__name__)

READ_SIZE = 65536
_NO_BODY_STATUS = frozenset((204, 304))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Closed(Exception):
    """The downstream closed (or reset) the connection."""


class _Park(Exception):
    """The connection, idle, parks (``Http1Connection.expire``)."""


class _DrainClose(Exception):
    """The connection, idle, is past its ``max_connection_duration`` and ``drain_timeout``:
    it closes (``Http1Connection.max_duration_reached``)."""


#: A parked connection's cancel scope: none of its own (``resume`` makes one), so that it
#: keeps no spent scope. Never entered, and only a stream in flight is ever cancelled.
_PARKED_SCOPE = trio.CancelScope()


class MaxDuration:
    """A connection's ``max_connection_duration``, as a watchdog entry of its own (the
    connection's ``deadline`` is its idle and stream timeouts')."""

    __slots__ = ("conn", "deadline")

    def __init__(self, conn: Any, seconds: float) -> None:
        self.conn = conn
        self.deadline = watchdog.now() + seconds
        watchdog.current().add(self)

    def expire(self) -> None:
        self.conn.max_duration_reached()


class Http1Connection:
    __slots__ = (
        "conn",
        "cfg",
        "stats",
        "lstats",
        "parser",
        "stream",
        "rx",
        "tx",
        "_body_done",
        "_continue_pending",
        "_filter_error",
        "_scheme",
        "_plain",
        "_remote",
        "_local",
        "deadline",
        "_idle_expired",
        "_idle",
        "_rq_deadline",
        "_expired",
        "_rejected",
        "_scope",
        "_stream",
        "_dog",
        "_started",
        "_idle_deadline",
        "_park_after",
        "_park_requested",
        "_parked",
        "_resumed",
        "_closing",
        "_max_duration",
        "_drain_close_at",
        "_drain_close_requested",
    )

    def __init__(self, conn: DownstreamConnection, cfg: HcmConfig, lstats: ListenerHttpStats):
        self.conn = conn
        self.cfg = cfg
        self.stats = cfg.stats
        self.lstats = lstats
        self.stream = conn.stream
        # Taken from ``cfg.parsers`` when a request's first bytes arrive, given back when the
        # connection waits for the next one with nothing parsed ahead (``_read_head``).
        self.parser: Any = None
        self.rx = 0
        self.tx = 0
        self._body_done = True
        self._continue_pending = False
        self._scheme = "https" if conn.info.tls else "http"
        # The socket stream itself when nothing is layered on it (no TLS): it can skip the
        # recv() that would say EAGAIN before the next request, and it can park.
        self._plain = conn.transport if self.stream is conn.transport else None
        remote, local = conn.info.remote_address, conn.info.local_address
        self._remote = address_string(remote)
        self._local = address_string(local)
        self._filter_error = cfg.scope.counter("downstream_rq_filter_error")
        # Timeouts (see ``trioproxy.watchdog``): ``deadline`` is the next one to fire.
        self.deadline = math.inf
        self._idle = True  # between requests (else a stream is in flight)
        self._idle_expired = False
        self._rq_deadline = math.inf  # request_timeout, while the request is incomplete
        self._expired: str | None = None  # "idle" or "request" once a stream timed out
        self._rejected = False  # a request was rejected (bad head): no keep-alive after it
        self._scope = trio.CancelScope()
        self._stream: HttpStream | None = None
        self._dog = watchdog.current()
        self._started = 0.0
        # Parking (``trioproxy.listener.parking``): an idle connection over plain TCP leaves
        # its task after ``_park_after`` seconds; see ``expire`` and ``_wait_first_bytes``.
        self._idle_deadline = math.inf  # the idle timeout's, while idle
        parking = conn.parking
        self._park_after = (
            parking.after if parking is not None and self._plain is not None else math.inf
        )
        self._park_requested = False  # the watchdog asked the idle wait to end
        self._parked = False
        self._resumed = False  # the first read after parking: bytes are there
        # ``max_connection_duration``: once it passes, the next response (or the one under
        # way) says Connection: close and the connection closes after it
        self._closing = False
        self._drain_close_at = math.inf  # idle past it, the connection closes
        self._drain_close_requested = False
        self._max_duration: MaxDuration | None = None
        if cfg.max_connection_duration is not None:
            self._max_duration = MaxDuration(self, cfg.max_connection_duration)

    def expire(self) -> None:
        """A timeout fired (or a drain, between requests).

        Between requests: close the socket, which wakes the waiting read (or, parked, the
        connection's task again: ``Parking.wake``). Or, idle for ``_park_after`` and not
        draining, park: wake the waiting read with ``notify_closing`` (without closing), and
        ``_wait_first_bytes`` returns the connection to the listener as ``Parked``. During a
        stream: cancel the connection's scope, which cancels whatever the stream's filters
        await; ``_serve`` then answers 504 or 408 if the response has not started (see
        ``_stream_timed_out``), and goes on under a new scope or closes."""
        if self._idle:
            transport = self.conn.transport
            sock = transport.socket
            drain = self.conn.drain
            now = watchdog.now()
            if (
                not self._parked
                and not self._idle_expired
                and self._idle_deadline > now
                and not (drain.draining and drain.close_idle)
            ):
                # The park deadline, not the idle timeout's (nor a shutdown's drain: that
                # closes). A listener update's drain still parks: its connections stay open
                # for their next request.
                if transport.sending():
                    # The last response is still going out to a slow reader, and
                    # notify_closing would wake its sender too: try again later.
                    self.deadline = min(self._idle_deadline, now + self._park_after)
                else:
                    self._park_requested = True
                    self.deadline = self._idle_deadline  # the idle timeout holds, parked
                    trio.lowlevel.notify_closing(sock)
                if self.deadline != math.inf:
                    self._dog.add(self)
                return
            if self._drain_close_at <= now and self._plain is not None:
                # past max_connection_duration and drain_timeout: the task closes it (with
                # the delayed close) once woken, without the socket closed under it
                self._drain_close_requested = True
                if not self._unpark(sock):
                    trio.lowlevel.notify_closing(sock)
                return
            self._idle_expired = True
            self._unpark(sock)
            self.conn.transport.close()
            return
        now = watchdog.now()
        self._expired = "request" if self._rq_deadline <= now else "idle"
        self._scope.cancel()

    def _unpark(self, sock: Any) -> bool:
        """Wake the connection's task if it is parked (``Parking.wake``); whether it was."""
        if not self._parked:
            return False
        self._parked = False
        parking = self.conn.parking
        assert parking is not None
        parking.wake(sock)
        return True

    def max_duration_reached(self) -> None:
        """``max_connection_duration`` passed: Envoy's drain (measured with 1.40). A
        response from now on says Connection: close, and the connection closes after it
        (RFC 9112 §9.6); idle until ``drain_timeout`` later, it closes then, with the
        delayed close (``_delayed_close``)."""
        self.stats.downstream_cx_max_duration_reached.value += 1
        self._closing = True
        self._drain_close_at = watchdog.now() + self.cfg.drain_timeout
        if self._idle:
            self._idle_deadline = min(self._idle_deadline, self._drain_close_at)
            self.deadline = min(self.deadline, self._drain_close_at)
            self._dog.add(self)

    def probe(self) -> None:
        """The watchdog's peek while a request is in flight: if the client closed (or half-
        closed: Envoy takes that as a close too), cancel the stream, which resets the
        upstream request. Bytes waiting (a pipelined request, TLS records) mean nothing."""
        if self._idle or self._expired is not None:
            return
        try:
            data = self.conn.transport.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._expired = "peer"
            self._scope.cancel()

    def _touch(self) -> None:
        """Stream activity: push the stream idle timeout back."""
        idle = self.cfg.stream_idle_timeout
        self.deadline = min(
            watchdog.now() + idle if idle is not None else math.inf, self._rq_deadline
        )

    # -- I/O ------------------------------------------------------------------------------
    async def _next_event(self) -> Any:
        parser = self.parser
        ev = parser.next_event()
        while ev is h1.NEED_DATA:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closed() from exc
            self.rx += len(data)
            parser.feed(data)
            if not data:
                ev = parser.next_event()
                if ev is h1.NEED_DATA:
                    raise _Closed()
                return ev
            ev = parser.next_event()
        return ev

    async def _send(self, data: bytes | bytearray) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closed() from exc
        self.tx += len(data)

    # -- connection loop ------------------------------------------------------------------
    async def run(self) -> Http1Connection | None:
        """Serve the connection until it ends (``None``) or parks (``self``, see
        ``trioproxy.network.filter.Parked``)."""
        st = self.stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_http1_total.value += 1
        st.downstream_cx_active.value += 1
        st.downstream_cx_http1_active.value += 1
        if self.conn.info.tls:
            st.downstream_cx_ssl_total.value += 1
            st.downstream_cx_ssl_active.value += 1
        self._started = _now()
        return await self._serve()

    async def resume(self) -> Http1Connection | None:
        """Go on serving a parked connection: its socket turned readable, or ``expire``
        closed it."""
        self._parked = False
        self._resumed = True
        self._scope = trio.CancelScope()  # (a cancel scope is used once)
        return await self._serve()

    def abandon(self) -> None:
        """The listener stopped with the connection parked: count it as ended."""
        self._ended()

    async def _serve(self) -> Http1Connection | None:
        st = self.stats
        drain = self.conn.drain
        try:
            keep_alive = False
            while True:
                head: h1.RequestHead | None = None
                with self._scope:
                    while True:
                        head = await self._read_head()
                        if head is None:
                            break
                        keep_alive = await self._serve_request(head)
                        head = None  # an idle connection keeps nothing of its last request
                        if not keep_alive:
                            st.downstream_cx_destroy_local.value += 1
                            break
                        if drain.draining and drain.close_idle:
                            # (A listener update waits for the next request instead, answered
                            # with Connection: close: this response may have promised
                            # keep-alive.)
                            st.downstream_cx_drain_close.value += 1
                            break
                        if self._expired is not None:
                            break  # see below: a timeout that fired as the stream ended
                        self.parser.start_next_cycle()
                if self._expired is None:
                    break
                if self._stream is None:
                    # The timeout (or the client's close) was noticed in the scheduler batch
                    # where its stream finished whole: nothing is left to answer, and the
                    # cancellation must not reach the next request. A connection ending
                    # anyway (not keep-alive, draining) has been counted above.
                    if keep_alive and not (drain.draining and drain.close_idle):
                        self._expired = None
                        self._scope = trio.CancelScope()
                        self.parser.start_next_cycle()
                        continue
                    break
                if self._expired == "peer":
                    self._peer_gone()
                    break
                if not await self._stream_timed_out(head):
                    break
                # A 504 after a whole request (as Envoy): the connection carries on, under a
                # new scope (the timeout spent this one).
                if drain.draining and drain.close_idle:
                    st.downstream_cx_drain_close.value += 1
                    break
                self._expired = None
                self._scope = trio.CancelScope()
                self.parser.start_next_cycle()
        except _Park:
            self._scope = _PARKED_SCOPE
            return self
        except _DrainClose:
            await self._delayed_close()
        except _Closed:
            st.downstream_cx_destroy_remote.value += 1
        except BaseException:
            self._ended()
            raise
        self._ended()
        return None

    def _ended(self) -> None:
        st = self.stats
        self._dog.discard(self)
        if self._max_duration is not None:
            self._dog.discard(self._max_duration)
        self.conn.drain.idle.discard(self)
        st.downstream_cx_destroy.value += 1
        st.downstream_cx_active.value -= 1
        st.downstream_cx_http1_active.value -= 1
        if self.conn.info.tls:
            st.downstream_cx_ssl_active.value -= 1
        st.downstream_cx_rx_bytes_total.value += self.rx
        st.downstream_cx_tx_bytes_total.value += self.tx
        st.downstream_cx_length_ms.record((_now() - self._started) * 1000)

    def _peer_gone(self) -> None:
        """The client closed while its request was in flight (``probe``)."""
        stream = self._stream
        assert stream is not None
        st = self.stats
        st.downstream_cx_destroy_remote.value += 1
        st.downstream_cx_destroy_remote_active_rq.value += 1
        st.downstream_cx_destroy_active_rq.value += 1
        st.downstream_rq_rx_reset.value += 1
        stream.info.response_flags.add("DC")
        stream.info.response_code_details = "downstream_remote_disconnect"
        stream.info.end_monotonic = _now()
        self._log(stream)

    async def _stream_timed_out(self, head: h1.RequestHead | None) -> bool:
        """The watchdog cancelled the current stream (of ``head``): answer if nothing was sent
        yet, and return whether the connection may carry another request. As Envoy 1.40, it
        may after a 504 (the request was whole: nothing of it is left unread) if the request
        allowed keep-alive; a 408 (the rest of the body unread) or a cut response closes."""
        stream = self._stream
        assert stream is not None
        self._stream = None
        st = self.stats
        info = stream.info
        assert self._expired is not None
        reply = timeout_reply(st, stream, self._expired, self._body_done)
        keep_alive = False
        if info.response_code == 0:
            head_only = stream.request_headers.get(":method") == "HEAD"
            # (the request timeout fires only while the body is incomplete: a 408 that closes)
            keep_alive = (
                head is not None and head.keep_alive and head.upgrade is None and not self._rejected
            )
            keep_alive = await self._write_local_reply(stream, reply, head_only, keep_alive)
        else:  # the response is cut: the connection closes under it (a reset, for Envoy)
            info.response_code_details = reply.details
            st.downstream_rq_tx_reset.value += 1
        info.end_monotonic = _now()
        self._log(stream)
        return keep_alive

    async def _read_head(self) -> h1.RequestHead | None:
        """The next request head, or None when the connection should close quietly."""
        parser = self.parser
        try:
            ev = h1.NEED_DATA if parser is None else parser.next_event()
            if ev is h1.NEED_DATA:
                pool = None
                if parser is None or parser.at_rest():
                    # Nothing parsed ahead: an idle connection holds no parser.
                    pool = self.cfg.parsers
                    if parser is not None:
                        self.parser = None
                        pool.give(parser)
                data = await self._wait_first_bytes()
                if not data:
                    return None
                if pool is not None:
                    parser = self.parser = pool.take()
                parser.feed(data)
                ev = parser.next_event()
            if ev is h1.NEED_DATA:
                # A partial head: the rest must come within request_headers_timeout.
                timeout = self.cfg.request_headers_timeout
                deadline = math.inf if timeout is None else watchdog.now() + timeout
                with trio.CancelScope(deadline=deadline) as scope:
                    ev = await self._next_event()
                if scope.cancelled_caught:
                    self.stats.downstream_rq_header_timeout.value += 1
                    await self._answer_unparsed(HEADER_TIMEOUT)
                    return None
        except ProtocolError as exc:
            await self._protocol_error(exc)
            return None
        except _Closed:
            return None
        if type(ev) is not h1.RequestHead:
            return None  # PAUSED after a message that closes the connection
        return ev

    async def _wait_first_bytes(self) -> bytes | None:
        """Idle between requests: the first bytes of the next one, or None on close, idle
        timeout or drain (both close the socket through ``expire``). Raises ``_Park`` when
        ``expire`` parks the connection instead."""
        drain = self.conn.drain
        if drain.draining and drain.close_idle and self.rx:
            # Between requests while shutting down. (A listener update instead answers the
            # next request with Connection: close: the client may already be sending it.)
            # A new connection (nothing received yet) is served once: it was accepted
            # before the drain and its request may be on the way.
            return None
        if self._drain_close_requested:  # (woken from parking to close)
            self._idle_end(False)
            raise _DrainClose()
        dog = self._dog
        timeout = self.cfg.idle_timeout
        self._idle = True
        if timeout is not None or self._park_after != math.inf:
            now = watchdog.now()
            if self._resumed:
                idle = self._idle_deadline  # the idle time counts from the last request
            else:
                idle = self._idle_deadline = math.inf if timeout is None else now + timeout
            if self._drain_close_at < idle:
                idle = self._idle_deadline = self._drain_close_at
            self.deadline = min(idle, now + self._park_after)
            dog.add(self)
        drain.idle.add(self)
        try:
            plain = self._plain
            if plain is None or self._resumed:  # (resumed: the socket turned readable)
                self._resumed = False
                data = await self.stream.receive_some(READ_SIZE)
            else:
                data = await plain.receive_some_after_wait(READ_SIZE)
        except trio.ClosedResourceError:
            if self._drain_close_requested:
                self._idle_end(False)
                raise _DrainClose() from None
            if self._park_requested and not self._idle_expired:
                self._park_requested = False
                self._parked = True
                raise _Park() from None  # (still idle: the watchdog and a drain keep it)
            self._idle_end(True)
            return None
        except trio.BrokenResourceError:
            self._idle_end(True)
            return None
        except BaseException:
            self._idle_end(False)
            raise
        self._idle_end(False)
        self._park_requested = False  # (the bytes came first)
        self.rx += len(data)
        return bytes(data)

    def _idle_end(self, closed: bool) -> None:
        drain = self.conn.drain
        drain.idle.discard(self)
        self._dog.discard(self)
        if closed and self._idle_expired and not drain.draining:
            self.stats.downstream_cx_idle_timeout.value += 1

    async def _protocol_error(self, exc: ProtocolError) -> None:
        self.stats.downstream_cx_protocol_error.value += 1
        body = HTTPStatus(exc.status_hint).phrase.encode("ascii")
        await self._answer_unparsed(
            LocalReply(exc.status_hint, body, details=exc.details, flag="DPE")
        )

    async def _answer_unparsed(self, reply: LocalReply) -> None:
        """Answer a request whose head did not parse (bad framing, header timeout) and close.
        Envoy has a stream from a request's first byte, so this is one in the stats and the
        access log, as Envoy counts and logs it: without request headers, and reset by the
        close before it completed."""
        st = self.stats
        st.downstream_rq_total.value += 1
        st.downstream_rq_http1_total.value += 1
        st.downstream_rq_response_before_rq_complete.value += 1
        st.downstream_rq_rx_reset.value += 1
        conn_info = self.conn.info
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=_now(),
            protocol="HTTP/1.1",
            downstream_remote_address=self._remote,
            downstream_local_address=self._local,
            requested_server_name=conn_info.sni,
            connection_id=conn_info.connection_id,
        )
        info.downstream_direct_remote_address = info.downstream_remote_address
        reply = for_request(reply, None, info, self.cfg.local_reply)
        headers = reply_headers(reply, self.cfg.server_name, info.start_time)
        headers.add("connection", "close")
        if not reply.body:
            headers.add("content-length", "0")
        info.response_code = reply.status
        info.response_headers = headers
        info.bytes_sent = len(reply.body)
        self._count_status(reply.status)
        try:
            await self._send(_encode_head(headers, self.cfg.proper_case_headers) + reply.body)
        except _Closed:
            st.downstream_cx_destroy_remote.value += 1
            return
        finally:
            info.end_monotonic = info.last_downstream_tx = _now()
            st.downstream_rq_time.record((info.end_monotonic - info.start_monotonic) * 1000)
            self._log(HttpStream(request_headers=Headers(), info=info, connection=conn_info))
        await self._delayed_close()

    async def _delayed_close(self) -> None:
        """Before closing after an error answer, give the client ``delayed_close_timeout``
        to read it and close first, as Envoy does: closing with its bytes unread would make
        the kernel send a reset, which can destroy the answer before the client reads it.
        Unlike Envoy, and as RFC 9112 §9.6 asks, our side is half-closed first (over
        cleartext), so a client reading to the end of the connection sees it at once; what
        the client still sends is read and dropped."""
        st = self.stats
        delay = self.cfg.delayed_close_timeout
        if delay is None:
            st.downstream_cx_destroy_local.value += 1
            return
        stream = self.stream
        with trio.move_on_after(delay):
            try:
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                while await stream.receive_some(READ_SIZE):
                    pass  # (dropped, and not counted in rx bytes: Envoy no longer reads)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            st.downstream_cx_destroy_remote.value += 1
            return
        st.downstream_cx_delayed_close_timeout.value += 1
        st.downstream_cx_destroy_local.value += 1

    def _count_status(self, status: int) -> None:
        count_status(self.stats, self.lstats, status)

    # -- one request ----------------------------------------------------------------------
    async def _serve_request(self, head: h1.RequestHead) -> bool:
        """Serve one request; return whether the connection may carry another."""
        cfg = self.cfg
        st = self.stats
        conn_info = self.conn.info
        t0 = _now()
        st.downstream_rq_total.value += 1
        st.downstream_rq_http1_total.value += 1
        st.downstream_rq_active.value += 1
        # After an upgrade request (or CONNECT) the parser takes what follows the head as the
        # new protocol's bytes, so a response other than the tunnel's ends the connection.
        keep_alive = head.keep_alive and head.upgrade is None
        head_only = head.method == "HEAD"
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=t0,
            protocol="HTTP/1.0" if head.version == "1.0" else "HTTP/1.1",
            downstream_remote_address=self._remote,
            downstream_local_address=self._local,
            requested_server_name=conn_info.sni,
            connection_id=conn_info.connection_id,
        )
        info.downstream_direct_remote_address = info.downstream_remote_address
        if head.content_length in (None, 0) and not head.chunked:
            info.last_downstream_rx = t0
        self._body_done = head.content_length in (None, 0) and not head.chunked
        if self._body_done:
            # The parser has the (empty) message's end in hand already: consume it.
            self.parser.next_event()
        self._continue_pending = head.expect_continue and not self._body_done
        headers, reject = request_headers(head, self.cfg, conn_info, self._scheme)
        if head.expect_continue:
            # The proxy answers 100-continue itself (Envoy's default, proxy_100_continue off).
            headers.remove("expect")
        info.request_headers = headers
        stream = HttpStream(request_headers=headers, info=info, connection=conn_info)
        stream._router = self.cfg.routes.route
        stream.end_stream = self._body_done
        stream.cancel_scope = self._scope
        self._stream = stream
        if reject is None and head.upgrade is not None:
            reject = refuse_upgrade(cfg, stream, head.upgrade)
        if cfg.tracing is not None and reject is None:
            start_span(cfg.tracing, stream)
        # Stream timeouts go to the watchdog (see ``expire``).
        self._idle = False
        now = watchdog.now()
        self._rq_deadline = (
            now + cfg.request_timeout
            if cfg.request_timeout is not None and not self._body_done
            else math.inf
        )
        idle = cfg.stream_idle_timeout
        self.deadline = min(now + idle if idle is not None else math.inf, self._rq_deadline)
        if self.deadline != math.inf:
            self._dog.add(self)
        self._dog.watch(self)
        try:
            if reject is not None:
                result: Response | LocalReply = reject
                keep_alive = False
                self._rejected = True  # (the connection ends with this request)
            else:
                result = await self._decode(stream)
            if type(result) is LocalReply:
                if result is NO_ROUTE:
                    st.no_route.value += 1
                keep_alive = await self._write_local_reply(stream, result, head_only, keep_alive)
            else:
                assert isinstance(result, Response)
                keep_alive = await self._write_response(stream, result, head, keep_alive)
        except _Closed:
            info.response_flags.add("DC")
            st.downstream_rq_rx_reset.value += 1
            keep_alive = False
            raise
        except ProtocolError as exc:
            # Broken request body framing: answer if we still can, then close.
            st.downstream_cx_protocol_error.value += 1
            if info.response_code == 0:
                await self._write_local_reply(
                    stream, LocalReply(exc.status_hint, b"", details=exc.details), head_only, False
                )
            keep_alive = False
        except Exception:
            log.exception("HTTP filter failed on %s %s", head.method, head.target)
            self._filter_error.value += 1
            if info.response_code == 0:
                await self._write_local_reply(stream, FILTER_ERROR, head_only, False, filters=False)
            else:
                info.response_flags.add("LR")
            keep_alive = False
        finally:
            self._dog.discard(self)
            self._dog.unwatch(self)
            st.downstream_rq_active.value -= 1
            info.end_monotonic = info.last_downstream_tx = _now()
            if info.first_downstream_tx is None and info.response_code:
                info.first_downstream_tx = info.end_monotonic
            st.downstream_rq_time.record((info.end_monotonic - t0) * 1000)
            if head.upgrade is not None and info.response_code:
                # an upgrade's (or a CONNECT's) request never ends: the connection's end
                # resets it, as Envoy counts it (a client gone away counts in _peer_gone)
                st.downstream_rq_response_before_rq_complete.value += 1
                if self._expired is None:
                    st.downstream_rq_rx_reset.value += 1
            if self._expired is None:  # a timed-out stream is logged once answered
                self._log(stream)
        if not self._body_done:
            # The response finished before the request body: the rest of the connection's
            # bytes cannot be trusted to be a new request.
            st.downstream_rq_response_before_rq_complete.value += 1
            keep_alive = False
        if self._expired is not None:
            # A timeout (or the client's close) noticed as this stream finished whole: it
            # was not answered as timed out (``_serve`` goes on), so it is logged here.
            self._log(stream)
        self._stream = None  # (kept above for a stream that times out or loses its client)
        return keep_alive

    async def _decode(self, stream: HttpStream) -> Response | LocalReply:
        chain = self.cfg.chain
        headers = stream.request_headers
        for phase in chain.request_headers:
            reply = await phase(stream, headers)
            if reply is not None:
                return reply  # type: ignore[no-any-return]
        body: AsyncIterator[bytes] | None = None
        if not self._body_done:
            body = _RequestBody(self, stream)
            if chain.request_data or chain.request_trailers:
                body = filtered_request_body(self.cfg.chain, stream, body)
        return await chain.terminal.serve(stream, body)

    # -- responses ------------------------------------------------------------------------
    async def _write_local_reply(
        self,
        stream: HttpStream,
        reply: LocalReply,
        head_only: bool,
        keep_alive: bool,
        *,
        filters: bool = True,
    ) -> bool:
        """Answer with ``reply``; ``filters=False`` skips the response phases (used when a
        filter failed: the reply must not run into the same failure)."""
        cfg = self.cfg
        info = stream.info
        reply = for_request(reply, stream.request_headers, info, cfg.local_reply)
        headers = reply_headers(reply, cfg.server_name, info.start_time)
        if head_only and not reply.body:
            # (as Envoy 1.40's codec frames it: no length for a HEAD reply with no body;
            # chunked to HTTP/1.1, and to HTTP/1.0 nothing, the connection then closing)
            if info.protocol == "HTTP/1.0":
                keep_alive = False
            else:
                headers.add("transfer-encoding", "chunked")
        route = stream._route if stream._routed else None
        if route is not None and getattr(route, "mutates_headers", False):
            route.apply_response_headers(headers, info)
        stream.response_headers = headers
        if filters:
            for phase in cfg.chain.response_headers:
                await phase(stream, headers)
        if not self._body_done:
            keep_alive = False
        if keep_alive and self._closing:
            keep_alive = False
        if keep_alive and self.conn.drain.draining:  # (as ``_write_response``)
            self.stats.downstream_cx_drain_close.value += 1
            keep_alive = False
        if info.protocol == "HTTP/1.0" and keep_alive:
            # (measured with Envoy 1.40: a reply with a body says keep-alive back; one without
            # has no length the codec can frame HTTP/1.0 by, and closes)
            if reply.body:
                headers.set("connection", "keep-alive")
            else:
                keep_alive = False
        if not keep_alive:
            headers.set("connection", "close")
        if not reply.body and not head_only and "content-length" not in headers:
            headers.add("content-length", "0")  # (last, as Envoy's codec adds it)
        body = b"" if head_only else reply.body
        info.response_code = reply.status
        info.response_headers = headers
        info.bytes_sent = len(body)
        self._count_status(reply.status)
        head = _encode_head(headers, cfg.proper_case_headers, info.protocol)
        await self._send(head + body)
        return keep_alive

    async def _write_response(
        self, stream: HttpStream, resp: Response, head: h1.RequestHead, keep_alive: bool
    ) -> bool:
        """Send ``resp``; its body iterator is closed on every path (the router's returns its
        upstream connection to the pool there)."""
        if resp.tunnel is not None:
            await self._splice(stream, resp, resp.tunnel)
            return False
        body_iter = resp.body
        try:
            keep_alive = await self._send_response(stream, resp, head, keep_alive)
        except BaseException:
            if body_iter is not None and hasattr(body_iter, "aclose"):
                with trio.CancelScope(shield=True):
                    await body_iter.aclose()
            raise
        if body_iter is not None and hasattr(body_iter, "aclose"):
            await body_iter.aclose()
        return keep_alive

    async def _splice(self, stream: HttpStream, resp: Response, tunnel: Tunnel) -> None:
        """An upgraded connection (WebSocket's 101) or an open CONNECT tunnel (a 2xx): send
        the response head, then copy bytes both ways until either side closes; the stream
        idle timeout still applies. The connection ends with the tunnel; the client's close
        (or half-close, which Envoy takes as a close) counts as a client gone away."""
        cfg = self.cfg
        st = self.stats
        info = stream.info
        headers = resp.headers
        stream.response_headers = headers
        status = resp.status
        try:
            for phase in cfg.chain.response_headers:
                await phase(stream, headers)
            upgrade = headers.get("upgrade") or ""
            mutate_response_headers(
                headers,
                server_name=cfg.server_name,
                transformation=cfg.server_header_transformation,
                date=http_date(info.start_time),
            )
            if status == 101:
                headers.set("upgrade", upgrade)
                headers.set("connection", "upgrade")
            info.response_code = status
            info.response_headers = headers
            self._count_status(status)
            st.downstream_cx_upgrades_active.value += 1
            try:
                await self._send(
                    _encode_head(headers, cfg.proper_case_headers, info.protocol) + tunnel.initial
                )
                info.bytes_sent += len(tunnel.initial)
                info.first_downstream_tx = _now()
                pending = self.parser.trailing_data()
                up = tunnel.stream
                if pending:
                    await up.send_all(pending)
                    info.bytes_received += len(pending)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump_up, up, pumps.cancel_scope, info)
                    pumps.start_soon(self._pump_down, up, pumps.cancel_scope, info)
            finally:
                st.downstream_cx_upgrades_active.value -= 1
        finally:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
                tunnel.close()

    async def _pump_up(self, up: trio.abc.Stream, done: trio.CancelScope, info: Any) -> None:
        """Client → upstream."""
        while True:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:  # the client went away: as ``probe`` would find (``_peer_gone``)
                self._expired = "peer"
                self._scope.cancel()
                return
            self.rx += len(data)
            info.bytes_received += len(data)
            self._touch()
            try:
                await up.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
        done.cancel()

    async def _pump_down(self, up: trio.abc.Stream, done: trio.CancelScope, info: Any) -> None:
        """Upstream → client."""
        try:
            while True:
                data = await up.receive_some(READ_SIZE)
                if not data:
                    break
                info.bytes_sent += len(data)
                self._touch()
                await self._send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Closed):
            pass
        done.cancel()

    async def _send_response(
        self, stream: HttpStream, resp: Response, head: h1.RequestHead, keep_alive: bool
    ) -> bool:
        cfg = self.cfg
        chain = cfg.chain
        info = stream.info
        headers = resp.headers
        stream.response_headers = headers
        for phase in chain.response_headers:
            await phase(stream, headers)
        mutate_response_headers(
            headers,
            server_name=cfg.server_name,
            transformation=cfg.server_header_transformation,
            date=http_date(info.start_time),
        )
        status = int(headers.get(":status") or 502)
        info.response_code = status
        info.response_headers = headers
        if self._rq_deadline != math.inf:  # the response started: no request timeout (Envoy)
            self._rq_deadline = math.inf
            self._touch()
        if cfg.always_set_request_id_in_response or "x-envoy-force-trace" in stream.request_headers:
            # (Envoy answers a forced trace with the request id, so it can be found)
            rid = stream.request_headers.get("x-request-id")
            if rid:
                headers.set("x-request-id", rid)
        no_body = head.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        data_phases = chain.response_data
        body_iter = resp.body
        initial = resp.initial_body
        chunked = False
        if not no_body and (chain.response_length_changes or "content-length" not in headers):
            headers.remove("content-length")
            if head.version == "1.1":
                headers.add("transfer-encoding", "chunked")
                chunked = True
            else:
                keep_alive = False
        if not keep_alive or self._closing or self.conn.drain.draining:
            headers.set("connection", "close")
            if keep_alive and not self._closing:
                self.stats.downstream_cx_drain_close.value += 1
            keep_alive = False
        elif head.version == "1.0":
            headers.set("connection", "keep-alive")
        self._count_status(status)
        info.first_downstream_tx = _now()
        out = _encode_head(headers, cfg.proper_case_headers, info.protocol)
        sent = 0
        try:
            if no_body:
                await self._send(out)
                if body_iter is not None:
                    async for _ in body_iter:
                        pass
            elif not data_phases and not chunked:
                if initial:
                    out += initial
                    sent += len(initial)
                await self._send(out)
                if body_iter is not None:
                    async for chunk in body_iter:
                        sent += len(chunk)
                        self._touch()
                        await self._send(chunk)
            else:
                await self._send(out)
                sent = await self._stream_body(stream, resp, chunked)
        finally:
            info.bytes_sent = sent
        return keep_alive

    async def _stream_body(self, stream: HttpStream, resp: Response, chunked: bool) -> int:
        chain = self.cfg.chain
        sent = 0
        async for chunk in filtered_response_body(chain, stream, resp):
            sent += len(chunk)
            self._touch()
            await self._send(h1.encode_chunk(chunk) if chunked else chunk)
        trailers = resp.trailers
        if trailers is not None:
            stream.response_trailers = trailers
            for tphase in chain.response_trailers:
                await tphase(stream, trailers)
        if chunked:
            last = h1.encode_last_chunk(
                list(trailers) if trailers else [], self.cfg.proper_case_headers
            )
            await self._send(last)
        return sent

    def _log(self, stream: HttpStream) -> None:
        log_stream(self.cfg, stream)


class _RequestBody:
    """The request body as an async iterator of chunks: a class, not an async generator,
    so that mypyc can compile this module (setup.py)."""

    __slots__ = ("conn", "stream")

    def __init__(self, conn: Http1Connection, stream: HttpStream) -> None:
        self.conn = conn
        self.stream = stream

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if conn._continue_pending:
            conn._continue_pending = False
            await conn._send(_CONTINUE)
        info = self.stream.info
        while not conn._body_done:
            ev = await conn._next_event()
            if type(ev) is h1.Data:
                info.bytes_received += len(ev.data)
                conn._touch()
                return ev.data
            if type(ev) is h1.EndOfMessage:
                conn._body_done = True
                conn._rq_deadline = math.inf
                conn._touch()
                info.last_downstream_rx = _now()
                if ev.trailers:
                    self.stream.request_trailers = Headers(ev.trailers)
                break
            raise ProtocolError(f"unexpected event {ev!r} in a request body")  # parser contract
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """(Nothing to release: what is left of the body stays on the connection, which
        closes when a response ends before its request.)"""


def _encode_head(headers: Headers, proper: bool, protocol: str = "HTTP/1.1") -> bytes:
    """The response head, its status line in the request's HTTP version (as Envoy answers
    an HTTP/1.0 request with ``HTTP/1.0``)."""
    status = int(headers.get(":status") or 0)
    version = "1.0" if protocol == "HTTP/1.0" else "1.1"
    return h1.encode_response_head(status, "", list(headers.regular()), version, proper)
