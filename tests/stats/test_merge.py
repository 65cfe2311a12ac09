"""Merging the stats of several workers into one view (``trioproxy.stats.merge``), sans IO."""

from __future__ import annotations

import json

from trioproxy.server import ServerStats
from trioproxy.stats import Store
from trioproxy.stats.merge import gauge_rule, merge, retire, snapshot


def _worker(rq: int, cx_active: int) -> Store:
    store = Store()
    store.counter("http.ingress.downstream_rq_total").inc(rq)
    store.gauge("http.ingress.downstream_cx_active").set(cx_active)
    store.gauge("cluster.backend.membership_total").set(3)
    store.gauge("server.live").set(1)
    store.counter("cluster_manager.cluster_added").inc()
    for ms in (1, 2, 250):
        store.histogram("cluster.backend.upstream_rq_time").record(ms * rq)
    return store


def _value(store: Store, name: str) -> int:
    for stat in (*store.counters(), *store.gauges()):
        if stat.name == name:
            return stat.value
    raise KeyError(name)


def test_traffic_adds_up_and_copies_of_state_do_not() -> None:
    main = Store()
    ServerStats(main.scope("server.")).live.set(0)  # draining: the main's word is final
    a, b = _worker(rq=3, cx_active=2), _worker(rq=5, cx_active=1)
    merged = merge(main, [json.loads(json.dumps(snapshot(w))) for w in (a, b)])
    assert _value(merged, "http.ingress.downstream_rq_total") == 8
    assert _value(merged, "http.ingress.downstream_cx_active") == 3
    assert _value(merged, "cluster.backend.membership_total") == 3
    assert _value(merged, "cluster_manager.cluster_added") == 1
    assert _value(merged, "server.live") == 0
    (hist,) = [h for h in merged.histograms() if h.name == "cluster.backend.upstream_rq_time"]
    assert hist.count == 6
    assert hist.sum == 253 * 3 + 253 * 5


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
    retired = retire({}, json.loads(json.dumps(snapshot(dead))))
    restarted = Store()  # the dead worker's replacement, fresh
    restarted.counter("http.ingress.downstream_rq_total").inc(2)
    merged = merge(Store(), [snapshot(alive), snapshot(restarted)], retired)
    assert _value(merged, "http.ingress.downstream_rq_total") == 4 + 1 + 2
    assert _value(merged, "http.ingress.downstream_cx_active") == 1
    assert _value(merged, "cluster_manager.cluster_added") == 1  # not counted twice
    retired = retire(retired, snapshot(restarted))
    assert retired["counters"]["http.ingress.downstream_rq_total"][0] == 6


def test_gauge_rules() -> None:
    assert gauge_rule("server.live") == "main"
    assert gauge_rule("server.total_connections") == "sum"
    assert gauge_rule("cluster.x.upstream_cx_active") == "sum"
    assert gauge_rule("cluster.x.circuit_breakers.default.rq_open") == "max"
    assert gauge_rule("cluster.x.circuit_breakers.default.remaining_rq") == "sum"
    assert gauge_rule("listener_manager.total_listeners_active") == "max"
    assert gauge_rule("cluster_manager.cds.version") == "max"
    assert gauge_rule("runtime.num_keys") == "max"
