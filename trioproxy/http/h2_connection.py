"""HTTP/2 downstream: one connection, its streams served by worker tasks (``h2_server`` does
the framing).

Theory of operation
-------------------
``Http2Connection.run`` owns the socket. Every task only queues frames in the connection's
``H2Server``; one writer task (``h2_writer.FrameWriter``) sends what all streams queued in a
scheduler tick with one write, and holds back tasks that queue DATA faster than the client
reads. The reader feeds bytes to the ``H2Server``, which calls back this connection's
``H2Handler`` methods: a new request goes to a stream worker waiting for one, or starts a
new worker in the connection's nursery (up to ``IDLE_STREAM_WORKERS`` wait between streams);
request DATA goes to that stream's channel and its flow-control credit is returned only when
the stream's consumer (the router, forwarding upstream) takes the chunk — so a slow upstream
pushes back on the client instead of filling memory. A worker runs the same filter chain as
HTTP/1.1 for its stream (request phases, the router, response phases, access log) and sends
its response within the peer's windows, waiting for WINDOW_UPDATE when they are spent.
RST_STREAM from the client cancels that stream's scope, and whatever its filters awaited with
it; the connection lives on.

Graceful close, as Envoy 1.40's connection manager does it (checked side by side): a GOAWAY
announcing it (NO_ERROR, last stream id 2^31-1: streams the client opens until the final one
are still served), ``drain_timeout`` (5 s) later the final GOAWAY (the last stream id seen;
a stream opened after it is refused with REFUSED_STREAM, where Envoy ignores it), and once no
stream is left, the close: when the client closes, or ``delayed_close_timeout`` (1 s) later,
``downstream_cx_delayed_close_timeout``. The final GOAWAY counts ``http2.goaway_sent``. All
three timers are the watchdog's.

The connection idle timeout starts it, and so does a listener update or removal,
``downstream_cx_drain_close`` (Envoy starts it at the connection's next response; here every
connection starts at once). A connection still open when the listener's drain time ends is
closed then: with the defaults (5 s each), usually before its final GOAWAY. A shutdown sends
the final GOAWAY at once: streams in flight finish, and an idle connection closes as idle
HTTP/1.1 ones do.

Limits (../shared/DEFAULTS.md): ``max_concurrent_streams`` 100, stream window 64 KiB,
connection window 1 MiB, header list ``max_request_headers_kb``, and Envoy's flood
protections, each closing the connection and counted in ``http2.*``:

- control frames queued for the client (PING and SETTINGS acknowledgements, resets) beyond
  ``max_outbound_control_frames`` (1 000) in one read: ``outbound_control_flood``. The reader
  does not read again while the writer is stuck on a client that does not read, and DATA waits
  once the connection's buffer limit is queued, so ``max_outbound_frames`` (10 000) cannot be
  reached;
- more than ``max_consecutive_inbound_frames_with_empty_payload`` (1) DATA, HEADERS or
  CONTINUATION frames in a row without payload or END_STREAM: ``inbound_empty_frames_flood``;
- rapid reset: once 500 streams have closed on a connection, more than half of them reset by
  the client within a second of opening: GOAWAY and close,
  ``downstream_rq_too_many_premature_resets``.

Conformance: tests/h2spec ports h2spec's server cases (its numbering), over h2c and TLS.

Timeouts, on the watchdog (``trioproxy.watchdog``, 50 ms resolution) as on HTTP/1.1, and as
Envoy 1.40 answers them (checked side by side):

- ``stream_idle_timeout``: no request DATA received and no response HEADERS or DATA sent on a
  stream for that long. Before the response started: 504 "stream timeout" when the request was
  whole, 408 when it was not; after: RST_STREAM INTERNAL_ERROR. ``SI`` either way,
  ``downstream_rq_idle_timeout``.
- ``request_timeout``: the request not whole that long after its HEADERS, and no response
  started: 408 "request timeout", ``downstream_rq_timeout``.
- ``common_http_protocol_options.idle_timeout``: no stream open for that long: the graceful
  close above, ``downstream_cx_idle_timeout``. The timeout runs on while draining, and firing
  again then only counts (as in Envoy).
- ``common_http_protocol_options.max_connection_duration``: the same graceful close, once,
  ``downstream_cx_max_duration_reached``.

Not yet: extended CONNECT, the priority and WINDOW_UPDATE flood counters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator

import trio

from trioproxy import watchdog
from trioproxy.errors import ProtocolError
from trioproxy.http import h1, h2_headers
from trioproxy.http.conn_manager_config import HcmConfig, ListenerHttpStats
from trioproxy.http.filter import HttpStream, LocalReply, Response
from trioproxy.http.h2_server import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Flood,
    H2ConnectionError,
    H2Handler,
    H2Server,
    StreamClosed,
)
from trioproxy.http.h2_writer import FrameWriter
from trioproxy.http.headers import Headers
from trioproxy.http.local_reply import (
    FILTER_ERROR,
    NO_ROUTE,
    for_request,
    http_date,
    reply_headers,
)
from trioproxy.http.request_head import request_headers
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
_NO_BODY_STATUS = (204, 304)

MAX_OUTBOUND_CONTROL_FRAMES = 1000
MAX_CONSECUTIVE_EMPTY_FRAMES = 1
PREMATURE_RESET_WINDOW = 1.0  # seconds
PREMATURE_RESET_MIN_STREAMS = 500
#: How long the last frames (a GOAWAY) may take to go out before the connection closes anyway
#: (Envoy's ``delayed_close_timeout`` default).
FINAL_FLUSH_TIMEOUT = 1.0
#: The name of every stream worker's task (trio's default is built per task: repr() of the
#: method).
_STREAM_TASK = "trioproxy.http.h2_connection stream"
#: How many stream workers a connection keeps waiting for its next streams (``_next_stream``):
#: a worker that finishes a stream when that many already wait ends instead.
IDLE_STREAM_WORKERS = 16
_NO_PSEUDO: dict[str, str] = {}
_NO_FIELDS: list[tuple[str, str]] = []


class _Stream:
    """What the reader knows about one stream."""

    __slots__ = (
        "body",
        "body_in",
        "cancelled",
        "deadline",
        "ended",
        "expired",
        "head_only",
        "http",
        "no_body",
        "opened",
        "protocol_error",
        "pseudo",
        "regular",
        "reject",
        "rq_deadline",
        "scope",
        "sid",
        "trailers",
        "window",
    )

    def __init__(
        self, sid: int, no_body: bool, pseudo: dict[str, str], regular: list[tuple[str, str]]
    ) -> None:
        self.sid = sid
        #: the request's pseudo-headers and regular fields, until the stream starts
        self.pseudo = pseudo
        self.regular = regular
        #: the watchdog's: the stream idle timeout's, or the request timeout's if sooner
        self.deadline = math.inf
        #: ``request_timeout``'s, while the request is not whole
        self.rq_deadline = math.inf
        #: "idle" or "request" once a timeout cancelled the stream
        self.expired: str | None = None
        self.opened = trio.current_time()
        #: the request body as (data, flow-controlled length), unless END_STREAM came on the
        #: request's HEADERS (``no_body``: no channel at all)
        self.body_in: trio.MemorySendChannel[tuple[bytes, int]] | None = None
        self.body: trio.MemoryReceiveChannel[tuple[bytes, int]] | None = None
        if not no_body:
            self.body_in, self.body = trio.open_memory_channel[tuple[bytes, int]](math.inf)
        self.ended = self.no_body = no_body
        self.trailers: list[tuple[str, str]] | None = None
        #: the cancel scope of the worker serving the stream (``Http2Connection._serve``),
        #: once one does; ``cancelled`` when the stream was cancelled (even before that)
        self.scope: trio.CancelScope | None = None
        self.cancelled = False
        #: reset by this side for a protocol error in the client's frames
        self.protocol_error = False
        #: set when the peer grants more send window (made when a send waits for it)
        self.window: trio.Event | None = None
        #: once started (``Http2Connection._start``): the stream as filters see it, whether
        #: it is a HEAD request, and the reply it gets without reaching the filters, if any
        self.http: HttpStream | None = None
        self.head_only = False
        self.reject: LocalReply | None = None

    def end_body(self) -> None:
        if self.body_in is not None:
            self.body_in.close()

    def cancel(self) -> None:
        """End what the stream awaits (its worker answers it, ``Http2Connection._serve``);
        nothing once it is over. The stream's ``HttpStream.cancel_scope``."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    @property
    def cancel_called(self) -> bool:
        return self.cancelled

    def expire(self) -> None:
        """A timeout fired (the watchdog): cancel what the stream awaits; its worker
        answers."""
        self.expired = "request" if self.rq_deadline <= watchdog.now() else "idle"
        self.cancel()

    def touch(self, idle: float | None) -> None:
        """Stream activity: push the stream idle timeout back."""
        self.deadline = min(
            watchdog.now() + idle if idle is not None else math.inf, self.rq_deadline
        )

    def request_ended(self, idle: float | None) -> None:
        """The request is whole: the request timeout no longer applies."""
        self.ended = True
        self.rq_deadline = math.inf
        self.touch(idle)

    def window_changed(self) -> None:
        if self.window is not None:
            self.window.set()


class _Worker:
    """A stream worker waiting for its next stream (``Http2Connection._next_stream``)."""

    __slots__ = ("task", "stream")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.stream: _Stream | None = None


class Http2Connection(H2Handler):
    def __init__(
        self,
        conn: DownstreamConnection,
        cfg: HcmConfig,
        lstats: ListenerHttpStats,
        preface: bytes = b"",
    ) -> None:
        self.conn = conn
        self.cfg = cfg
        self.stats = cfg.stats
        self.lstats = lstats
        self.stream = conn.stream
        self._preface = preface
        opts = cfg.http2
        self.h2 = H2Server(
            self,
            max_concurrent_streams=opts.max_concurrent_streams,
            initial_window_size=opts.initial_stream_window_size,
            connection_window_size=opts.initial_connection_window_size,
            max_header_list_size=cfg.max_request_headers_bytes,
            max_control_frames=MAX_OUTBOUND_CONTROL_FRAMES,
            max_empty_frames=MAX_CONSECUTIVE_EMPTY_FRAMES,
        )
        self._streams: dict[int, _Stream] = {}
        self._writer = FrameWriter(
            self.h2,
            self.stream,
            high_water=conn.buffer_limit,
            close=self._stop,
            on_broken=self._writer_broken,
        )
        #: the client closed or reset the connection: streams still running end as ``DC``
        self._client_gone = False
        #: The graceful close, as Envoy's connection manager does it: ``_draining`` once the
        #: GOAWAY announcing it is out (new streams still served), ``_closing`` once the final
        #: GOAWAY is (``_goaway_sent`` too: no new streams), ``_lingering`` once no stream is
        #: left either: the client's bytes are no longer read, and we close when it does or
        #: ``delayed_close_timeout`` later (at once when it is 0).
        self._draining = False
        self._closing = False
        self._lingering = False
        #: the server is shutting down: once the final GOAWAY is out and no stream is left,
        #: close without waiting for the client (as idle HTTP/1.1 connections are closed)
        self._shutdown = False
        #: Any GOAWAY that ends the connection is out (the final one, or an error's).
        self._goaway_sent = False
        #: The client's GOAWAY: no new streams, but those open finish (RFC 9113 §6.8).
        self._peer_goaway = False
        self._scheme = "https" if conn.info.tls else "http"
        remote, local = conn.info.remote_address, conn.info.local_address
        self._remote = address_string(remote)
        self._local = address_string(local)
        self._nursery: trio.Nursery | None = None
        #: stream workers waiting for a stream, the last one to finish last
        self._idle_workers: list[_Worker] = []
        self._filter_error = cfg.scope.counter("downstream_rq_filter_error")
        self._http2 = cfg.scope.scope("http2.")
        self._closed_streams = 0
        self._premature_resets = 0
        self._dog = watchdog.current()
        #: The connection's timers, on trio's clock (``inf``: not armed): the idle timeout
        #: (no stream open), the final GOAWAY (``drain_timeout`` after the announcing one) and
        #: the delayed close. The watchdog sees the soonest as ``deadline`` and calls
        #: ``expire``; the connection is registered with it from start to end.
        self._idle_at = math.inf
        self._drain_at = math.inf
        self._close_at = math.inf
        #: ``max_connection_duration`` (as Envoy: the same graceful close as the idle timeout)
        self._max_duration_at = math.inf
        #: ``connection_keepalive``: when the next PING goes out, and by when something must
        #: come back after it (any frame counts, as in Envoy)
        self._ping_at = math.inf
        self._pong_by = math.inf
        self.deadline = math.inf
        self._delayed_close_timeout = cfg.scope.counter("downstream_cx_delayed_close_timeout")

    # ------------------------------------------------------------------ I/O

    def _stop(self) -> None:
        """The last frames are out: stop reading, end the streams (the listener closes)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _writer_broken(self) -> None:
        self._client_gone = True
        self._stop()

    def _idle_from_now(self) -> None:
        """No stream is open: the connection idle timeout starts. (It runs while draining
        too, as in Envoy, where firing then only counts ``downstream_cx_idle_timeout``.)"""
        timeout = self.cfg.idle_timeout
        self._idle_at = (
            math.inf if timeout is None or self._goaway_sent else watchdog.now() + timeout
        )
        self._rearm()

    def _rearm(self) -> None:
        """The watchdog's ``deadline``: the soonest of the connection's timers."""
        self.deadline = min(
            self._idle_at,
            self._drain_at,
            self._close_at,
            self._max_duration_at,
            self._ping_at,
            self._pong_by,
        )

    def _next_ping(self, now: float) -> None:
        """Arm the next keepalive PING: the interval plus Envoy's jitter (up to
        ``keepalive_jitter`` percent of it). The caller updates ``deadline``."""
        h2opts = self.cfg.http2
        interval = h2opts.keepalive_interval
        if interval > 0 and h2opts.keepalive_timeout > 0:
            jitter = interval * h2opts.keepalive_jitter / 100
            self._ping_at = now + interval + (random.random() * jitter if jitter > 0 else 0.0)

    def on_ping_ack(self) -> None:
        if self._pong_by != math.inf:
            self._pong_by = math.inf
            self._next_ping(watchdog.now())
            self._rearm()

    def expire(self) -> None:
        """A connection timer fired (the watchdog's): the idle timeout starts the graceful
        close, the drain timeout sends the final GOAWAY, the delayed close closes; a
        keepalive PING goes out, or one unanswered closes the connection."""
        now = watchdog.now()
        if self._pong_by <= now:  # nothing from the client since our PING
            self._pong_by = self._ping_at = math.inf
            self._http2.counter("keepalive_timeout").value += 1
            self._stop()
        if self._ping_at <= now:
            self._ping_at = math.inf
            self.h2.ping(int(time.time() * 1000).to_bytes(8, "big"))  # (as Envoy: ms)
            self._writer.wake()
            self._pong_by = now + self.cfg.http2.keepalive_timeout
        if self._close_at <= now:  # the client did not close after the final GOAWAY
            self._close_at = math.inf
            self._delayed_close_timeout.value += 1
            self._stop()
        if self._idle_at <= now:
            self._idle_at = math.inf
            self.stats.downstream_cx_idle_timeout.value += 1
            if not self._draining:
                self._announce()
        if self._max_duration_at <= now:
            self._max_duration_at = math.inf
            self.stats.downstream_cx_max_duration_reached.value += 1
            if not self._draining:
                self._announce()
        if self._drain_at <= now:
            self._final_goaway()
        self._rearm()
        self._dog.add(self)  # (the watchdog let go of it to call this)

    def _announce(self) -> None:
        """Start the graceful close (Envoy's drain sequence): a GOAWAY with the highest stream
        id, so that a stream the client opens meanwhile is still served; the final GOAWAY
        follows ``drain_timeout`` later. The caller updates ``deadline``."""
        if self._goaway_sent or self.h2.closed:
            return
        self._draining = True
        self.h2.shutdown_notice()
        self._writer.wake()
        if self.cfg.drain_timeout <= 0:
            self._final_goaway()  # together, as Envoy sends them (not a watchdog tick apart)
        else:
            self._drain_at = watchdog.now() + self.cfg.drain_timeout

    def _final_goaway(self) -> None:
        """The final GOAWAY (NO_ERROR, the last stream id seen): streams open finish, new ones
        are refused; then the delayed close. The caller updates ``deadline``."""
        self._drain_at = self._idle_at = self._max_duration_at = math.inf
        if self._goaway_sent or self.h2.closed:
            return
        self._goaway_sent = self._closing = True
        self._http2.counter("goaway_sent").value += 1
        self.h2.goaway()
        self._writer.wake()
        self._close_if_done()

    def _close_if_done(self) -> None:
        """After a GOAWAY (ours or the client's), once the last stream is over: after our
        final GOAWAY, wait for the client's close (``delayed_close_timeout`` at most); after
        the client's GOAWAY or an error's, close once everything is sent."""
        if self._streams:
            return
        if self._closing and not self._shutdown:
            delay = self.cfg.delayed_close_timeout
            if delay is None:  # (0: close once the final GOAWAY is out)
                self._writer.close_when_sent()
            elif not self._lingering:
                self._lingering = True
                self._close_at = watchdog.now() + delay
                self._rearm()
        elif self._goaway_sent or self._peer_goaway:
            self._writer.close_when_sent()

    async def run(self) -> None:
        st = self.stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_http2_total.value += 1
        st.downstream_cx_active.value += 1
        st.downstream_cx_http2_active.value += 1
        if self.conn.info.tls:
            st.downstream_cx_ssl_total.value += 1
            st.downstream_cx_ssl_active.value += 1
        writer = self._writer
        if self.cfg.max_connection_duration is not None:
            self._max_duration_at = watchdog.now() + self.cfg.max_connection_duration
        self._next_ping(watchdog.now())
        self._idle_from_now()
        self._dog.add(self)
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(writer.run)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._goaway_on_drain)
                    if not self._preface or self._feed(self._preface):
                        await self._read_loop()
                    nursery.cancel_scope.cancel()
                # the streams are over: what they left goes out, then the connection closes
                writer.close_when_sent()
                outer.cancel_scope.deadline = trio.current_time() + FINAL_FLUSH_TIMEOUT
        finally:
            self._dog.discard(self)
            st.downstream_cx_destroy.value += 1
            # (who closed first: the client, or this side — a timeout, GOAWAY's delayed close,
            # a protocol error or flood)
            if self._client_gone:
                st.downstream_cx_destroy_remote.value += 1
            else:
                st.downstream_cx_destroy_local.value += 1
            st.downstream_cx_active.value -= 1
            st.downstream_cx_http2_active.value -= 1
            if self.conn.info.tls:
                st.downstream_cx_ssl_active.value -= 1

    async def _read_loop(self) -> None:
        writer = self._writer
        while True:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except trio.BrokenResourceError:
                data = b""
            except trio.ClosedResourceError:  # closed here (a flood)
                return
            if not data:
                self._client_gone = True
                return
            if self._pong_by != math.inf:  # a PING is out: anything read shows life
                self._pong_by = watchdog.now() + self.cfg.http2.keepalive_timeout
                self._rearm()
            if self._lingering:
                continue  # (closing: only the client's close matters now, as in Envoy)
            if not self._feed(bytes(data)):
                return
            if not self._streams and (
                self._peer_goaway or (self._goaway_sent and not self._closing)
            ):
                return
            # a client that does not read what we answer is not read either
            await writer.wait_sent()

    async def _goaway_on_drain(self) -> None:
        """A listener update or removal starts the graceful close, as Envoy's drain does
        (there at the connection's next response, here at once). A shutdown sends the final
        GOAWAY at once: the streams in flight finish, and an idle connection closes now, as
        idle HTTP/1.1 ones do."""
        drain = self.conn.drain
        await drain.wait_draining()
        if self._goaway_sent:
            return
        if not self._draining:
            self.stats.downstream_cx_drain_close.value += 1
        if drain.close_idle:
            self._shutdown = True
            self._final_goaway()
        elif not self._draining:  # (already announced by the idle timeout: that one holds)
            self._announce()
        self._rearm()

    def _feed(self, data: bytes) -> bool:
        """Give ``data`` to the framer (which calls the ``on_*`` methods below); ``False``
        when the connection is over."""
        try:
            self.h2.receive(data)
        except H2ConnectionError as exc:
            log.debug("HTTP/2 protocol error from %s: %s", self._remote, exc)
            self.stats.downstream_cx_protocol_error.value += 1
            self._http2.counter("rx_messaging_error").value += 1
            if exc.stat:
                self._http2.counter(exc.stat).value += 1
            self._writer.wake()  # the GOAWAY
            return False
        # (one name per handler: mypyc gives a name one type, the first handler's)
        except Flood as flood:
            return self._flood(flood.stat)
        except h2_headers.MalformedHeaders as malformed:
            return self._malformed(malformed)
        self._writer.wake()
        return True

    # -- what the framer tells (H2Handler) -------------------------------------------------------

    def on_request(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self._goaway_sent:  # after our GOAWAY: the client retries it elsewhere
            self.h2.reset_stream(sid, REFUSED_STREAM)
            return
        pseudo, regular = h2_headers.request_fields(fields)
        s = _Stream(sid, end_stream, pseudo, regular)
        self._streams[sid] = s
        self._idle_at = math.inf  # a stream is open: the connection is not idle
        self._rearm()
        if self._idle_workers:
            worker = self._idle_workers.pop()
            worker.stream = s
            trio.lowlevel.reschedule(worker.task)
        else:
            assert self._nursery is not None
            # a name given: trio would otherwise build one per task from repr() of the method
            self._nursery.start_soon(self._stream_worker, s, name=_STREAM_TASK)

    def on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        s = self._streams.get(sid)
        if s is not None and s.body_in is not None:
            s.body_in.send_nowait((data, flow))
            if end_stream:
                s.request_ended(self.cfg.stream_idle_timeout)
                s.end_body()
            else:
                s.touch(self.cfg.stream_idle_timeout)
        else:  # data for a stream we no longer track: give the credit back
            self.h2.acknowledge_received_data(flow, sid)

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        trailers = h2_headers.trailer_fields(fields)
        s = self._streams.get(sid)
        if s is not None:
            s.trailers = trailers
            s.request_ended(self.cfg.stream_idle_timeout)
            s.end_body()

    def on_reset(self, sid: int, remote: bool) -> None:
        s = self._streams.get(sid)
        if remote:
            self._http2.counter("rx_reset").value += 1
        else:
            self._http2.counter("tx_reset").value += 1
            self.stats.downstream_rq_tx_reset.value += 1
        if s is not None:
            self._dog.discard(s)  # (over: no timeout may answer it now)
            if not remote:
                s.protocol_error = True
            elif trio.current_time() - s.opened < PREMATURE_RESET_WINDOW:
                self._premature_resets += 1
            s.cancel()
            s.end_body()

    def on_window(self, sid: int) -> None:
        if sid:
            s = self._streams.get(sid)
            if s is not None:
                s.window_changed()
        else:
            for s in self._streams.values():
                s.window_changed()

    def on_goaway(self) -> None:
        self._peer_goaway = True

    def _malformed(self, exc: Exception) -> bool:
        """A request or trailer block that breaks RFC 9113 §8.2/§8.3: a connection error, as
        h2 made it (and Envoy does by default)."""
        log.debug("HTTP/2 malformed headers from %s: %s", self._remote, exc)
        self.stats.downstream_cx_protocol_error.value += 1
        self._http2.counter("rx_messaging_error").value += 1
        self.h2.close_connection(PROTOCOL_ERROR)
        self._writer.wake()
        return False

    def _flood(self, stat: str) -> bool:
        """A flood limit was crossed: count it and close the connection (Envoy sends no
        GOAWAY here: the peer is not reading, or not behaving)."""
        log.debug("HTTP/2 %s from %s: closing", stat, self._remote)
        self._http2.counter(stat).value += 1
        self.conn.transport.close()
        return False

    def _stream_closed(self) -> None:
        """Rapid reset: too many streams reset by the client right after opening them."""
        self._closed_streams += 1
        if (
            not self._goaway_sent
            and self._closed_streams >= PREMATURE_RESET_MIN_STREAMS
            and self._premature_resets * 2 > self._closed_streams
        ):
            log.debug("too many premature resets from %s: GOAWAY and close", self._remote)
            self.cfg.scope.counter("downstream_rq_too_many_premature_resets").value += 1
            self._goaway_sent = True
            self.h2.close_connection(ENHANCE_YOUR_CALM)
            self._writer.close_when_sent()

    def _credit(self, s: _Stream, n: int) -> None:
        if n:
            self.h2.acknowledge_received_data(n, s.sid)
            self._writer.wake()

    async def _send_data(self, s: _Stream, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        h = self.h2
        writer = self._writer
        while view:
            await writer.wait_room()
            window = min(h.local_flow_control_window(s.sid), h.max_outbound_frame_size)
            if window <= 0:
                s.window = trio.Event()
                await s.window.wait()
                continue
            chunk = view[:window]
            view = view[window:]
            h.send_data(s.sid, bytes(chunk), end_stream=end and not view)
            writer.queued(len(chunk))
            s.touch(self.cfg.stream_idle_timeout)
        if end and not data:
            h.end_stream(s.sid)
            writer.wake()

    # ------------------------------------------------------------------ streams

    # A task per stream, with a cancel scope of its own, would cost about 9 µs of interpreted
    # trio code per request (spawning, entering and leaving the scope, the task's end). A
    # worker instead serves one stream after another, each handed to it by ``on_request``
    # while it waits (about 1.5 µs), all under one cancel scope until a stream is cancelled
    # (reset by the client, timed out): that stream spends the scope, and is answered outside
    # it; the next stream gets a new one.

    async def _stream_worker(self, s: _Stream | None) -> None:
        while s is not None:
            s = await self._serve(s)

    async def _next_stream(self) -> _Stream | None:
        """Wait for ``on_request`` to hand this worker a stream; ``None`` (at once) when
        enough workers wait already."""
        if len(self._idle_workers) >= IDLE_STREAM_WORKERS:
            return None
        idle = self._idle_workers
        worker = _Worker(trio.lowlevel.current_task())
        idle.append(worker)

        def abort(_: object) -> trio.lowlevel.Abort:  # the connection ends
            idle.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return worker.stream

    async def _serve(self, s: _Stream) -> _Stream | None:
        """Serve ``s`` and the streams handed over after it under one cancel scope, until one
        is cancelled or no stream comes; the next stream to serve, if any."""
        current: _Stream | None = None
        try:
            with trio.CancelScope() as scope:
                while True:
                    s.scope = scope
                    if s.cancelled:  # (reset before a worker took it)
                        scope.cancel()
                    self._start(s)
                    current = s
                    await self._run(s)
                    current = None
                    self._finish(s)
                    if scope.cancel_called:
                        break  # spent: a reset noticed between checkpoints (``_run``)
                    nxt = await self._next_stream()
                    if nxt is None:
                        return None
                    s = nxt
            if current is not None:  # the stream in flight was cancelled
                await self._run(current, cancelled=True)
        finally:
            if current is not None:
                self._finish(current)
        return await self._next_stream()

    def _start(self, s: _Stream) -> None:
        """The stream as the filters see it, its stats and its timeouts."""
        cfg = self.cfg
        st = self.stats
        t0 = _now()
        st.downstream_rq_total.value += 1
        st.downstream_rq_http2_total.value += 1
        st.downstream_rq_active.value += 1
        pseudo = s.pseudo
        regular = s.regular
        method = pseudo.get(":method", "")
        length = None
        authority = pseudo.get(":authority")
        for k, v in regular:
            if k == "content-length":
                length = v
            elif k == "host":
                authority = authority or v
        if authority is not None:  # (``host`` alone stands for ``:authority``)
            regular = [("host", authority), *(p for p in regular if p[0] != "host")]
        head = h1.RequestHead(
            method,
            pseudo.get(":path", ""),
            "1.1",
            regular,
            True,
            False,
            int(length) if length and length.isdecimal() else None,
            False,
            None,
        )
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=t0,
            protocol="HTTP/2",
            downstream_remote_address=self._remote,
            downstream_local_address=self._local,
            requested_server_name=self.conn.info.sni,
            connection_id=self.conn.info.connection_id,
        )
        info.downstream_direct_remote_address = info.downstream_remote_address
        headers, reject = request_headers(head, cfg, self.conn.info, self._scheme)
        if ":scheme" in pseudo:
            headers.set(":scheme", pseudo[":scheme"])
        info.request_headers = headers
        stream = HttpStream(request_headers=headers, info=info, connection=self.conn.info)
        stream._router = cfg.routes.route
        stream.end_stream = s.no_body
        stream.cancel_scope = s
        if reject is None and (not method or ":path" not in pseudo):
            reject = LocalReply(400, b"", details="missing_required_header")
        if cfg.tracing is not None and reject is None:
            start_span(cfg.tracing, stream)
        s.http = stream
        s.reject = reject
        s.head_only = method == "HEAD"
        # the stream's timeouts, on the watchdog (``_Stream.expire``)
        if cfg.request_timeout is not None and not s.ended:
            s.rq_deadline = watchdog.now() + cfg.request_timeout
        s.touch(cfg.stream_idle_timeout)
        if s.deadline != math.inf:
            self._dog.add(s)

    async def _run(self, s: _Stream, cancelled: bool = False) -> None:
        """Answer a started stream: through the filters; or, once it was ``cancelled``, as
        its timeout or reset says. A failing filter fails this stream only."""
        stream = s.http
        assert stream is not None
        info = stream.info
        st = self.stats
        try:
            if cancelled:
                if s.expired is not None:
                    await self._timed_out(stream, s, s.head_only)
                elif s.protocol_error:
                    info.response_flags.add("DPE")
                else:
                    info.response_flags.add("DC")
                    st.downstream_rq_rx_reset.value += 1
                return
            result = s.reject or await self._decode(stream, s)
            if type(result) is LocalReply:
                if result is NO_ROUTE:
                    st.no_route.value += 1
                await self._local_reply(stream, s, result, s.head_only)
            else:
                assert isinstance(result, Response)
                await self._respond(stream, s, result, s.head_only)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            info.response_flags.add("DC")
        except trio.Cancelled:
            if self._client_gone:  # the connection's end cancelled this stream
                info.response_flags.add("DC")
            raise
        except Exception as exc:
            if isinstance(exc, StreamClosed) and s.cancelled:
                # the stream was reset while this task ran without a checkpoint, so the
                # cancellation had not reached it yet: the same as being cancelled
                if s.protocol_error:
                    info.response_flags.add("DPE")
                else:
                    info.response_flags.add("DC")
                    st.downstream_rq_rx_reset.value += 1
                return
            log.exception(
                "HTTP filter failed on %s %s",
                stream.request_headers.get(":method"),
                stream.request_headers.get(":path"),
            )
            self._filter_error.value += 1
            if info.response_code == 0:
                try:
                    await self._local_reply(stream, s, FILTER_ERROR, s.head_only, filters=False)
                except Exception:
                    self._reset(s)
            else:
                info.response_flags.add("LR")
                self._reset(s)

    def _finish(self, s: _Stream) -> None:
        """The stream is over: stats, access log, the credit of request data nobody read."""
        stream = s.http
        assert stream is not None
        info = stream.info
        st = self.stats
        self._dog.discard(s)
        self._streams.pop(s.sid, None)
        if not self._streams:
            self._idle_from_now()
        st.downstream_rq_active.value -= 1
        info.end_monotonic = info.last_downstream_tx = _now()
        st.downstream_rq_time.record((info.end_monotonic - info.start_monotonic) * 1000)
        self._log(stream)
        leftover = 0
        while s.body is not None:
            try:
                _, n = s.body.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            leftover += n
        if leftover:
            self.h2.acknowledge_received_data(leftover, s.sid)
        self.h2.finish(s.sid)
        self._writer.wake()
        self._close_if_done()
        self._stream_closed()
        # The worker's scope goes on with its next stream: a late cancel of this one (a
        # filter kept its HttpStream) must not reach it.
        s.scope = None
        # A worker waiting for its next stream still refers to this one: keep nothing of
        # the request there (headers can be 60 KiB, and up to IDLE_STREAM_WORKERS wait).
        s.http = None
        s.pseudo = _NO_PSEUDO
        s.regular = _NO_FIELDS
        s.trailers = None

    async def _timed_out(self, stream: HttpStream, s: _Stream, head_only: bool) -> None:
        """A timeout cancelled the stream (``_Stream.expire``): answer it as Envoy does, or
        reset it if the response has started."""
        assert s.expired is not None
        reply = timeout_reply(self.stats, stream, s.expired, s.ended)
        info = stream.info
        if info.response_code == 0:
            with contextlib.suppress(StreamClosed):  # (reset by the client meanwhile)
                await self._local_reply(stream, s, reply, head_only)
        else:
            info.response_code_details = reply.details
            self._reset(s)

    def _reset(self, s: _Stream) -> None:
        try:
            self.h2.reset_stream(s.sid, INTERNAL_ERROR)
        except StreamClosed:
            return
        self._http2.counter("tx_reset").value += 1
        self.stats.downstream_rq_tx_reset.value += 1

    async def _decode(self, stream: HttpStream, s: _Stream) -> Response | LocalReply:
        chain = self.cfg.chain
        headers = stream.request_headers
        for phase in chain.request_headers:
            reply = await phase(stream, headers)
            if reply is not None:
                return reply  # type: ignore[no-any-return]
        body: AsyncIterator[bytes] | None = None
        if not s.no_body:
            body = _RequestBody(self, stream, s)
            if chain.request_data or chain.request_trailers:
                body = filtered_request_body(self.cfg.chain, stream, body)
        return await chain.terminal.serve(stream, body)

    # ------------------------------------------------------------------ responses

    def _count_status(self, status: int) -> None:
        count_status(self.stats, self.lstats, status)

    async def _local_reply(
        self,
        stream: HttpStream,
        s: _Stream,
        reply: LocalReply,
        head_only: bool,
        *,
        filters: bool = True,
    ) -> None:
        cfg = self.cfg
        info = stream.info
        reply = for_request(reply, stream.request_headers, info, cfg.local_reply)
        headers = reply_headers(reply, cfg.server_name, info.start_time)
        route = stream._route if stream._routed else None
        if route is not None and getattr(route, "mutates_headers", False):
            route.apply_response_headers(headers, info)
        stream.response_headers = headers
        if filters:
            for phase in cfg.chain.response_headers:
                await phase(stream, headers)
        body = b"" if head_only else reply.body
        info.response_code = reply.status
        info.response_headers = headers
        info.bytes_sent = len(body)
        self._count_status(reply.status)
        self.h2.send_headers(s.sid, h2_headers.response_block(headers), end_stream=not body)
        self._writer.wake()
        if body:
            await self._send_data(s, body, end=True)

    async def _respond(
        self, stream: HttpStream, s: _Stream, resp: Response, head_only: bool
    ) -> None:
        body_iter = resp.body
        try:
            await self._send_response(stream, s, resp, head_only)
        finally:
            if body_iter is not None and hasattr(body_iter, "aclose"):
                with trio.CancelScope(shield=True):
                    await body_iter.aclose()

    async def _send_response(
        self, stream: HttpStream, s: _Stream, resp: Response, head_only: bool
    ) -> None:
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
        if cfg.always_set_request_id_in_response or "x-envoy-force-trace" in stream.request_headers:
            # (Envoy answers a forced trace with the request id, so it can be found)
            rid = stream.request_headers.get("x-request-id")
            if rid:
                headers.set("x-request-id", rid)
        no_body = head_only or status in _NO_BODY_STATUS
        if chain.response_length_changes:
            headers.remove("content-length")
        self._count_status(status)
        info.first_downstream_tx = _now()
        has_more = not no_body and (resp.initial_body or resp.body is not None or resp.trailers)
        h = self.h2
        initial = resp.initial_body
        if (
            has_more
            and resp.body is None
            and resp.trailers is None
            and not chain.response_data
            and len(initial) <= min(h.local_flow_control_window(s.sid), h.max_outbound_frame_size)
        ):
            # The whole response is in hand and fits the window: HEADERS and DATA in one write.
            h.send_headers(s.sid, h2_headers.response_block(headers))
            h.send_data(s.sid, initial, end_stream=True)
            info.bytes_sent = len(initial)
            self._writer.queued(len(initial))
            return
        h.send_headers(s.sid, h2_headers.response_block(headers), end_stream=not has_more)
        self._writer.wake()
        s.rq_deadline = math.inf  # the response started: no request timeout (as Envoy)
        s.touch(cfg.stream_idle_timeout)
        if not has_more:
            if resp.body is not None:
                async for _ in resp.body:
                    pass
            return
        sent = 0

        # closed even when the stream is cancelled mid-body (client reset, shutdown)
        async with contextlib.aclosing(filtered_response_body(chain, stream, resp)) as body:
            async for chunk in body:
                sent += len(chunk)
                await self._send_data(s, chunk)
        info.bytes_sent = sent
        trailers = resp.trailers
        if trailers is not None and len(list(trailers.regular())):
            stream.response_trailers = trailers
            for tphase in chain.response_trailers:
                await tphase(stream, trailers)
            block = h2_headers.trailers_block(trailers.regular())
            self.h2.send_headers(s.sid, block, end_stream=True)
            self._writer.wake()
        else:
            await self._send_data(s, b"", end=True)

    def _log(self, stream: HttpStream) -> None:
        log_stream(self.cfg, stream)


def is_preface(data: bytes) -> bool | None:
    """``True``/``False`` once ``data`` tells whether it starts an HTTP/2 connection;
    ``None`` while it is a prefix of the preface too short to tell."""
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return False
    return True if n == len(PREFACE) else None


__all__ = ["PREFACE", "Http2Connection", "ProtocolError", "is_preface"]


class _RequestBody:
    """A stream's request body as an async iterator: its credit goes back to the client as
    the router forwards each chunk. A class, not an async generator, so that mypyc can
    compile this module (setup.py)."""

    __slots__ = ("conn", "stream", "s", "_done")

    def __init__(self, conn: Http2Connection, stream: HttpStream, s: _Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.s = s
        self._done = False

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        body = self.s.body
        assert body is not None
        info = self.stream.info
        while not self._done:
            try:
                data, flow = await body.receive()
            except trio.EndOfChannel:
                self._done = True
                info.last_downstream_rx = _now()
                if self.s.trailers:
                    self.stream.request_trailers = Headers(self.s.trailers)
                break
            info.bytes_received += len(data)
            self.conn._credit(self.s, flow)  # forwarded: the client may send more
            if data:
                return data
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """(Nothing to release: the stream owns its channel.)"""
