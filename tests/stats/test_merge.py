"""Merging the stats of several workers into one view (``trioproxy.stats.merge``), sans IO.

How a stat merges is declared with it (its ``import_mode``); these tests build the stats
through the same ``StatBlock``s and constructors the proxy uses, so a stat declared with the
wrong mode shows here."""

from __future__ import annotations

import json

from trioproxy.listener.manager import ListenerManagerStats
from trioproxy.server import ServerStats
from trioproxy.stats import Store
from trioproxy.stats.merge import merge, reset, retire, snapshot
from trioproxy.stats.store import NEVER_IMPORT
from trioproxy.upstream.stats import (
    CircuitBreakerStats,
    ClusterManagerStats,
    ClusterStats,
    RemainingStats,
)
from trioproxy.xds.manager import SubscriptionStats

UNLIMITED = 2**64 - 1


def _worker(rq: int, cx_active: int) -> Store:
    store = Store()
    store.counter("http.ingress.downstream_rq_total").inc(rq)
    store.gauge("http.ingress.downstream_cx_active").set(cx_active)
    cluster = ClusterStats(store.scope("cluster.backend."))
    cluster.membership_total.set(3)
    cluster.membership_change.inc()
    cluster.update_attempt.inc(2)
    ServerStats(store.scope("server.")).live.set(1)
    ClusterManagerStats(store.scope("cluster_manager.")).cluster_added.inc()
    ListenerManagerStats(store.scope("listener_manager.")).total_listeners_active.set(1)
    cds = SubscriptionStats(store.scope("cluster_manager.cds."))
    cds.update_attempt.inc(4)
    cds.update_success.inc(4)
    cds.init_fetch_timeout.inc()
    cds.version.set(17)
    for ms in (1, 2, 250):
        store.histogram("cluster.backend.upstream_rq_time").record(ms * rq)
    return store


def _value(store: Store, name: str) -> int:
    for stat in (*store.counters(), *store.gauges()):
        if stat.name == name:
            return stat.value
    raise KeyError(name)


def _wire(store: Store) -> dict[str, object]:
    """A snapshot as it crosses the control channel."""
    return json.loads(json.dumps(snapshot(store)))  # type: ignore[no-any-return]


def test_traffic_adds_up_and_copies_of_state_do_not() -> None:
    main = Store()
    ServerStats(main.scope("server.")).live.set(0)  # draining: the main's word is final
    a, b = _worker(rq=3, cx_active=2), _worker(rq=5, cx_active=1)
    merged = merge(main, [_wire(w) for w in (a, b)])
    assert _value(merged, "http.ingress.downstream_rq_total") == 8
    assert _value(merged, "http.ingress.downstream_cx_active") == 3
    assert _value(merged, "cluster.backend.membership_total") == 3
    assert _value(merged, "cluster_manager.cluster_added") == 1
    assert _value(merged, "listener_manager.total_listeners_active") == 1
    assert _value(merged, "server.live") == 0
    (hist,) = [h for h in merged.histograms() if h.name == "cluster.backend.upstream_rq_time"]
    assert hist.count == 6
    assert hist.sum == 253 * 3 + 253 * 5


def test_config_updates_every_worker_applies_are_counted_once() -> None:
    merged = merge(Store(), [_wire(_worker(rq=1, cx_active=0)) for _ in range(4)])
    assert _value(merged, "cluster_manager.cds.update_attempt") == 4
    assert _value(merged, "cluster_manager.cds.update_success") == 4
    assert _value(merged, "cluster_manager.cds.init_fetch_timeout") == 1
    assert _value(merged, "cluster_manager.cds.version") == 17
    assert _value(merged, "cluster.backend.membership_change") == 1
    assert _value(merged, "cluster.backend.update_attempt") == 2
    assert _value(merged, "http.ingress.downstream_rq_total") == 4


def test_circuit_breaker_headroom_is_the_least_any_worker_has_left() -> None:
    workers = []
    for used in (0, 3):
        store = Store()
        remaining = RemainingStats(store.scope("cluster.b.circuit_breakers.default."))
        remaining.remaining_rq.set(1024 - used)
        remaining.remaining_cx_pools.set(UNLIMITED)
        CircuitBreakerStats(store.scope("cluster.b.circuit_breakers.default.")).rq_open.set(
            int(used > 0)
        )
        workers.append(_wire(store))
    merged = merge(Store(), workers)
    assert _value(merged, "cluster.b.circuit_breakers.default.remaining_rq") == 1021
    assert _value(merged, "cluster.b.circuit_breakers.default.remaining_cx_pools") == UNLIMITED
    assert _value(merged, "cluster.b.circuit_breakers.default.rq_open") == 1  # open somewhere


def test_the_mode_travels_with_the_stat_not_its_name() -> None:
    a, b = Store(), Store()
    for store in (a, b):
        store.gauge("custom.same_everywhere", NEVER_IMPORT).set(5)
        store.gauge("custom.share").set(5)
    merged = merge(Store(), [_wire(a), _wire(b)])
    assert _value(merged, "custom.same_everywhere") == 5
    assert _value(merged, "custom.share") == 10


def test_unused_stays_unused_and_used_stays_used() -> None:
    a, b = Store(), Store()
    a.counter("x.never")
    b.counter("x.reset").inc()
    b.reset_counters()  # used once, now zero: usedonly still shows it
    merged = merge(Store(), [snapshot(a), snapshot(b)])
    used = {c.name: c.used for c in merged.counters()}
    assert used == {"x.never": False, "x.reset": True}


def test_a_dead_workers_counters_are_kept_and_its_gauges_dropped() -> None:
    dead, alive = _worker(rq=4, cx_active=7), _worker(rq=1, cx_active=1)
    retired = retire({}, _wire(dead))
    restarted = Store()  # the dead worker's replacement, fresh
    restarted.counter("http.ingress.downstream_rq_total").inc(2)
    ClusterManagerStats(restarted.scope("cluster_manager.")).cluster_added.inc()
    merged = merge(Store(), [snapshot(alive), snapshot(restarted)], retired)
    assert _value(merged, "http.ingress.downstream_rq_total") == 4 + 1 + 2
    assert _value(merged, "http.ingress.downstream_cx_active") == 1
    assert _value(merged, "cluster_manager.cluster_added") == 1  # not counted twice
    retired = retire(retired, snapshot(restarted))
    assert retired["counters"]["http.ingress.downstream_rq_total"][0] == 6
    assert retired["counters"]["cluster_manager.cds.update_attempt"][0] == 4  # the largest
    # Every worker restarted since: config counters do not go back to a fresh worker's.
    merged = merge(Store(), [snapshot(restarted)], retired)
    assert _value(merged, "cluster_manager.cds.update_attempt") == 4


def test_reset_zeroes_counters_and_histograms_of_a_snapshot_and_keeps_gauges() -> None:
    snap = reset(_wire(_worker(rq=3, cx_active=2)))
    merged = merge(Store(), [snap])
    assert _value(merged, "http.ingress.downstream_rq_total") == 0
    assert {c.name: c.used for c in merged.counters()}["http.ingress.downstream_rq_total"]
    assert _value(merged, "http.ingress.downstream_cx_active") == 2
    (hist,) = [h for h in merged.histograms() if h.name == "cluster.backend.upstream_rq_time"]
    assert hist.count == 0
