"""One view of the stats of several worker processes (``--concurrency N``).

Theory of operation: a worker turns its ``Store`` into a ``snapshot`` — plain JSON-able data,
made only when the main process asks (an admin request or the periodic poll), never on the
request path. The main process ``merge``s its own store, the snapshots of the live workers and
the ``retired`` totals of workers that died into a fresh ``Store`` that the admin renders as
it renders a single process's.

How a stat merges, by name (``gauge_rule``, ``counter_rule``):

- counters and histograms are summed: each worker counts its own traffic;
- gauges are summed when each worker holds a share of the quantity (connections, active
  requests, buffered bytes: ``Accumulate`` in Envoy's hot-restart terms);
- gauges that describe configuration or state every worker holds a copy of (cluster
  membership, listener and cluster counts, runtime keys, circuit-breaker ``*_open`` flags,
  xDS versions, outlier ejections) take the largest worker value: summing would multiply
  them by N. So do the counters of config changes that every worker applies
  (``cluster_manager.cluster_added``, ``listener_manager.listener_added`` …);
- the main process's own ``server.*`` state gauges (``live``, ``state``, ``concurrency``,
  ``uptime``, ``version``, ``hot_restart_epoch``: ``NeverImport`` in Envoy) are the main's.

A worker that dies takes its gauges with it; its counters and histograms, as last
snapshotted, are kept in ``retired`` so that merged counters do not go backwards (increments
since that worker's last snapshot are lost).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from trioproxy.stats.store import Histogram, Store

Snapshot = dict[str, Any]
Rule = Literal["sum", "max", "main"]

#: Gauges the main process owns (Envoy's ``NeverImport`` server gauges).
MAIN_GAUGES = frozenset(
    "server." + name
    for name in ("live", "state", "concurrency", "uptime", "version", "hot_restart_epoch")
)
#: Gauges every worker holds a copy of: the largest value, not the sum.
_SAME_IN_EVERY_WORKER = re.compile(
    r"(^listener_manager\.(total_listeners_\w+|workers_started)$"
    r"|^cluster_manager\.(active|warming)_clusters$"
    r"|^runtime\."
    r"|\.membership_(total|healthy|degraded|excluded)$|\.max_host_weight$"
    r"|\.health_check\.(healthy|degraded)$"
    r"|\.circuit_breakers\.\w+\.(cx|rq|rq_pending|rq_retry|cx_pool)_open$"
    r"|\.outlier_detection\.ejections_active$"
    r"|\.(version|update_time|connected_state)$)"
)
#: Counters of config changes that every worker applies once.
_CONFIG_COUNTERS = re.compile(
    r"^(cluster_manager\.cluster_(added|modified|removed|updated\w*)"
    r"|listener_manager\.listener_(added|modified|removed|stopped|in_place_updated)"
    r"|runtime\.\w+)$"
)


def gauge_rule(name: str) -> Rule:
    if name in MAIN_GAUGES:
        return "main"
    return "max" if _SAME_IN_EVERY_WORKER.search(name) else "sum"


def counter_rule(name: str) -> Rule:
    return "max" if _CONFIG_COUNTERS.search(name) else "sum"


def snapshot(store: Store) -> Snapshot:
    """The store as plain data (``json.dumps``-able)."""
    return {
        "counters": {c.name: [c.value, c.used] for c in store.counters()},
        "gauges": {g.name: [g.value, g.used] for g in store.gauges()},
        "histograms": {h.name: _histogram(h) for h in store.histograms()},
    }


def _histogram(h: Histogram) -> dict[str, Any]:
    return {
        "unit": h.unit,
        "cumulative": list(h.cumulative.items()),
        "interval": list(h.interval.items()),
        "count": h.count,
        "sum": h.sum,
    }


def merge(main: Store, workers: Iterable[Snapshot], retired: Snapshot | None = None) -> Store:
    """A new store: ``main``'s stats, each worker snapshot and the retired totals, merged."""
    out = Store()
    parts = [snapshot(main), *workers]
    if retired is not None:
        parts.append(retired)
    for i, part in enumerate(parts):
        from_main = i == 0
        for name, (value, used) in part.get("counters", {}).items():
            c = out.counter(name)
            c.value = c.value + value if counter_rule(name) == "sum" else max(c.value, value)
            if used:
                c.mark_used()
        for name, (value, used) in part.get("gauges", {}).items():
            rule = gauge_rule(name)
            if rule == "main" and not from_main:
                out.gauge(name)  # the name exists even when the main lacks it
                continue
            g = out.gauge(name)
            g.value = max(g.value, value) if rule == "max" and g.used else g.value + value
            if used:
                g.mark_used()
        for name, data in part.get("histograms", {}).items():
            _add_histogram(out.histogram(name, data["unit"]), data)
    return out


def _add_histogram(h: Histogram, data: Mapping[str, Any]) -> None:
    for table, pairs in ((h.cumulative, data["cumulative"]), (h.interval, data["interval"])):
        for bucket, n in pairs:
            table[bucket] = table.get(bucket, 0) + n
    h.count += data["count"]
    h.sum += data["sum"]


def retire(retired: Snapshot, last: Snapshot) -> Snapshot:
    """``retired`` plus the summed counters and histograms of a worker that died."""
    counters = dict(retired.get("counters", {}))
    for name, (value, used) in last.get("counters", {}).items():
        if counter_rule(name) == "sum":
            before = counters.get(name, [0, False])
            counters[name] = [before[0] + value, before[1] or used]
    histograms = dict(retired.get("histograms", {}))
    for name, data in last.get("histograms", {}).items():
        h = Histogram(name, data["unit"])
        for earlier in (histograms.get(name), data):
            if earlier is not None:
                _add_histogram(h, earlier)
        h.interval = {}  # a dead worker has no current interval
        histograms[name] = _histogram(h)
    return {"counters": counters, "gauges": {}, "histograms": histograms}
