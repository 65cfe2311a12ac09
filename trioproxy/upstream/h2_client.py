"""HTTP/2 to upstreams: a connection pool that multiplexes requests, and the per-request
exchange the router drives (the same methods as the HTTP/1.1 ``Exchange``).

Theory of operation: an ``H2Pool`` (one per cluster host, for clusters that ask for HTTP/2
with ``typed_extension_protocol_options`` / ``http2_protocol_options``) keeps a few
``H2Connection``s. ``acquire`` takes a stream slot on a connection that has one — fewer active
streams than the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS`` (unlimited until the server's
SETTINGS arrive, as Envoy's client assumes) and no GOAWAY — or opens a new connection if the
cluster's ``max_connections`` breaker allows, or waits for a slot: a stream ending, a
connection closing or the server's SETTINGS raising its limit wake the waiters. Each
connection has one reader task (in the cluster manager's nursery) that feeds its framer
(``h2_client_proto.H2Client``), which calls the connection back for each response head, DATA,
trailers or reset, handed to the stream they belong to; one writer task
(``h2_writer.FrameWriter``) sends what all streams queued in a scheduler tick with one write.
Flow control: DATA credit is returned to the upstream only when the router has taken the data
(back-pressure), and a request body waits for window updates before it sends, and for the
writer once the cluster's ``per_connection_buffer_limit_bytes`` is queued.

Header translation: the request's pseudo-headers become HTTP/2 ones (``host`` folds into
``:authority``), connection-specific headers are dropped, a request with CR, LF or NUL in a
value is not sent (``UPE``), and a response block breaking RFC 9113 §8.2-8.3 (CR, LF or NUL in
a value, connection-specific fields, bad pseudo-headers; ``h2_headers``) is, like any
malformed response, a connection error: GOAWAY PROTOCOL_ERROR, and every stream on the
connection fails with ``UPE`` (Envoy's default for invalid messaging). A flood (Envoy's
control-frame and empty-frame limits, ``h2_frames``) fails them too and closes the connection
without a GOAWAY, counted in ``cluster.<name>.http2.*`` as Envoy counts it. A GOAWAY lets
streams below its last stream id finish; later ones fail with ``UC`` and nothing sent (the
router may retry them on another connection), as do streams the upstream refused (RST_STREAM
REFUSED_STREAM).

Stats of a stream that ends without its response, counted by the reason it ended as Envoy's
HTTP/2 pool counts them (checked side by side with Envoy 1.40): the upstream reset it,
``upstream_rq_rx_reset``; we reset it (the route timeout, the client gone, a stream-level
protocol error) or a protocol error closed the connection, ``upstream_rq_tx_reset``; the
connection went away under it, ``upstream_rq_pending_failure_eject``; refused or past a
GOAWAY, none. A connection that goes away with streams still open counts
``upstream_cx_destroy_{local,remote}_with_active_rq`` as well (not one closed on a protocol
error: its streams were reset first).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trioproxy.errors import UpstreamError
from trioproxy.http import h2_headers
from trioproxy.http.h2_client_proto import (
    INTERNAL_ERROR,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Flood,
    H2Client,
    H2ClientHandler,
    H2ConnectionError,
    StreamClosed,
)
from trioproxy.http.h2_writer import FrameWriter, Wakeup
from trioproxy.http.headers import Headers
from trioproxy.stats import Counter, Scope
from trioproxy.upstream.circuit_breaker import CircuitBreakers
from trioproxy.upstream.config import H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, H2Keepalive
from trioproxy.upstream.connect import UpstreamStream, close_connection, open_connection
from trioproxy.upstream.host import Host
from trioproxy.upstream.stats import ClusterStats

if TYPE_CHECKING:
    from trioproxy.upstream.config import ClusterConfig

log = logging.getLogger(__name__)

READ_SIZE = 65536
#: How long a connection closed on a protocol error has to send its GOAWAY.
GOAWAY_FLUSH_S = 1.0


@attrs.define
class ResponseHead:
    status: int
    headers: list[tuple[str, str]]
    keep_alive: bool = True


class H2Connection(H2ClientHandler):
    """One upstream HTTP/2 connection and its streams."""

    def __init__(
        self,
        stream: UpstreamStream,
        host: Host,
        created: float,
        nursery: trio.Nursery,
        buffer_limit: int = 32 * 1024,
        *,
        limits: tuple[int, int, int] = (2**31 - 1, H2_STREAM_WINDOW, H2_CONNECTION_WINDOW),
        keepalive: H2Keepalive | None = None,
        http2_stats: Scope,
        stats: ClusterStats,
        on_capacity: Callable[[], None],
    ) -> None:
        self.stream = stream
        self.nursery = nursery
        self.host = host
        self.created = created
        #: ``limits``: the cluster's most streams per connection, and our receive windows
        self.stream_limit = limits[0]
        self.h2 = H2Client(self, initial_window_size=limits[1], connection_window_size=limits[2])
        self.exchanges: dict[int, H2Exchange] = {}
        self.active = 0
        self.requests = 0
        self.closed = False
        self.destroyed = False
        self.goaway = False
        #: how it ended: the upstream closed it, or streams were still open (stats only)
        self.remote_closed = False
        self.closed_with_active_rq = False
        self.idle_since = created
        self.writer = FrameWriter(
            self.h2, stream, high_water=buffer_limit, close=self.close, on_broken=self._broken
        )
        self._window_changed = trio.Event()
        #: ``cluster.<name>.http2.``: the floods that close a connection are counted there
        self._http2 = http2_stats
        #: the cluster's: ``upstream_cx_protocol_error`` and the stream-reset counters
        self.stats = stats
        #: the pool's: streams waiting for room look again
        self._on_capacity = on_capacity
        #: ``connection_keepalive``: the PING task's wake-up (a new stream on a connection
        #: idle past ``idle_interval``), the ack, the deadline of an unanswered PING (any
        #: bytes read extend it, as in Envoy), and when bytes were last read
        self.keepalive = keepalive
        self._ping_now = trio.Event()
        self._pong = trio.Event()
        self._pong_by = math.inf
        self.last_read = created

    @property
    def max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS), or the
        cluster's ``max_concurrent_streams`` if lower."""
        return min(self.h2.peer_max_concurrent_streams, self.stream_limit)

    def has_capacity(self) -> bool:
        return (
            not self.closed
            and not self.goaway
            and self.active < self.max_streams
            and self.h2.next_stream_id + 2 * self.active <= MAX_STREAM_ID
        )

    async def start(self) -> None:
        try:  # the preface and our SETTINGS (before the writer runs)
            await self.stream.send_all(self.h2.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError("connection termination", flag="UC") from exc

    def _broken(self) -> None:
        """The writer could not send: every stream fails, the reader stops."""
        self.remote_closed = not self.closed
        self._fail_all("connection termination")
        self.close()

    async def run(self) -> None:
        """The connection's reader and writer (and keepalive PINGs): run until the
        connection closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.writer.run)
            if self.keepalive is not None:
                nursery.start_soon(self._keepalive, self.keepalive)
            await self.read_loop()
            if self.h2.closed and not self.writer.done:
                # a protocol error: the GOAWAY saying so goes out before the close
                self.writer.close_when_sent()
                nursery.cancel_scope.deadline = trio.current_time() + GOAWAY_FLUSH_S
            else:
                nursery.cancel_scope.cancel()

    async def read_loop(self) -> None:
        writer = self.writer
        h = self.h2
        try:
            while not self.closed:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.remote_closed = not self.closed
                    break
                if self.keepalive is not None:
                    self.last_read = now = trio.current_time()
                    if self._pong_by != math.inf:  # a PING is out: anything read shows life
                        self._pong_by = now + self.keepalive.timeout
                try:
                    h.receive(bytes(data))
                except H2ConnectionError:
                    self._protocol_error()
                    break
                except h2_headers.MalformedHeaders:
                    h.close_connection(PROTOCOL_ERROR)
                    self._http2.counter("rx_messaging_error").value += 1
                    self._protocol_error()
                    break
                except Flood as flood:  # closed without a GOAWAY, as Envoy does
                    self._http2.counter(flood.stat).value += 1
                    self._protocol_error()
                    break
                except Exception:  # a fault of ours: it ends this connection, not the process
                    log.exception("upstream HTTP/2 %s: reading failed", self.host.address_str)
                    h.close_connection(INTERNAL_ERROR)
                    self._fail_all(
                        "protocol error", flag="UPE", counter=self.stats.upstream_rq_tx_reset
                    )
                    break
                writer.wake()
                await writer.wait_sent()  # an upstream that does not read is not read either
        finally:
            self._fail_all("connection termination")
            self.closed = True

    async def _keepalive(self, ka: H2Keepalive) -> None:
        """Envoy's HTTP/2 keepalive: a PING every ``interval`` (plus jitter) after the last
        answer, or the one ``ping_if_idle`` sent; nothing read ``timeout`` after it closes
        the connection (``http2.keepalive_timeout``), failing its streams."""
        while not self.closed:
            wait = math.inf
            if ka.interval > 0:
                wait = ka.interval * (1 + random.random() * ka.jitter / 100)
            with trio.move_on_after(wait):
                await self._ping_now.wait()
            self._ping_now = trio.Event()
            if self._pong_by == math.inf:  # (else ping_if_idle sent it)
                self._send_ping(ka)
            while not self._pong.is_set():
                with trio.move_on_at(self._pong_by):
                    await self._pong.wait()
                if not self._pong.is_set() and trio.current_time() >= self._pong_by:
                    log.debug("upstream HTTP/2 %s: keepalive timeout", self.host.address_str)
                    self._http2.counter("keepalive_timeout").value += 1
                    self.close()  # the reader ends and fails the streams
                    return
            self._pong_by = math.inf

    def _send_ping(self, ka: H2Keepalive) -> None:
        self._pong = trio.Event()
        self.h2.ping(int(time.time() * 1000).to_bytes(8, "big"))  # (as Envoy: ms)
        self.writer.wake()
        self._pong_by = trio.current_time() + ka.timeout

    def ping_if_idle(self, now: float) -> None:
        """A new stream is about to open: with ``connection_idle_interval``, a connection
        that has read nothing for that long sends a PING ahead of it (unless one is out),
        which the keepalive task then waits on."""
        ka = self.keepalive
        if (
            ka is not None
            and ka.idle_interval > 0
            and now - self.last_read >= ka.idle_interval
            and self._pong_by == math.inf
        ):
            self._send_ping(ka)
            self._ping_now.set()

    def on_ping_ack(self) -> None:
        self._pong.set()

    def _protocol_error(self) -> None:
        """The upstream broke HTTP/2 (we close the connection): its streams fail with
        ``UPE`` and count as reset by us, as Envoy counts a codec's protocol error."""
        stats = self.stats
        stats.upstream_cx_protocol_error.value += 1
        self._fail_all("protocol error", flag="UPE", counter=stats.upstream_rq_tx_reset)

    # -- what the framer tells (H2ClientHandler) ------------------------------------------------
    def on_informational(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        h2_headers.response_fields(fields)  # checked, then dropped (as Envoy does by default)

    def on_response(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        status, regular = h2_headers.response_fields(fields)
        ex = self.exchanges.get(sid)
        if ex is not None:
            ex._on_head(ResponseHead(status, regular))
            if end_stream:
                ex._on_end()

    def on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        ex = self.exchanges.get(sid)
        if ex is not None:
            ex._on_data(data, flow)
            if end_stream:
                ex._on_end()
        else:
            self.h2.acknowledge_received_data(flow, sid)

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        trailers = h2_headers.trailer_fields(fields)
        ex = self.exchanges.get(sid)
        if ex is not None:
            ex._on_trailers(trailers)
            ex._on_end()

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        ex = self.exchanges.get(sid)
        if ex is not None:
            if not remote:
                ex._on_reset(
                    "protocol error", False, flag="UPE", counter=self.stats.upstream_rq_tx_reset
                )
            elif code == REFUSED_STREAM:
                ex._on_reset("refused stream", True)
            else:
                ex._on_reset("remote reset", False, counter=self.stats.upstream_rq_rx_reset)

    def on_window(self, sid: int) -> None:
        self._window_changed.set()
        self._window_changed = trio.Event()

    def on_stream_limit(self) -> None:
        self._on_capacity()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        """RFC 9113 §6.8: the streams up to the last stream id may finish (a server draining
        after N requests does exactly this); the later ones were never processed."""
        self.goaway = True
        for stream_id, ex in list(self.exchanges.items()):
            if stream_id > last_stream_id:  # never processed: safe to send again elsewhere
                ex._on_reset("connection termination", True)

    def _fail_all(self, reason: str, flag: str = "UC", counter: Counter | None = None) -> None:
        """Fail every open stream. Without ``counter``, the connection went away under them:
        ``upstream_rq_pending_failure_eject`` each, and the connection ends with active
        requests. With one (a protocol error: we reset them first, then close), that counter
        each, and they are over before the connection is, as in Envoy."""
        if not self.exchanges:
            return
        if counter is None:
            counter = self.stats.upstream_rq_pending_failure_eject
            self.closed_with_active_rq = True
        for ex in list(self.exchanges.values()):
            ex._on_reset(reason, False, flag=flag, counter=counter)

    async def wait_window(self) -> None:
        await self._window_changed.wait()

    def close(self) -> None:
        self.closed = True
        self.stream.close()


class H2Exchange:
    """One request/response on an ``H2Connection`` (the HTTP/1.1 ``Exchange``'s methods)."""

    def __init__(self, conn: H2Connection, deadline: float = math.inf) -> None:
        self.conn = conn
        self.deadline = deadline
        self.stream_id = 0
        self.rx = 0
        self.tx = 0
        self.complete = False
        self.keep_alive = True
        self.trailers: Headers | None = None
        self.timed_out = False
        self._head: ResponseHead | None = None
        self._data: deque[tuple[bytes, int]] = deque()
        self._error: UpstreamError | None = None
        self._changed = Wakeup()  # the router task waits on it for the events below
        self._pump_scope: trio.CancelScope | None = None
        self._reset_sent = False

    # -- events from the reader task -------------------------------------------------------
    def _wake(self) -> None:
        self._changed.wake()

    def _on_head(self, head: ResponseHead) -> None:
        self._head = head
        self._wake()

    def _on_data(self, data: bytes, flow: int) -> None:
        self.rx += len(data)
        self._data.append((data, flow))
        self._wake()

    def _on_trailers(self, headers: list[tuple[str, str]]) -> None:
        self.trailers = Headers(headers)

    def _on_end(self) -> None:
        self.complete = True
        self._forget()
        self._wake()

    def _on_reset(
        self, reason: str, unprocessed: bool, flag: str = "UC", counter: Counter | None = None
    ) -> None:
        """The stream ended without its response; ``counter``: the reset stat it counts."""
        if self.complete:
            return
        if counter is not None and self._error is None:
            counter.value += 1
        self._error = UpstreamError(reason, flag=flag, unprocessed=unprocessed)
        self._forget()
        self._wake()

    def _forget(self) -> None:
        self.conn.exchanges.pop(self.stream_id, None)

    # -- what the router calls ---------------------------------------------------------------
    def expire(self) -> None:
        """The route timeout fired: reset the stream (``upstream_rq_tx_reset``, as Envoy) and
        fail what waits on it."""
        self.timed_out = True
        self._count_local_reset()
        self._reset_upstream()
        self._error = UpstreamError("upstream request timeout", flag="UT")
        self._forget()
        self._release_data()
        self._wake()

    def _count_local_reset(self) -> None:
        """``upstream_rq_tx_reset`` for a stream we give up on while it is open."""
        if self.stream_id and not self.complete and self._error is None:
            self.conn.stats.upstream_rq_tx_reset.value += 1

    def _reset_upstream(self) -> None:
        """RST_STREAM (CANCEL) a stream we give up on, so that it stops counting against the
        peer's SETTINGS_MAX_CONCURRENT_STREAMS on both sides; the frame goes out from a task
        of the connection (this is called from synchronous clean-up)."""
        conn = self.conn
        if self.complete or not self.stream_id or self._reset_sent or conn.closed:
            return
        self._reset_sent = True
        if conn.h2.cancel(self.stream_id):  # (not when the stream is already over)
            conn.writer.wake()

    async def send_request_head(
        self, method: str, headers: Headers, body: bytes = b"", *, end_stream: bool = False
    ) -> None:
        conn = self.conn
        h = conn.h2
        try:
            block = h2_headers.request_block(method, headers)
        except ValueError as exc:
            raise UpstreamError(f"protocol error: {exc}", flag="UPE") from exc
        if not _sendable(block):
            raise UpstreamError("protocol error: CR, LF or NUL in a header value", flag="UPE")
        if conn.closed or conn.goaway or not h.can_open():
            # the connection went away between acquire and now: nothing was sent
            raise UpstreamError("connection termination", flag="UC", unprocessed=True)
        self.stream_id = h.send_request(
            block, end_stream=end_stream and not body, head=method == "HEAD"
        )
        conn.exchanges[self.stream_id] = self
        conn.writer.wake()
        if body:
            await self.send(body)
            if end_stream:
                await self.end_body(None)

    def _stream_over(self) -> None:
        """A send found the stream over: fine once the response is complete (the upstream
        answered before taking the whole request), an error otherwise."""
        if self._error is not None:
            raise self._error
        if not self.complete:
            raise UpstreamError("connection termination", flag="UC")

    async def send(self, data: bytes) -> None:
        conn = self.conn
        h = conn.h2
        writer = conn.writer
        view = memoryview(data)
        while view:
            await writer.wait_room()
            if self._error is not None:
                raise self._error
            try:
                window = min(h.local_flow_control_window(self.stream_id), h.max_outbound_frame_size)
            except StreamClosed:
                self._stream_over()
                return
            if window <= 0:
                await conn.wait_window()
                continue
            chunk = view[:window]
            h.send_data(self.stream_id, chunk.tobytes())
            self.tx += len(chunk)
            view = view[len(chunk) :]
            writer.queued(len(chunk))

    async def send_body(self, chunk: bytes, chunked: bool) -> None:
        await self.send(chunk)

    async def end_body(self, trailers: Headers | None, chunked: bool = False) -> None:
        h = self.conn.h2
        try:
            if trailers:
                block = h2_headers.trailers_block(trailers)
                if not _sendable(block):
                    raise UpstreamError(
                        "protocol error: CR, LF or NUL in a trailer value", flag="UPE"
                    )
                h.send_headers(self.stream_id, block, end_stream=True)
            else:
                h.end_stream(self.stream_id)
        except StreamClosed:
            self._stream_over()
            return
        self.conn.writer.wake()
        if self._error is not None:
            raise self._error

    def stream_body(
        self, body: AsyncIterator[bytes], trailers: Callable[[], Headers | None]
    ) -> None:
        """Send the request body from its own task (in the connection's nursery), so that it
        keeps flowing while the response streams back (gRPC bidirectional streaming).
        ``cancel_body`` stops it; a failing body resets the stream."""
        self._pump_scope = trio.CancelScope()
        self.conn.nursery.start_soon(
            self._pump, body, trailers, self._pump_scope, name="trioproxy upstream h2 body"
        )

    async def _pump(
        self,
        body: AsyncIterator[bytes],
        trailers: Callable[[], Headers | None],
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            try:
                async for chunk in body:
                    await self.send(chunk)
                await self.end_body(trailers())
            except Exception as exc:  # the client went away or broke its body: reset
                conn = self.conn
                if (
                    not self.complete
                    and self.stream_id
                    and not conn.closed
                    and conn.h2.cancel(self.stream_id)
                ):
                    conn.writer.wake()
                self._on_reset(
                    f"request body failed: {exc}", False, counter=conn.stats.upstream_rq_tx_reset
                )

    def cancel_body(self) -> None:
        """The router is done with this exchange: stop the body task, and reset the stream
        if the response did not complete (a client that went away, an error), or if it did
        while the request was still open on our side (RFC 9113 §8.1: the request's end
        will not come, and the stream must stop counting against the server's limit).
        Response bytes received and never taken are credited back to the connection."""
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        conn = self.conn
        if not self.complete and self._error is None:
            self._count_local_reset()
            self._reset_upstream()
            self._error = UpstreamError("request abandoned", flag="UC")
            self._forget()
        elif (
            self.complete and self.stream_id and not conn.closed and conn.h2.cancel(self.stream_id)
        ):
            conn.writer.wake()
        self._release_data()

    def _release_data(self) -> None:
        """Credit for the DATA received and never taken; without it, each abandoned response
        would shrink the connection's window for good."""
        flow = 0
        while self._data:
            flow += self._data.popleft()[1]
        if flow and not self.conn.closed:
            self.conn.h2.acknowledge_received_data(flow, self.stream_id)
            self.conn.writer.wake()

    async def read_response_head(self) -> tuple[ResponseHead, bytes]:
        while self._head is None or self._head.status < 200:
            if self._error is not None:
                raise self._error
            await self._changed.wait()
        # Body bytes already here go with the head (all of it when the stream has ended,
        # which is how the router tells a complete response).
        initial = []
        flow = 0
        while self._data:
            data, n = self._data.popleft()
            initial.append(data)
            flow += n
        if flow and not self.conn.closed:
            self.conn.h2.acknowledge_received_data(flow, self.stream_id)
            self.conn.writer.wake()
        return self._head, b"".join(initial)

    def iter_body(self) -> _ResponseBody:
        """The rest of the response body; each chunk's credit goes back to the upstream only
        when the chunk is taken (back-pressure)."""
        return _ResponseBody(self)

    @property
    def reusable(self) -> bool:
        return True  # a finished stream never spoils its connection


def _sendable(block: list[Any]) -> bool:
    """No CR, LF or NUL in any value (RFC 9113 §8.2.1): one pass over the values joined."""
    values = b"\n".join([field[1] for field in block])
    return b"\r" not in values and b"\x00" not in values and values.count(b"\n") == len(block) - 1


class H2Pool:
    """The HTTP/2 pool of one (cluster, host)."""

    def __init__(
        self,
        host: Host,
        config: ClusterConfig,
        stats: ClusterStats,
        breakers: CircuitBreakers,
        nursery: trio.Nursery,
    ) -> None:
        self.host = host
        self.config = config
        self.stats = stats
        self.breakers = breakers
        self.nursery = nursery
        self.connections: list[H2Connection] = []
        self._slot_freed = trio.Event()
        self._closed = False
        self._connecting = 0
        self._http2 = stats.scope.scope("http2.")

    def has_idle(self) -> bool:
        return any(c.has_capacity() for c in self.connections)

    async def acquire(self, checked: bool = False) -> H2Connection:
        """A connection with room for a stream. (``checked`` is the HTTP/1.1 pool's: an
        HTTP/2 connection's reader sees its end at once.)"""
        if self._closed:
            raise UpstreamError("connection pool closed", flag="UF")
        stats = self.stats
        limit = self.config.max_connection_duration
        while True:
            if limit is not None:
                self._retire_old(trio.current_time(), limit)
            for conn in self.connections:
                if conn.has_capacity():
                    conn.active += 1
                    conn.requests += 1
                    if conn.keepalive is not None:
                        conn.ping_if_idle(trio.current_time())
                    return conn
            if self._connecting == 0 and self.breakers.connections.can_create():
                try:
                    return await self._connect()
                except UpstreamError:
                    # failed before the request had a stream: counted as Envoy counts the
                    # pending requests of a connection that failed
                    stats.upstream_rq_pending_failure_eject.value += 1
                    raise
            if not self.breakers.connections.can_create():
                stats.upstream_cx_overflow.value += 1
            pending = self.breakers.pending
            if not pending.can_create():
                stats.upstream_rq_pending_overflow.value += 1
                raise UpstreamError("pending requests overflow", flag="UO")
            pending.inc()
            stats.upstream_rq_pending_total.value += 1
            stats.upstream_rq_pending_active.value += 1
            try:
                await self._slot_freed.wait()
            finally:
                pending.dec()
                stats.upstream_rq_pending_active.value -= 1

    async def _connect(self) -> H2Connection:
        self._connecting += 1
        self.stats.upstream_cx_http2_total.value += 1
        try:
            stream, created = await open_connection(
                self.host, self.stats, self.breakers, self.config
            )
            return await self.adopt(stream, created, counted=True)
        finally:
            # the waiters look again once the connection is in ``connections`` (or failed):
            # woken sooner, one of them would open a second connection
            self._connecting -= 1
            self._wake()

    async def adopt(
        self, stream: UpstreamStream, created: float, *, counted: bool = False
    ) -> H2Connection:
        """Make ``stream`` one of this pool's connections, with one stream slot taken
        (``AutoPool`` hands over a connection whose ALPN chose h2)."""
        if not counted:
            self.stats.upstream_cx_http2_total.value += 1
        conn = H2Connection(
            stream,
            self.host,
            created,
            self.nursery,
            self.config.per_connection_buffer_limit_bytes,
            limits=(
                self.config.http2_max_concurrent_streams,
                self.config.http2_stream_window,
                self.config.http2_connection_window,
            ),
            keepalive=self.config.http2_keepalive,
            http2_stats=self._http2,
            stats=self.stats,
            on_capacity=self._wake,
        )
        try:
            await conn.start()
        except UpstreamError:
            self._destroy(conn, remote=True)
            raise
        self.connections.append(conn)
        self.nursery.start_soon(self._run, conn)
        conn.active += 1
        conn.requests += 1
        return conn

    async def _run(self, conn: H2Connection) -> None:
        try:
            await conn.run()
        finally:
            self._destroy(conn, remote=conn.remote_closed)

    def _destroy(self, conn: H2Connection, *, remote: bool) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        if not conn.destroyed:
            conn.destroyed = True
            close_connection(
                conn.stream,
                conn.created,
                self.host,
                self.stats,
                self.breakers,
                remote=remote,
                active_rq=conn.closed_with_active_rq,
            )
        conn.closed = True
        self._wake()

    def _wake(self) -> None:
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    def exchange(self, conn: H2Connection, deadline: float) -> H2Exchange:
        return H2Exchange(conn, deadline)

    def release(self, conn: H2Connection, reusable: bool, *, remote: bool = False) -> None:
        conn.active -= 1
        if conn.active == 0:
            conn.idle_since = trio.current_time()
            if self._closed or conn.goaway or conn.h2.next_stream_id > MAX_STREAM_ID:
                conn.close()  # (out of stream ids, it would hold a connection slot for ever)
        self._wake()

    def _retire_old(self, now: float, limit: float) -> None:
        """``max_connection_duration``: an older connection takes no new stream (counted once)
        and closes when its last one ends (``release``)."""
        for conn in list(self.connections):
            if not conn.goaway and now - conn.created >= limit:
                self.stats.upstream_cx_max_duration_reached.value += 1
                conn.goaway = True  # (no new streams, as after the upstream's GOAWAY)
                if conn.active == 0:
                    conn.close()

    def sweep(self, now: float | None = None) -> None:
        now = trio.current_time() if now is None else now
        limit = self.config.max_connection_duration
        if limit is not None:
            self._retire_old(now, limit)
        idle = self.config.idle_timeout
        if idle is None:
            return
        for conn in list(self.connections):
            if conn.active == 0 and now - conn.idle_since >= idle:
                self.stats.upstream_cx_idle_timeout.value += 1
                conn.close()

    def drain(self) -> None:
        self._closed = True
        for conn in list(self.connections):
            if conn.active == 0:
                conn.close()
        self._wake()

    async def aclose(self) -> None:
        self.drain()
        await trio.lowlevel.checkpoint()


class AutoPool:
    """``auto_config``: the first connection's ALPN decides whether this host gets an
    ``H2Pool`` or an ``Http1Pool`` (remembered, as Envoy's mixed pool does); the chosen pool
    serves from then on."""

    def __init__(
        self,
        host: Host,
        config: ClusterConfig,
        stats: ClusterStats,
        breakers: CircuitBreakers,
        nursery: trio.Nursery,
        http1: Any,
    ) -> None:
        self.host = host
        self.config = config
        self.stats = stats
        self.breakers = breakers
        self.nursery = nursery
        self._http1 = http1  # the Http1Pool to use if ALPN says http/1.1
        self.chosen: Any = None
        self._choosing = trio.Lock()

    def has_idle(self) -> bool:
        return self.chosen is not None and bool(self.chosen.has_idle())

    async def acquire(self, checked: bool = False) -> Any:
        if self.chosen is not None:
            return await self.chosen.acquire(checked)
        async with self._choosing:
            if self.chosen is not None:
                return await self.chosen.acquire(checked)
            try:
                stream, created = await open_connection(
                    self.host, self.stats, self.breakers, self.config
                )
            except UpstreamError:
                self.stats.upstream_rq_pending_failure_eject.value += 1  # (as the pools do)
                raise
            alpn = getattr(stream, "selected_alpn_protocol", lambda: None)()
            if alpn == "h2":
                h2pool = H2Pool(self.host, self.config, self.stats, self.breakers, self.nursery)
                self.chosen = h2pool
                return await h2pool.adopt(stream, created)
            self.chosen = self._http1
            return self._http1.adopt(stream, created)

    def exchange(self, conn: Any, deadline: float) -> Any:
        assert self.chosen is not None
        return self.chosen.exchange(conn, deadline)

    def release(self, conn: Any, reusable: bool, *, remote: bool = False) -> None:
        assert self.chosen is not None
        self.chosen.release(conn, reusable, remote=remote)

    def sweep(self, now: float | None = None) -> None:
        if self.chosen is not None:
            self.chosen.sweep(now)

    def drain(self) -> None:
        if self.chosen is not None:
            self.chosen.drain()
        else:
            self._http1.drain()

    async def aclose(self) -> None:
        self.drain()
        await trio.lowlevel.checkpoint()


class _ResponseBody:
    """``H2Exchange.iter_body``: a class, not an async generator, so that mypyc can compile
    this module (setup.py)."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: H2Exchange) -> None:
        self.exchange = exchange

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        ex = self.exchange
        conn = ex.conn
        while True:
            while ex._data:
                data, flow = ex._data.popleft()
                if flow and not conn.closed:
                    # the credit goes back only now that the data is taken: back-pressure
                    conn.h2.acknowledge_received_data(flow, ex.stream_id)
                    conn.writer.wake()
                if data:
                    return data
            error = ex._error
            if error is not None:
                raise error
            if ex.complete:
                raise StopAsyncIteration
            await ex._changed.wait()

    async def aclose(self) -> None:
        """(Nothing to release: the router settles the exchange.)"""
