"""The TCP proxy: one upstream connection per downstream connection, bytes copied both ways.

Theory of operation: ``handle_connection`` picks the cluster (``cluster``, or a weighted
random pick from ``weighted_clusters``), asks it for a host with the connection as the load
balancer's context (so an ORIGINAL_DST cluster connects where the client was headed), and
connects, trying up to ``max_connect_attempts`` hosts. Then two pumps copy bytes, each
awaiting its send before its next receive, so a slow reader back-pressures the other side
through the kernel's buffers. A FIN is passed on as a FIN (half-close): the connection ends
when both directions have ended, when either side resets, on ``idle_timeout`` (reset by
bytes in either direction) or at ``max_downstream_connection_duration``. The access log gets
one entry per connection.

Failures close the downstream connection and set Envoy's response flag: no cluster ``NC``
(``downstream_cx_no_route``), no host ``UH`` (``upstream_cx_none_healthy``), connection breaker
``UO`` (``upstream_cx_overflow``), connect failures ``UF``
(``upstream_cx_connect_attempts_exceeded``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from trioproxy.errors import UpstreamError
from trioproxy.http.stream_info import StreamInfo, now
from trioproxy.netutil import address_string
from trioproxy.network.filter import DownstreamConnection, TerminalNetworkFilter
from trioproxy.stats import Counter, Gauge, StatBlock
from trioproxy.upstream.cluster_manager import Cluster, ClusterManager
from trioproxy.upstream.connect import UpstreamStream, close_connection, open_connection
from trioproxy.upstream.host import Host

from .config import TcpProxyConfig

READ_SIZE = 16 * 1024
_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError)


class TcpProxyStats(StatBlock):
    """``tcp.<stat_prefix>.*``."""

    downstream_cx_total: Counter
    downstream_cx_no_route: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_cx_rx_bytes_buffered: Gauge
    downstream_cx_tx_bytes_buffered: Gauge
    downstream_flow_control_paused_reading_total: Counter
    downstream_flow_control_resumed_reading_total: Counter
    idle_timeout: Counter
    max_downstream_connection_duration: Counter
    upstream_flush_total: Counter
    upstream_flush_active: Gauge


def _splice_key(config: TcpProxyConfig) -> tuple[Sequence[str], Sequence[int]]:
    return [c.name for c in config.weighted_clusters], [c.weight for c in config.weighted_clusters]


class TcpProxy(TerminalNetworkFilter):
    def __init__(
        self,
        config: TcpProxyConfig,
        cluster_manager: ClusterManager,
        stats: TcpProxyStats,
        access_loggers: Sequence[Any],
    ) -> None:
        self.config = config
        self.cluster_manager = cluster_manager
        self.stats = stats
        self.access_loggers = tuple(access_loggers)
        self._names, self._weights = _splice_key(config)

    def _cluster_name(self) -> str:
        if self._names:
            return random.choices(self._names, self._weights)[0]
        return self.config.cluster

    async def handle_connection(self, conn: DownstreamConnection) -> None:
        self.stats.downstream_cx_total.value += 1
        ci = conn.info
        remote = address_string(ci.remote_address)
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=now(),
            protocol="",
            downstream_remote_address=remote,
            downstream_local_address=address_string(ci.local_address),
            downstream_direct_remote_address=remote,
            requested_server_name=ci.sni,
            connection_id=ci.connection_id,
            filter_state=conn.filter_state,
        )
        try:
            await self._proxy(conn, info)
        finally:
            info.end_monotonic = now()
            for logger in self.access_loggers:
                logger.log(info)

    async def _connect(
        self, conn: DownstreamConnection, cluster: Cluster, info: StreamInfo
    ) -> tuple[UpstreamStream, float, Host] | None:
        stats = cluster.stats
        for _ in range(self.config.max_connect_attempts):
            host = cluster.choose_host(conn)
            if host is None:
                stats.upstream_cx_none_healthy.value += 1
                info.response_flags.add("UH")
                return None
            if not cluster.breakers.connections.can_create():
                stats.upstream_cx_overflow.value += 1
                info.response_flags.add("UO")
                return None
            info.upstream_host = host.address_str
            info.attempt_count += 1
            try:
                up, created = await open_connection(host, stats, cluster.breakers, cluster.config)
            except UpstreamError as exc:
                info.upstream_transport_failure_reason = str(exc)
                continue
            return up, created, host
        stats.upstream_cx_connect_attempts_exceeded.value += 1
        info.response_flags.add("UF")
        return None

    async def _proxy(self, conn: DownstreamConnection, info: StreamInfo) -> None:
        name = self._cluster_name()
        cluster = self.cluster_manager.get(name)
        if cluster is None:
            self.stats.downstream_cx_no_route.value += 1
            info.response_flags.add("NC")
            return
        info.upstream_cluster = name
        info.upstream_cluster_observability = cluster.config.alt_stat_name
        connected = await self._connect(conn, cluster, info)
        if connected is None:
            return
        up, created, host = connected
        try:
            local = up.socket.getsockname()
            info.upstream_local_address = address_string(local)
        except OSError:
            pass
        session = _Session(self, conn, up, cluster, info)
        try:
            await session.run()
        finally:
            close_connection(
                up,
                created,
                host,
                cluster.stats,
                cluster.breakers,
                remote=session.upstream_closed_first,
            )


class _Session:
    """One proxied connection's two pumps and their shared deadlines."""

    def __init__(
        self,
        proxy: TcpProxy,
        conn: DownstreamConnection,
        up: UpstreamStream,
        cluster: Cluster,
        info: StreamInfo,
    ) -> None:
        self.proxy = proxy
        self.conn = conn
        self.up = up
        self.cluster = cluster
        self.info = info
        self.idle_scope = trio.CancelScope()
        self.upstream_closed_first = False
        self._ended = 0

    def _touch(self) -> None:
        idle = self.proxy.config.idle_timeout
        if idle is not None:
            self.idle_scope.deadline = trio.current_time() + idle

    async def run(self) -> None:
        config = self.proxy.config
        stats = self.proxy.stats
        with trio.move_on_after(config.max_downstream_connection_duration or float("inf")) as life:
            with self.idle_scope:
                self._touch()
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._downstream_to_upstream, pumps.cancel_scope)
                    pumps.start_soon(self._upstream_to_downstream, pumps.cancel_scope)
            if self.idle_scope.cancelled_caught:
                stats.idle_timeout.value += 1
        if life.cancelled_caught:
            stats.max_downstream_connection_duration.value += 1

    def _direction_done(self, done: trio.CancelScope) -> None:
        self._ended += 1
        if self._ended == 2:
            done.cancel()

    async def _copy(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        counted: tuple[Counter, Counter],
        on_bytes: Callable[[int], None],
    ) -> None:
        """Copy until EOF, one send awaited before the next receive (back-pressure);
        ``counted`` are the (received, sent) byte counters of this direction."""
        received, sent = counted
        while True:
            data = await src.receive_some(READ_SIZE)
            if not data:
                return
            n = len(data)
            received.value += n
            on_bytes(n)
            self._touch()
            await dst.send_all(data)
            sent.value += n

    def _received(self, n: int) -> None:
        self.info.bytes_received += n

    def _sent(self, n: int) -> None:
        self.info.bytes_sent += n

    async def _downstream_to_upstream(self, done: trio.CancelScope) -> None:
        counted = (
            self.proxy.stats.downstream_cx_rx_bytes_total,
            self.cluster.stats.upstream_cx_tx_bytes_total,
        )
        try:
            await self._copy(self.conn.stream, self.up, counted, self._received)
            await self.up.send_eof()  # the client's FIN, passed on
        except _CLOSED:
            done.cancel()  # a reset on either side ends both directions
            return
        self._direction_done(done)

    async def _upstream_to_downstream(self, done: trio.CancelScope) -> None:
        down = self.conn.stream
        counted = (
            self.cluster.stats.upstream_cx_rx_bytes_total,
            self.proxy.stats.downstream_cx_tx_bytes_total,
        )
        try:
            await self._copy(self.up, down, counted, self._sent)
            if self._ended == 0:
                self.upstream_closed_first = True
            if isinstance(down, trio.abc.HalfCloseableStream):
                await down.send_eof()
            else:  # TLS has no half-close: the upstream's FIN ends the connection
                done.cancel()
                return
        except _CLOSED:
            done.cancel()
            return
        self._direction_done(done)
