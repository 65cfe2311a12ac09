"""The periodic stats flush: every ``stats_flush_interval`` (default 5 s, as Envoy) the
histograms' current interval ends, and each stats sink gets a snapshot of what changed.

A sink (``trioproxy.stats.flush.StatsSink``, registered through ``trioproxy_stat_sinks``)
receives the counters with their increase since the last flush, the gauges, and each
histogram's buckets of the interval that just ended. Counters and gauges never touched are
left out, as Envoy's sinks do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from trioproxy.stats.store import Counter, Gauge, Histogram, Store

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 5.0


@attrs.frozen
class Snapshot:
    counters: Sequence[tuple[Counter, int]]  # (counter, increase since the last flush)
    gauges: Sequence[Gauge]
    histograms: Sequence[tuple[Histogram, dict[float, int]]]  # (histogram, bucket counts)


class StatsSink(Protocol):
    async def flush(self, snapshot: Snapshot) -> None:
        """Send the snapshot; must not raise (count and log failures instead). A sink with
        a ``close()`` method has it called when the server stops."""


class StatsFlusher:
    def __init__(
        self,
        store: Store,
        sinks: Sequence[StatsSink] = (),
        interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        self.store = store
        self.sinks = tuple(sinks)
        self.interval = interval
        self._last: dict[str, int] = {}

    def snapshot(self) -> Snapshot:
        last = self._last
        counters = []
        for c in self.store.counters():
            if not c.used:
                continue
            counters.append((c, max(c.value - last.get(c.name, 0), 0)))
            last[c.name] = c.value
        gauges = [g for g in self.store.gauges() if g.used]
        histograms = []
        for h in self.store.histograms():
            done = h.flush_interval()
            if done:
                histograms.append((h, done))
        return Snapshot(counters, gauges, histograms)

    async def run(self) -> None:
        try:
            while True:
                await trio.sleep(self.interval)
                snapshot = self.snapshot()
                for sink in self.sinks:
                    try:
                        await sink.flush(snapshot)
                    except Exception:
                        log.exception("stats sink %r failed", sink)
        finally:
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    close()
