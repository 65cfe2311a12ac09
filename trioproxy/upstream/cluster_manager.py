"""Clusters and the cluster manager.

Theory of operation: a ``Cluster`` owns one config, its stats (``cluster.<name>.``), its circuit
breakers, its current host list (all priorities), a load balancer built over that list and one
``Http1Pool`` per host, created on first use. ``set_hosts`` swaps the host list and balancer in
one step (no await in between, so a request sees the old set or the new one, never a mix) and
drains the pools of hosts that left. STATIC clusters get their hosts at construction; DNS
clusters get them from a ``DnsResolver`` task; EDS clusters from ``assign``; ORIGINAL_DST
clusters make a host per original destination when one is picked (``choose_host``) and the
periodic sweep forgets those unpicked for ``cleanup_interval``.

The ``ClusterManager`` holds the clusters by name. ``run`` owns a nursery with the DNS refresh
tasks and one idle-connection sweep task; it resolves every DNS cluster once (Envoy's init
manager: those clusters are "warming" meanwhile), then calls ``task_status.started()``. A name
that does not resolve leaves its cluster empty; requests then get 503 UH, the server lives on.
``add_or_update`` / ``remove`` are the hooks for dynamic config (xDS): a new or changed cluster
warms (first resolution) before it replaces the old one, whose pools drain.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from trioproxy.errors import UpstreamError
from trioproxy.stats import Store
from trioproxy.upstream import lb
from trioproxy.upstream.address import parse_host_port
from trioproxy.upstream.circuit_breaker import CircuitBreakers
from trioproxy.upstream.config import CircuitBreakerThresholds, ClusterConfig, EndpointConfig
from trioproxy.upstream.dns import DnsResolver, next_hosts
from trioproxy.upstream.h2_client import AutoPool, H2Pool
from trioproxy.upstream.health_check import HealthChecker
from trioproxy.upstream.host import Host
from trioproxy.upstream.outlier import OutlierDetector
from trioproxy.upstream.pool import Http1Pool, PendingQueue
from trioproxy.upstream.stats import ClusterManagerStats, ClusterStats

SWEEP_INTERVAL = 5.0  # at most; shorter when an idle timeout is shorter


@attrs.frozen
class ClusterInfo:
    """What the admin shows about a cluster besides its hosts."""

    circuit_breakers: CircuitBreakerThresholds
    added_via_api: bool = False
    #: ``alt_stat_name``, else the name: what the stats (``cluster.<it>.``) and access logs
    #: call the cluster
    observability_name: str = ""


class Cluster:
    def __init__(self, config: ClusterConfig, store: Store, *, added_via_api: bool = False) -> None:
        self.name = config.name
        self.config = config
        observed = config.alt_stat_name or config.name
        self.scope = store.scope(f"cluster.{observed}.")
        self.stats = ClusterStats(self.scope)
        self._transport_socket_matches = self.scope.counter("default.total_match_count")
        self.breakers = CircuitBreakers(config.circuit_breakers, self.scope)
        self.info = ClusterInfo(config.circuit_breakers, added_via_api, observed)
        self.queue = PendingQueue()
        self.hosts: list[Host] = []
        self._pools: dict[Host, Http1Pool | H2Pool | AutoPool] = {}
        #: The cluster manager's nursery: HTTP/2 connections run their reader tasks there.
        self.nursery: trio.Nursery | None = None
        self._lb = self._build_lb()
        self.outlier: OutlierDetector | None = None
        if config.outlier is not None:
            self.outlier = OutlierDetector(
                config.outlier, self.scope, lambda: self.hosts, self.on_health_change
            )
        self.health: HealthChecker | None = None
        if config.health_check is not None:
            self.health = HealthChecker(
                config.health_check,
                config.name,
                self.scope,
                lambda: self.hosts,
                self.on_health_change,
                lambda: self.stats.upstream_cx_total.value > 0,
                connect_timeout=config.connect_timeout,
                tls=config.upstream_tls,
                keepalive=config.tcp_keepalive,
                proper_case_headers=config.proper_case_headers,
            )
        self.resolver: DnsResolver | None = None
        self._original_dst = config.original_dst
        self._last_used: dict[Host, float] = {}  # ORIGINAL_DST hosts → last pick
        self._hosts_by_address: dict[tuple[str, int], Host] = {}
        if config.type == "STATIC":
            self.set_hosts(
                [
                    Host(
                        address=(e.address, e.port),
                        hostname=e.hostname,
                        weight=e.weight,
                        healthy=e.healthy,
                        locality=e.locality,
                        priority=e.priority,
                        locality_weight=e.locality_weight,
                    )
                    for e in config.endpoints
                ]
            )
        elif config.type not in ("EDS", "ORIGINAL_DST"):  # EDS: hosts come from ``assign``
            self.resolver = DnsResolver(self)

    def assign(self, endpoints: Sequence[EndpointConfig]) -> bool:
        """EDS: replace the hosts, keeping those whose address did not change (their pools and
        stats live on). ``False`` when nothing changed."""
        before = [(h.weight, h.priority, h.healthy, h.locality_weight) for h in self.hosts]
        changed = self.set_hosts(next_hosts(self.hosts, [(e, (e.address,)) for e in endpoints]))
        after = [(h.weight, h.priority, h.healthy, h.locality_weight) for h in self.hosts]
        if not changed and after != before:  # the same hosts, with new weights or health
            self.on_health_change()
            return True
        return changed

    # ---------------------------------------------------------------- per request

    def choose_host(self, context: Any = None) -> Host | None:
        """A host for the next request, or ``None``: the caller answers 503 UH and counts
        ``upstream_cx_none_healthy``. Counts ``lb_healthy_panic`` for picks in panic mode.

        ``context`` is the ``HttpStream`` (router) or ``DownstreamConnection`` (tcp_proxy) the
        host is for; an ORIGINAL_DST cluster takes the host's address from it."""
        if self._original_dst is not None:
            return self._original_dst_host(context)
        balancer = self._lb
        host = balancer.choose(context)
        if balancer.panic and host is not None:
            self.stats.lb_healthy_panic.value += 1
        return host

    def pool(self, host: Host) -> Http1Pool | H2Pool | AutoPool:
        pool = self._pools.get(host)
        if pool is None:
            config = self.config
            auto = config.auto_http  # (refused without TLS, as Envoy refuses it)
            if (config.http2 or auto) and self.nursery is None:
                raise UpstreamError("the cluster manager is not running", flag="UF")
            if auto:
                http1 = Http1Pool(host, config, self.stats, self.breakers, self.queue)
                assert self.nursery is not None
                pool = AutoPool(host, config, self.stats, self.breakers, self.nursery, http1)
            elif config.http2:
                assert self.nursery is not None
                pool = H2Pool(host, config, self.stats, self.breakers, self.nursery)
            else:
                pool = Http1Pool(host, config, self.stats, self.breakers, self.queue)
            self._pools[host] = pool
        return pool

    def try_start_request(self) -> bool:
        """Take a ``max_requests`` slot; ``False`` when none is left: the caller answers 503 UO
        and counts ``upstream_rq_pending_overflow`` (Envoy's stat for this breaker too)."""
        requests = self.breakers.requests
        if requests.count < requests.limit:
            requests.inc()
            return True
        return False

    def finish_request(self) -> None:
        self.breakers.requests.dec()

    def try_start_retry(self) -> bool:
        """Take a ``max_retries`` slot; on ``False`` the caller counts
        ``upstream_rq_retry_overflow`` and does not retry."""
        retries = self.breakers.retries
        if retries.count < retries.limit:
            retries.inc()
            return True
        return False

    def finish_retry(self) -> None:
        self.breakers.retries.dec()

    def _original_dst_host(self, context: Any) -> Host | None:
        """Envoy's original destination balancer: the address from the
        ``x-envoy-original-dst-host`` header when ``use_http_header`` (an invalid one gives no
        host), else the downstream connection's local address if a listener filter restored
        it (``original_dst``). The host is made on first use and forgotten (its idle
        connections closed) once unpicked for ``cleanup_interval``, as in Envoy."""
        od = self._original_dst
        assert od is not None
        address: tuple[str, int] | None = None
        headers = getattr(context, "request_headers", None)
        if od.use_http_header and headers is not None:
            value = headers.get(od.http_header_name)
            if value is not None:
                address = parse_host_port(value)
                if address is None:
                    return None
        if address is None:
            conn = getattr(context, "connection", None) or getattr(context, "info", None)
            if conn is None or not conn.local_address_restored:
                return None
            address = conn.local_address
        if od.port_override is not None:
            address = (address[0], od.port_override)
        host = self._hosts_by_address.get(address)
        if host is None:
            host = Host(address=address)
            self._hosts_by_address[address] = host
            self.set_hosts([*self.hosts, host])
        self._last_used[host] = trio.current_time()
        return host

    def _forget_unused_hosts(self, now: float) -> None:
        od = self._original_dst
        assert od is not None
        stale = [
            h
            for h, used in self._last_used.items()
            if now - used >= od.cleanup_interval and not h.rq_active
        ]
        if stale:
            for h in stale:
                del self._last_used[h]
                del self._hosts_by_address[h.address]
            gone = set(stale)
            self.set_hosts([h for h in self.hosts if h not in gone])

    # ---------------------------------------------------------------- membership

    def _build_lb(self) -> lb.LoadBalancer:
        c = self.config
        if c.lb_policy == "CLUSTER_PROVIDED":  # ORIGINAL_DST picks in ``choose_host``
            return lb.LoadBalancer(())
        return lb.build_for_cluster(
            c.lb_policy,
            self.hosts,
            locality_weighted=c.locality_weighted,
            overprovisioning=c.overprovisioning,
            choice_count=c.choice_count,
            active_request_bias=c.active_request_bias,
            panic_threshold=c.healthy_panic_threshold,
            minimum_ring_size=c.hash_lb.minimum_ring_size,
            maximum_ring_size=c.hash_lb.maximum_ring_size,
            table_size=c.hash_lb.table_size,
            hash_function=c.hash_lb.hash_function,
            use_hostname_for_hashing=c.hash_lb.use_hostname_for_hashing,
        )

    def set_hosts(self, hosts: list[Host]) -> bool:
        """Swap in a new host list; ``False`` (``update_no_rebuild``) when nothing changed."""
        stats = self.stats
        old = self.hosts
        if len(old) == len(hosts) and all(a is b for a, b in zip(old, hosts, strict=True)):
            stats.update_no_rebuild.value += 1
            self._update_gauges()
            return False
        known = set(old)
        if self.health is not None:
            for h in hosts:
                if h not in known:
                    h.hc_failed = True  # until its first check passes
        # Envoy resolves a transport socket for every new host: "default" is the match name
        # when a cluster has no transport_socket_matches.
        self._transport_socket_matches.value += sum(1 for h in hosts if h not in known)
        self.hosts = hosts
        self._lb = self._build_lb()
        stats.membership_change.value += 1
        self._update_gauges()
        kept = set(hosts)
        for host in [h for h in self._pools if h not in kept]:
            self._pools.pop(host).drain()
        if self.health is not None:
            self.health.hosts_changed()
        return True

    def on_health_change(self) -> None:
        """Rebuild the balancer after a host's ``healthy`` or ``ejected`` flag changed."""
        self._lb = self._build_lb()
        self._update_gauges()

    def _update_gauges(self) -> None:
        s = self.stats
        s.membership_total.value = len(self.hosts)
        s.membership_healthy.value = sum(1 for h in self.hosts if h.usable)
        s.membership_degraded.value = 0
        s.membership_excluded.value = 0
        s.max_host_weight.value = max((h.weight for h in self.hosts), default=0)

    # ---------------------------------------------------------------- lifecycle

    def sweep(self, now: float) -> None:
        if self._original_dst is not None:
            self._forget_unused_hosts(now)
        for pool in list(self._pools.values()):
            pool.sweep(now)

    def drain(self) -> None:
        for pool in self._pools.values():
            pool.drain()
        if self.outlier is not None:
            self.outlier.stop()
        if self.health is not None:
            self.health.stop()

    async def aclose(self) -> None:
        self.drain()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<Cluster {self.name} {self.config.type} hosts={len(self.hosts)}>"


class ClusterManager:
    def __init__(self, configs: Sequence[ClusterConfig], store: Store) -> None:
        self.store = store
        self.stats = ClusterManagerStats(store.scope("cluster_manager."))
        self._clusters: dict[str, Cluster] = {}
        self._dns_scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        for config in configs:
            self._clusters[config.name] = Cluster(config, store)
            self.stats.cluster_added.value += 1
        self.stats.warming_clusters.value = sum(
            1 for c in self._clusters.values() if c.resolver is not None
        )
        self.stats.active_clusters.value = len(self._clusters) - self.stats.warming_clusters.value

    @property
    def clusters(self) -> Mapping[str, Cluster]:
        return self._clusters

    def get(self, name: str) -> Cluster | None:
        return self._clusters.get(name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve every DNS cluster once, report ready, then keep them fresh; sweep idle pools."""
        try:
            async with trio.open_nursery() as nursery:
                async with trio.open_nursery() as init:
                    for cluster in list(self._clusters.values()):
                        if cluster.resolver is not None:
                            init.start_soon(self._start_dns, nursery, cluster)
                # health-checked clusters are ready once each host had its first check
                async with trio.open_nursery() as init:
                    for cluster in list(self._clusters.values()):
                        if cluster.health is not None:
                            init.start_soon(nursery.start, cluster.health.run)
                self.stats.warming_clusters.value = 0
                self.stats.active_clusters.value = len(self._clusters)
                self._nursery = nursery
                for c in self._clusters.values():
                    c.nursery = nursery
                    if c.outlier is not None:
                        nursery.start_soon(c.outlier.run)
                nursery.start_soon(self._sweep_loop)
                task_status.started()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def _start_dns(self, nursery: trio.Nursery, cluster: Cluster) -> None:
        await nursery.start(self._run_dns, cluster)

    async def _run_dns(
        self, cluster: Cluster, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert cluster.resolver is not None
        with trio.CancelScope() as scope:
            self._dns_scopes[cluster.name] = scope
            try:
                await cluster.resolver.run(task_status=task_status)
            finally:
                if self._dns_scopes.get(cluster.name) is scope:
                    del self._dns_scopes[cluster.name]

    async def _sweep_loop(self) -> None:
        while True:
            timeouts = [
                c.config.idle_timeout
                for c in self._clusters.values()
                if c.config.idle_timeout is not None
            ]
            timeouts += [
                c.config.original_dst.cleanup_interval
                for c in self._clusters.values()
                if c.config.original_dst is not None
            ]
            timeouts += [
                c.config.max_connection_duration
                for c in self._clusters.values()
                if c.config.max_connection_duration is not None
            ]
            interval = min([SWEEP_INTERVAL, *(t / 2 for t in timeouts)])
            await trio.sleep(interval if interval > 0 and not math.isnan(interval) else 1.0)
            now = trio.current_time()
            for cluster in list(self._clusters.values()):
                cluster.sweep(now)

    async def add_or_update(
        self,
        config: ClusterConfig,
        *,
        added_via_api: bool = True,
        warm: Callable[[Cluster], Awaitable[None]] | None = None,
    ) -> bool:
        """Add or replace a cluster once it is warm — after its first DNS resolution, or after
        ``warm(cluster)`` returns (EDS: its first endpoints); the cluster it replaces serves
        until then. ``False`` if unchanged."""
        old = self._clusters.get(config.name)
        if old is not None and old.config == config:
            return False
        # the old cluster's DNS task stops before the new one's stats change under it
        old_scope = self._dns_scopes.pop(config.name, None)
        if old_scope is not None:
            old_scope.cancel()
        cluster = Cluster(config, self.store, added_via_api=added_via_api)
        cluster.nursery = self._nursery
        if cluster.outlier is not None and self._nursery is not None:
            self._nursery.start_soon(cluster.outlier.run)
        if warm is not None:
            self.stats.warming_clusters.value += 1
            try:
                await warm(cluster)
            finally:
                self.stats.warming_clusters.value -= 1
        if cluster.resolver is not None:
            self.stats.warming_clusters.value += 1
            try:
                if self._nursery is not None:
                    await self._nursery.start(self._run_dns, cluster)
                else:
                    await cluster.resolver.refresh()
            finally:
                self.stats.warming_clusters.value -= 1
        if cluster.health is not None and self._nursery is not None:
            self.stats.warming_clusters.value += 1
            try:
                await self._nursery.start(cluster.health.run)
            finally:
                self.stats.warming_clusters.value -= 1
        if old is not None:
            old.drain()
            self.stats.cluster_modified.value += 1
        else:
            self.stats.cluster_added.value += 1
        self._clusters[config.name] = cluster
        self.stats.active_clusters.value = len(self._clusters)
        return True

    def remove(self, name: str) -> bool:
        """Remove a cluster; its pools drain (requests in flight finish)."""
        cluster = self._clusters.pop(name, None)
        if cluster is None:
            return False
        scope = self._dns_scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        cluster.drain()
        self.stats.cluster_removed.value += 1
        self.stats.active_clusters.value = len(self._clusters)
        return True

    async def aclose(self) -> None:
        """Close every pool's connections."""
        for cluster in self._clusters.values():
            cluster.drain()
        await trio.lowlevel.checkpoint()
