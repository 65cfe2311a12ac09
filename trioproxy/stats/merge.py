"""One view of the stats of several worker processes (``--concurrency N``).

Theory of operation: a worker turns its ``Store`` into a ``snapshot`` — plain JSON-able data,
made only when the main process asks (an admin request or the periodic poll), never on the
request path. The main process ``merge``s its own store, the snapshots of the live workers and
the ``retired`` totals of workers that died into a fresh ``Store`` that the admin renders as
it renders a single process's.

How a stat merges is declared with it, as its ``import_mode`` (``trioproxy.stats.store``), and
travels in the snapshot; nothing here looks at names:

- ``Accumulate``: summed — each worker counts its own traffic, holds its own connections;
- ``NeverImport``: every worker holds a copy (cluster membership, listener and cluster counts,
  runtime keys, xDS versions and update counters, circuit-breaker ``*_open`` flags): the main
  process's own value when it sets one (``server.live``, ``server.state``, ``server.uptime`` …:
  the main's word is final), else the largest worker value — summing would multiply by N;
- ``Headroom``: what a worker has left under its own limit (``remaining_*``): the least;
- histograms are summed.

A worker that dies takes its gauges with it; its counters and histograms, as last
snapshotted, are kept in ``retired`` (``Accumulate`` counters added up, ``NeverImport`` ones the
largest) so that merged counters do not go backwards (increments since that worker's last
snapshot are lost). ``reset`` is ``/reset_counters`` applied to a snapshot already taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trioproxy.stats.store import ACCUMULATE, HEADROOM, IMPORT_MODES, Histogram, ImportMode, Store

Snapshot = dict[str, Any]


def _mode(entry: list[Any]) -> ImportMode:
    mode = entry[2] if len(entry) > 2 else ACCUMULATE
    if mode not in IMPORT_MODES:
        raise ValueError(f"unknown import mode {mode!r}")
    return mode


def _combine(mode: ImportMode, a: int, b: int) -> int:
    if mode == ACCUMULATE:
        return a + b
    if mode == HEADROOM:
        return min(a, b)
    return max(a, b)


def snapshot(store: Store) -> Snapshot:
    """The store as plain data (``json.dumps``-able): ``[value, used, import_mode]`` per
    counter and gauge."""
    return {
        "counters": {c.name: [c.value, c.used, c.import_mode] for c in store.counters()},
        "gauges": {g.name: [g.value, g.used, g.import_mode] for g in store.gauges()},
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
    seen: set[str] = set()  # stats some part has given a value
    own: set[str] = set()  # NeverImport stats the main process sets: its value is final
    parts = [snapshot(main), *workers]
    if retired is not None:
        parts.append(retired)
    for i, part in enumerate(parts):
        for kind, get in (("counters", out.counter), ("gauges", out.gauge)):
            for name, entry in part.get(kind, {}).items():
                value, used, mode = int(entry[0]), bool(entry[1]), _mode(entry)
                stat = get(name, mode)
                key = f"{kind}:{name}"
                if key in own:
                    continue
                if i == 0 and mode != ACCUMULATE:
                    if not used:
                        continue  # the main lacks it: the workers' values
                    own.add(key)
                if key in seen:
                    stat.value = _combine(stat.import_mode, stat.value, value)
                else:
                    stat.value = value
                    seen.add(key)
                if used:
                    stat.mark_used()
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
    """``retired`` plus the counters and histograms of a worker that died."""
    counters = dict(retired.get("counters", {}))
    for name, entry in last.get("counters", {}).items():
        value, used, mode = int(entry[0]), bool(entry[1]), _mode(entry)
        before = counters.get(name)
        if before is not None:
            value = _combine(mode, int(before[0]), value)
            used = used or bool(before[1])
        counters[name] = [value, used, mode]
    histograms = dict(retired.get("histograms", {}))
    for name, data in last.get("histograms", {}).items():
        h = Histogram(name, data["unit"])
        for earlier in (histograms.get(name), data):
            if earlier is not None:
                _add_histogram(h, earlier)
        h.interval = {}  # a dead worker has no current interval
        histograms[name] = _histogram(h)
    return {"counters": counters, "gauges": {}, "histograms": histograms}


def reset(snap: Snapshot) -> Snapshot:
    """``snap`` as it would be after ``/reset_counters``: counters and histograms at zero
    (a used counter stays used), gauges untouched."""
    counters = {
        name: [0, bool(entry[1]) or int(entry[0]) != 0, _mode(entry)]
        for name, entry in snap.get("counters", {}).items()
    }
    histograms = {
        name: _histogram(Histogram(name, data["unit"]))
        for name, data in snap.get("histograms", {}).items()
    }
    return {**snap, "counters": counters, "histograms": histograms}
