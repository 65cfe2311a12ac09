"""The HTTP/1.1 connection pool for one (cluster, host).

Theory of operation: a pool holds idle keep-alive connections in a LIFO stack (the most recently
used one is the most likely to still be open upstream) and counts the connections it has lent
out. ``acquire`` tries, in order:

1. an idle connection: the newest that is neither past the idle timeout nor "noisy". A quiet
   check is a non-blocking ``recv(MSG_PEEK)``: anything readable on an idle HTTP/1.1 connection
   is either EOF (the upstream closed it) or garbage, so the connection is discarded. It is
   made on connections idle for ``QUIET_CHECK_AFTER`` and, whatever their idle time, for
   requests with a body (``acquire(checked=True)``): a bodiless request that meets a closed
   connection is sent again on another (the router's ``_stale``), a body cannot be. When the
   newest idle connection has expired every older one has too, so they all go.
2. otherwise the request becomes *pending* (Envoy counts ``upstream_rq_pending_total`` for it;
   beyond ``max_pending_requests`` it overflows with ``UO``), and a new connection is opened if
   the cluster's ``max_connections`` breaker allows. If not (``upstream_cx_overflow``), it waits
   in the cluster's ``PendingQueue`` until a connection of this pool is released (handed over
   directly) or a connection anywhere in the cluster closes (a slot is free; try again).

``release(conn, reusable)`` returns a connection after a request: reusable ones go to a waiter
or the idle stack unless ``max_requests_per_connection`` is reached; the rest are closed and
their breaker slot is freed. Idle connections past the idle timeout are closed lazily by
``acquire`` and by ``sweep``, which the cluster manager calls periodically from one task for all
pools (no task per connection). Connecting is bounded by ``connect_timeout`` as a cancel-scope
deadline; failures raise ``UpstreamError(flag="UF")``.

The idle path of ``acquire`` does not checkpoint (it does no I/O); the caller writes to the
connection right away, which does.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from trioproxy import watchdog
from trioproxy.errors import UpstreamError
from trioproxy.upstream.circuit_breaker import CircuitBreakers
from trioproxy.upstream.connect import UpstreamStream, close_connection, open_connection
from trioproxy.upstream.host import Host
from trioproxy.upstream.http1_client import Exchange
from trioproxy.upstream.stats import ClusterStats

if TYPE_CHECKING:
    from trioproxy.upstream.config import ClusterConfig


#: Idle time (seconds) after which a pooled connection is checked for EOF before reuse.
QUIET_CHECK_AFTER = 0.5


class UpstreamConnection:
    """A connection lent to the router; ``codec`` is the router's slot for its parser state.
    ``busy``: a request on it has not had its whole response yet; ``peer_closed``: the
    upstream closed or reset it (both set by ``http1_client.Exchange``, for the stats of its
    end). (A plain class, not attrs: this module is compiled by mypyc in a compiled build.)"""

    __slots__ = (
        "stream",
        "host",
        "raw",
        "created",
        "requests",
        "codec",
        "idle_since",
        "closed",
        "stats",
        "busy",
        "peer_closed",
    )

    def __init__(
        self,
        stream: UpstreamStream,
        host: Host,
        raw: socket.socket,
        created: float,
        stats: ClusterStats,
    ) -> None:
        self.stream = stream
        self.host = host
        self.stats = stats  # the cluster's: a response that breaks HTTP/1.1 is counted there
        self.raw = raw  # the same socket, for the synchronous quiet check and close
        self.created = created
        self.requests = 0
        self.codec: Any = None
        self.idle_since = 0.0
        self.closed = False
        self.busy = False
        self.peer_closed = False

    def is_quiet(self) -> bool:
        """True when nothing is readable: no EOF, no stray bytes from the upstream."""
        try:
            data = self.raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del data
        return False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<UpstreamConnection {self.host.address_str} {state}" + (
            f" requests={self.requests}>"
        )


class _Waiter:
    __slots__ = ("conn", "event", "pool")

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.event = trio.Event()
        self.conn: UpstreamConnection | None = None


class PendingQueue:
    """Requests of one cluster waiting for a connection (FIFO across the cluster's pools)."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[_Waiter] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def count(self, pool: Http1Pool) -> int:
        return sum(1 for w in self._waiters if w.pool is pool)

    async def wait(self, pool: Http1Pool) -> UpstreamConnection | None:
        """Wait for a handed-over connection (returned) or a free slot (``None``)."""
        w = _Waiter(pool)
        self._waiters.append(w)
        try:
            await w.event.wait()
        except BaseException:
            if w.conn is not None:
                pool.release(w.conn, True)
            else:
                try:
                    self._waiters.remove(w)
                except ValueError:
                    self.slot_freed()  # we were woken for a slot we will not use: pass it on
            raise
        return w.conn

    def hand_over(self, pool: Http1Pool, conn: UpstreamConnection) -> bool:
        for w in self._waiters:
            if w.pool is pool:
                self._waiters.remove(w)
                w.conn = conn
                w.event.set()
                return True
        return False

    def slot_freed(self, empty_pool: Http1Pool | None = None) -> None:
        """Wake the first waiter; and one of ``empty_pool``'s, which may now connect anyway."""
        if self._waiters:
            self._waiters.popleft().event.set()
        if empty_pool is not None:
            for w in self._waiters:
                if w.pool is empty_pool:
                    self._waiters.remove(w)
                    w.event.set()
                    break


class PoolStatistics:
    __slots__ = ("active", "idle", "pending")

    def __init__(self, active: int, idle: int, pending: int) -> None:
        self.active = active
        self.idle = idle
        self.pending = pending


class Http1Pool:
    __slots__ = (
        "_closed",
        "_config",
        "_idle",
        "_idle_timeout",
        "_max_duration",
        "_max_requests",
        "_open",
        "breakers",
        "host",
        "queue",
        "stats",
    )

    def __init__(
        self,
        host: Host,
        config: ClusterConfig,
        stats: ClusterStats,
        breakers: CircuitBreakers,
        queue: PendingQueue,
    ) -> None:
        self.host = host
        self.stats = stats
        self.breakers = breakers
        self.queue = queue
        self._config = config
        self._idle_timeout = config.idle_timeout
        self._max_requests = config.max_requests_per_connection
        self._max_duration = config.max_connection_duration
        self._idle: deque[UpstreamConnection] = deque()
        self._open = 0  # connections of this pool, idle or lent out
        self._closed = False

    # ---------------------------------------------------------------- acquire / release

    def exchange(self, conn: UpstreamConnection, deadline: float) -> Exchange:
        """The request/response object the router drives on ``conn``."""
        return Exchange(conn, deadline, self._config.proper_case_headers)

    def has_idle(self) -> bool:
        """Whether ``acquire`` can answer from the idle list without waiting (it may still
        find those connections expired or closed and connect instead)."""
        return bool(self._idle)

    async def acquire(self, checked: bool = False) -> UpstreamConnection:
        """A connection to ``host``, ready for one request; raises ``UpstreamError`` (UF, UO).
        ``checked``: peek at an idle connection even if it was released moments ago (for a
        request with a body, which cannot be sent again should the upstream have closed it)."""
        if self._closed:
            raise UpstreamError("connection pool closed", flag="UF")
        conn = self._take_idle(checked)
        if conn is not None:
            return conn
        stats = self.stats
        pending = self.breakers.pending
        if not pending.can_create():
            stats.upstream_rq_pending_overflow.value += 1
            raise UpstreamError("pending requests overflow", flag="UO")
        pending.inc()
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        try:
            while True:
                if not self.breakers.connections.can_create():
                    stats.upstream_cx_overflow.value += 1
                    # Envoy still gives a host chosen by the balancer one connection
                    if self._open:
                        conn = await self.queue.wait(self)
                        if conn is not None:
                            if checked and not conn.is_quiet():
                                self._destroy(conn, remote=True)  # (a slot is free now)
                                continue
                            conn.requests += 1
                            return conn
                        if self._closed:
                            raise UpstreamError("connection pool closed", flag="UF")
                        conn = self._take_idle(checked)
                        if conn is not None:
                            return conn
                        continue
                try:
                    conn = await self._connect()
                except UpstreamError:
                    # the connection this request waited for failed: Envoy fails its pending
                    # requests then, and counts each
                    stats.upstream_rq_pending_failure_eject.value += 1
                    raise
                conn.requests = 1
                return conn
        finally:
            pending.dec()
            stats.upstream_rq_pending_active.value -= 1

    def release(self, conn: UpstreamConnection, reusable: bool, *, remote: bool = False) -> None:
        """Give ``conn`` back after a request. ``remote``: the upstream closed it (stats only)."""
        if conn.closed:
            return
        if reusable and conn.codec is not None and conn.codec.has_leftover():
            # Bytes after a complete response, unasked: they would be taken for the next
            # request's response. Envoy's codec parses them as they come, takes them for a
            # protocol error and closes the connection.
            self.stats.upstream_cx_protocol_error.value += 1
            reusable = False
        if not reusable or self._closed:
            self._destroy(conn, remote=remote)
            return
        if self._max_requests and conn.requests >= self._max_requests:
            self.stats.upstream_cx_max_requests.value += 1
            self._destroy(conn, remote=False)
            return
        if self._too_old(conn, watchdog.now()):
            return
        if self.queue.hand_over(self, conn):
            return
        conn.idle_since = watchdog.now()
        self._idle.append(conn)

    def _take_idle(self, checked: bool = False) -> UpstreamConnection | None:
        idle = self._idle
        if not idle:
            return None
        timeout = self._idle_timeout
        now = watchdog.now()
        while idle:
            conn = idle.pop()
            if timeout is not None and now - conn.idle_since >= timeout:
                self.stats.upstream_cx_idle_timeout.value += 1
                self._destroy(conn, remote=False)
                while idle:  # older ones expired too
                    self.stats.upstream_cx_idle_timeout.value += 1
                    self._destroy(idle.pop(), remote=False)
                return None
            if self._too_old(conn, now):
                continue
            # The peek costs a syscall; a connection released moments ago cannot have hit an
            # upstream's keep-alive idle timeout (seconds), so under load it is skipped, unless
            # the request could not be sent again (an upstream may close right after a
            # response without saying so).
            if (checked or now - conn.idle_since >= QUIET_CHECK_AFTER) and not conn.is_quiet():
                self._destroy(conn, remote=True)
                continue
            conn.requests += 1
            return conn
        return None

    def sweep(self, now: float | None = None) -> None:
        """Close idle connections past the idle timeout (oldest first) and noisy ones."""
        timeout = self._idle_timeout
        idle = self._idle
        if now is None:
            now = watchdog.now()
        if timeout is not None:
            while idle and now - idle[0].idle_since >= timeout:
                self.stats.upstream_cx_idle_timeout.value += 1
                self._destroy(idle.popleft(), remote=False)
        for conn in [c for c in idle if not c.is_quiet()]:
            idle.remove(conn)
            self._destroy(conn, remote=True)
        if self._max_duration is not None:
            for conn in [c for c in idle if now - c.created >= self._max_duration]:
                idle.remove(conn)
                self._too_old(conn, now)

    def _too_old(self, conn: UpstreamConnection, now: float) -> bool:
        """``max_connection_duration``: past it, ``conn`` is closed (and counted) instead of
        used again."""
        limit = self._max_duration
        if limit is None or now - conn.created < limit:
            return False
        self.stats.upstream_cx_max_duration_reached.value += 1
        self._destroy(conn, remote=False)
        return True

    # ---------------------------------------------------------------- connect / destroy

    async def _connect(self) -> UpstreamConnection:
        self._open += 1
        self.stats.upstream_cx_http1_total.value += 1
        try:
            stream, created = await open_connection(
                self.host, self.stats, self.breakers, self._config
            )
        except BaseException:
            self._open -= 1
            self.queue.slot_freed(None if self._open else self)
            raise
        return UpstreamConnection(
            stream=stream, host=self.host, raw=stream.socket, created=created, stats=self.stats
        )

    def adopt(self, stream: UpstreamStream, created: float) -> UpstreamConnection:
        """Take a connection opened elsewhere (``AutoPool``, after ALPN chose HTTP/1.1) as
        this pool's, lent out for one request."""
        self._open += 1
        self.stats.upstream_cx_http1_total.value += 1
        conn = UpstreamConnection(
            stream=stream, host=self.host, raw=stream.socket, created=created, stats=self.stats
        )
        conn.requests = 1
        return conn

    def _destroy(self, conn: UpstreamConnection, *, remote: bool) -> None:
        conn.closed = True
        # closing notifies trio first, so a task blocked on the connection is woken
        close_connection(
            conn.stream,
            conn.created,
            self.host,
            self.stats,
            self.breakers,
            remote=remote or conn.peer_closed,
            active_rq=conn.busy,
        )
        self._open -= 1
        self.queue.slot_freed(None if self._open else self)

    # ---------------------------------------------------------------- lifecycle

    def drain(self) -> None:
        """Close idle connections now and lent-out ones when they come back."""
        self._closed = True
        while self._idle:
            self._destroy(self._idle.pop(), remote=False)

    async def aclose(self) -> None:
        self.drain()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> PoolStatistics:
        idle = len(self._idle)
        return PoolStatistics(active=self._open - idle, idle=idle, pending=self.queue.count(self))

    def __repr__(self) -> str:
        s = self.statistics()
        addr = self.host.address_str
        closed = " closed" if self._closed else ""
        return f"<Http1Pool {addr} active={s.active} idle={s.idle} pending={s.pending}{closed}>"
