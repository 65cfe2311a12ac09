"""The UDP proxy: per-client sessions between a UDP listener and a cluster.

Theory of operation: ``serve`` reads the listener's socket. Each downstream source address
(IP, port) is a *session*: the first datagram from it routes (``cluster`` or the matcher),
picks a host and opens an upstream UDP socket connected to that host; later datagrams reuse
it. A task per upstream socket sends what the host answers back to the client from the
listener's socket, so the client sees replies from the address it sent to. A session ends
``idle_timeout`` after its last datagram in either direction (``idle_timeout`` stat), and
takes a ``max_connections`` slot of its cluster while it lives (overflow:
``upstream_cx_overflow``, the datagram is dropped). With ``use_per_packet_load_balancing``
every datagram picks a host and the session keeps one upstream socket per host it used.

Datagrams longer than the listener's ``max_rx_datagram_size`` (default 1500) are dropped and
counted in ``listener.<address>.udp.downstream_rx_datagram_dropped``, those from upstream in
``cluster.<name>.udp.sess_rx_datagrams_dropped``, as Envoy does, rather than forwarded cut.
"""

from __future__ import annotations

import socket

import attrs
import trio

from trioproxy.stats import Counter, Gauge, Scope, StatBlock
from trioproxy.upstream.cluster_manager import Cluster, ClusterManager
from trioproxy.upstream.hashing import hash64
from trioproxy.upstream.host import Host

from .config import UdpProxyConfig

Address = tuple[str, int]


class UdpProxyStats(StatBlock):
    """``udp.<stat_prefix>.*``."""

    downstream_sess_total: Counter
    downstream_sess_active: Gauge
    downstream_sess_no_route: Counter
    downstream_sess_rx_bytes: Counter
    downstream_sess_rx_datagrams: Counter
    downstream_sess_rx_errors: Counter
    downstream_sess_tx_bytes: Counter
    downstream_sess_tx_datagrams: Counter
    downstream_sess_tx_errors: Counter
    idle_timeout: Counter
    session_filter_config_missing: Counter


class ClusterUdpStats(StatBlock):
    """``cluster.<name>.udp.*``."""

    sess_rx_datagrams: Counter
    sess_rx_datagrams_dropped: Counter
    sess_rx_errors: Counter
    sess_tx_datagrams: Counter
    sess_tx_errors: Counter
    sess_tunnel_buffer_overflow: Counter
    sess_tunnel_failure: Counter
    sess_tunnel_success: Counter


class ListenerUdpStats(StatBlock):
    """``listener.<address>.udp.*``."""

    downstream_rx_datagram_dropped: Counter


@attrs.frozen
class LbContext:
    """What a RING_HASH or MAGLEV balancer hashes for a session (``hash_policies``: the
    source IP or a fixed key)."""

    source: Address
    hash_key: str | None

    def lb_hash(self) -> int | None:
        return hash64(self.hash_key) if self.hash_key is not None else None


@attrs.define(eq=False)
class _Upstream:
    host: Host
    sock: socket.socket


async def _recv(sock: socket.socket, size: int) -> tuple[bytes, Address]:
    while True:
        try:
            data, addr = sock.recvfrom(size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        return data, (addr[0], addr[1])


class Session:
    def __init__(self, proxy: _Proxy, source: Address, cluster: Cluster) -> None:
        self.proxy = proxy
        self.source = source
        self.cluster = cluster
        self.udp_stats = ClusterUdpStats(cluster.scope.scope("udp."))
        self.nursery: trio.Nursery | None = None
        self.upstreams: dict[Host, _Upstream] = {}
        self.scope = trio.CancelScope()
        self.touch()

    def touch(self) -> None:
        idle = self.proxy.config.idle_timeout
        if idle is not None:
            self.scope.deadline = trio.current_time() + idle

    def _upstream(self, host: Host) -> _Upstream | None:
        up = self.upstreams.get(host)
        if up is not None:
            return up
        family = socket.AF_INET6 if ":" in host.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            source = self.cluster.config.source_address
            if source is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(source)
            sock.connect(host.address)  # a UDP connect sends nothing; it fixes the peer
        except OSError:
            sock.close()
            self.udp_stats.sess_tx_errors.value += 1
            return None
        up = self.upstreams[host] = _Upstream(host, sock)
        assert self.nursery is not None
        self.nursery.start_soon(self._receive, up)
        return up

    def send(self, data: bytes) -> None:
        """Forward one datagram from the client (never blocks: UDP drops instead)."""
        self.touch()
        cluster = self.cluster
        if self.proxy.config.per_packet_load_balancing or not self.upstreams:
            host = cluster.choose_host(self.proxy.lb_context(self.source))
            if host is None:
                cluster.stats.upstream_cx_none_healthy.value += 1
                return
        else:
            host = next(iter(self.upstreams))
        up = self._upstream(host)
        if up is None:
            return
        try:
            up.sock.send(data)
        except OSError:  # a full buffer or an ICMP error from an earlier datagram
            self.udp_stats.sess_tx_errors.value += 1
            return
        self.udp_stats.sess_tx_datagrams.value += 1
        cluster.stats.upstream_cx_tx_bytes_total.value += len(data)

    async def _receive(self, up: _Upstream) -> None:
        proxy = self.proxy
        stats = proxy.stats
        udp_stats = self.udp_stats
        limit = proxy.config.max_rx_datagram_size
        cstats = self.cluster.stats
        while True:
            try:
                data, _ = await _recv(up.sock, limit + 1)
            except OSError:  # ECONNREFUSED: the host's port is closed (ICMP)
                udp_stats.sess_rx_errors.value += 1
                continue
            if len(data) > limit:
                udp_stats.sess_rx_datagrams_dropped.value += 1
                continue
            self.touch()
            udp_stats.sess_rx_datagrams.value += 1
            cstats.upstream_cx_rx_bytes_total.value += len(data)
            try:
                proxy.sock.sendto(data, self.source)
            except OSError:
                stats.downstream_sess_tx_errors.value += 1
                continue
            stats.downstream_sess_tx_datagrams.value += 1
            stats.downstream_sess_tx_bytes.value += len(data)

    def close(self) -> None:
        for up in self.upstreams.values():
            trio.lowlevel.notify_closing(up.sock)
            up.sock.close()
        self.upstreams.clear()


class _Proxy:
    """One listener's sessions (the filter object may serve several listeners)."""

    def __init__(
        self,
        config: UdpProxyConfig,
        cluster_manager: ClusterManager,
        stats: UdpProxyStats,
        sock: socket.socket,
        listener_scope: Scope,
        max_rx_datagram_size: int,
    ) -> None:
        self.config = config
        self.cluster_manager = cluster_manager
        self.stats = stats
        self.sock = sock
        self.local: Address = sock.getsockname()[:2]
        self.listener_stats = ListenerUdpStats(listener_scope.scope("udp."))
        self.max_rx = max_rx_datagram_size
        self.sessions: dict[Address, Session] = {}

    def lb_context(self, source: Address) -> LbContext:
        cfg = self.config
        key = None
        if cfg.hash_source_ip:
            key = source[0]
        elif cfg.hash_key:
            key = cfg.hash_key
        return LbContext(source, key)

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        sock = self.sock
        stats = self.stats
        dropped = self.listener_stats.downstream_rx_datagram_dropped
        limit = self.max_rx
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    data, source = await _recv(sock, limit + 1)
                except OSError:
                    stats.downstream_sess_rx_errors.value += 1
                    continue
                if len(data) > limit:
                    dropped.value += 1
                    continue
                session = self.sessions.get(source)
                if session is None:
                    session = await self._new_session(source, nursery)
                    if session is None:
                        continue
                stats.downstream_sess_rx_datagrams.value += 1
                stats.downstream_sess_rx_bytes.value += len(data)
                session.send(data)

    async def _new_session(self, source: Address, nursery: trio.Nursery) -> Session | None:
        stats = self.stats
        name = self.config.route(source, self.local)
        cluster = self.cluster_manager.get(name) if name else None
        if cluster is None:
            stats.downstream_sess_no_route.value += 1
            return None
        if not cluster.breakers.connections.can_create():
            cluster.stats.upstream_cx_overflow.value += 1
            return None
        session = Session(self, source, cluster)
        self.sessions[source] = session
        cluster.breakers.connections.inc()
        stats.downstream_sess_total.value += 1
        stats.downstream_sess_active.value += 1
        await nursery.start(self._session_life, session)
        return session

    async def _session_life(self, session: Session, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
            self.stats.idle_timeout.value += 1
        finally:
            session.nursery = None
            self.sessions.pop(session.source, None)
            session.close()
            session.cluster.breakers.connections.dec()
            self.stats.downstream_sess_active.value -= 1


class UdpProxyFilter:
    """The ``UdpListenerFilter`` built from one ``UdpProxyConfig``."""

    def __init__(
        self,
        config: UdpProxyConfig,
        cluster_manager: ClusterManager,
        stats: UdpProxyStats,
        max_rx_datagram_size: int,
    ) -> None:
        self.config = config
        self.cluster_manager = cluster_manager
        self.stats = stats
        self.max_rx_datagram_size = max_rx_datagram_size

    async def serve(
        self,
        sock: socket.socket,
        scope: Scope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        proxy = _Proxy(
            self.config, self.cluster_manager, self.stats, sock, scope, self.max_rx_datagram_size
        )
        await proxy.run(task_status)
