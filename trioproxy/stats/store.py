"""Counters, gauges and histograms with Envoy's names.

Theory of operation: the hot path touches plain integers. A ``Counter`` or ``Gauge`` is a slotted
object whose ``value`` is incremented in place (``stats.upstream_rq_total.value += 1``); nothing
is looked up by name per request. Modules declare the stats they own as a ``StatBlock`` subclass
(``trioproxy.stats.block``: Envoy's ``ALL_CLUSTER_STATS`` macros, as annotated attributes),
created once per cluster, listener or connection manager under a prefix. Stats that depend on a
request (``upstream_rq_503``) are created lazily through the store, which caches by name.

Histograms record into log-linear buckets (two significant digits, like Envoy's circllhist) and
are summarised only when read, so recording is one dict update.

Each counter and gauge carries an ``import_mode``, declared where the stat is (a ``StatBlock``'s
``import_mode``/``import_modes``, or the argument of ``Store.counter``/``Store.gauge``). It says
how the main process of ``--concurrency N`` merges the workers' values
(``trioproxy.stats.merge``), with Envoy's hot-restart names where they fit:

- ``Accumulate`` (the default): each worker holds a share of the quantity (its connections,
  its requests): summed;
- ``NeverImport``: each worker holds a copy of the same thing (cluster membership, config
  versions, counts of config updates every worker applies): the main process's own value if
  it sets one (``server.live``), else the largest worker value — never a sum;
- ``Headroom``: how far one worker is from a limit every worker has for itself (circuit
  breakers' ``remaining_*``): the least, the worker closest to tripping.

Histograms are always summed.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from typing import Literal

ImportMode = Literal["Accumulate", "NeverImport", "Headroom"]
ACCUMULATE: ImportMode = "Accumulate"
NEVER_IMPORT: ImportMode = "NeverImport"
HEADROOM: ImportMode = "Headroom"
IMPORT_MODES: frozenset[str] = frozenset(typing.get_args(ImportMode))


class Counter:
    __slots__ = ("name", "value", "_used", "import_mode")

    def __init__(self, name: str, import_mode: ImportMode = ACCUMULATE) -> None:
        self.name = name
        self.value = 0
        self._used = False
        self.import_mode = import_mode  # how the main of --concurrency N merges it

    def inc(self, n: int = 1) -> None:
        self.value += n

    @property
    def used(self) -> bool:
        return self._used or self.value != 0

    def mark_used(self) -> None:
        """(For a merged view: a worker's counter was used.)"""
        self._used = True

    def reset(self) -> None:
        if self.value:
            self._used = True
        self.value = 0

    def __repr__(self) -> str:
        return f"<Counter {self.name}={self.value}>"


class Gauge:
    __slots__ = ("name", "value", "_used", "import_mode")

    def __init__(self, name: str, import_mode: ImportMode = ACCUMULATE) -> None:
        self.name = name
        self.value = 0
        self._used = False
        self.import_mode = import_mode  # how the main of --concurrency N merges it

    def set(self, value: int) -> None:
        self.value = value
        self._used = True

    def inc(self, n: int = 1) -> None:
        """(Marks the gauge used, as Envoy's does; hot paths add to ``value`` instead.)"""
        self.value += n
        self._used = True

    def dec(self, n: int = 1) -> None:
        self.value -= n
        self._used = True

    @property
    def used(self) -> bool:
        return self._used or self.value != 0

    def mark_used(self) -> None:
        self._used = True

    def __repr__(self) -> str:
        return f"<Gauge {self.name}={self.value}>"


def _bucket(value: float) -> float:
    """The lower bound of ``value``'s log-linear bucket (two significant digits)."""
    if value <= 0.0:
        return 0.0
    exp = math.floor(math.log10(value)) - 1
    scale = 10.0**exp
    return math.floor(value / scale) * scale


class Histogram:
    """Samples in two-significant-digit buckets: cumulative, in the current flush interval
    (``current``) and in the last completed one (``interval``, what Envoy's admin shows as
    the interval quantiles: NaN until a flush has seen samples)."""

    __slots__ = ("name", "unit", "cumulative", "current", "interval", "count", "sum")

    def __init__(self, name: str, unit: str = "Milliseconds") -> None:
        self.name = name
        self.unit = unit  # Unspecified | Bytes | Microseconds | Milliseconds | Percent
        self.cumulative: dict[float, int] = {}
        self.current: dict[float, int] = {}
        self.interval: dict[float, int] = {}
        self.count = 0
        self.sum = 0.0

    def record(self, value: float) -> None:
        b = _bucket(value)
        self.cumulative[b] = self.cumulative.get(b, 0) + 1
        self.current[b] = self.current.get(b, 0) + 1
        self.count += 1
        self.sum += value

    @property
    def used(self) -> bool:
        return self.count != 0

    def quantiles(self, qs: typing.Sequence[float], *, interval: bool = False) -> list[float]:
        """Quantiles interpolated within buckets; an empty histogram gives NaN for each."""
        buckets = self.interval if interval else self.cumulative
        total = sum(buckets.values())
        if total == 0:
            return [math.nan for _ in qs]
        ordered = sorted(buckets.items())
        out: list[float] = []
        for q in qs:
            target = q * total
            seen = 0.0
            value = ordered[-1][0]
            for lower, n in ordered:
                if seen + n >= target:
                    width = _bucket_width(lower)
                    frac = (target - seen) / n if n else 0.0
                    value = lower + width * frac
                    break
                seen += n
            out.append(value)
        return out

    def bucket_counts(self, bounds: typing.Sequence[float]) -> list[int]:
        """Cumulative sample counts at or below each bound (Prometheus ``le`` buckets)."""
        ordered = sorted(self.cumulative.items())
        out = []
        for bound in bounds:
            out.append(sum(n for lower, n in ordered if lower + _bucket_width(lower) <= bound))
        return out

    def flush_interval(self) -> dict[float, int]:
        """End the current interval (every ``stats_flush_interval``); its buckets."""
        done, self.current = self.current, {}
        self.interval = done
        return done

    def reset(self) -> None:
        self.cumulative = {}
        self.current = {}
        self.interval = {}
        self.count = 0
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<Histogram {self.name} n={self.count}>"


def _bucket_width(lower: float) -> float:
    if lower <= 0.0:
        return 0.0
    return 10.0 ** (math.floor(math.log10(lower)) - 1)


Stat = Counter | Gauge | Histogram


class Store:
    """Every stat in the process, by full name. ``scope(prefix)`` gives a prefixed view."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}

    def counter(self, name: str, import_mode: ImportMode = ACCUMULATE) -> Counter:
        """The counter ``name``; ``import_mode`` applies when this call creates it."""
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = Counter(name, import_mode)
        return c

    def gauge(self, name: str, import_mode: ImportMode = ACCUMULATE) -> Gauge:
        g = self._gauges.get(name)
        if g is None:
            g = self._gauges[name] = Gauge(name, import_mode)
        return g

    def histogram(self, name: str, unit: str = "Milliseconds") -> Histogram:
        h = self._histograms.get(name)
        if h is None:
            h = self._histograms[name] = Histogram(name, unit)
        return h

    def scope(self, prefix: str) -> Scope:
        return Scope(self, prefix)

    def counters(self) -> Iterator[Counter]:
        return iter(list(self._counters.values()))

    def gauges(self) -> Iterator[Gauge]:
        return iter(list(self._gauges.values()))

    def histograms(self) -> Iterator[Histogram]:
        return iter(list(self._histograms.values()))

    def reset_counters(self) -> None:
        """``POST /reset_counters``: counters and histograms to zero, gauges untouched."""
        for c in self._counters.values():
            c.reset()
        for h in self._histograms.values():
            h.reset()

    def remove_prefix(self, prefix: str) -> None:
        """Forget the stats of a removed cluster or listener."""
        for table in (self._counters, self._gauges, self._histograms):
            for name in [n for n in table if n.startswith(prefix)]:
                del table[name]


class Scope:
    """A prefixed view of a store: ``scope("cluster.x.").counter("upstream_rq_total")``."""

    __slots__ = ("store", "prefix")

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix if not prefix or prefix.endswith(".") else prefix + "."

    def counter(self, name: str, import_mode: ImportMode = ACCUMULATE) -> Counter:
        return self.store.counter(self.prefix + name, import_mode)

    def gauge(self, name: str, import_mode: ImportMode = ACCUMULATE) -> Gauge:
        return self.store.gauge(self.prefix + name, import_mode)

    def histogram(self, name: str, unit: str = "Milliseconds") -> Histogram:
        return self.store.histogram(self.prefix + name, unit)

    def scope(self, prefix: str) -> Scope:
        return Scope(self.store, self.prefix + prefix)
