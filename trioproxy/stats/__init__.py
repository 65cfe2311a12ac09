"""Stats with Envoy's names; see ``store`` for the model and ``render`` for output formats."""

from trioproxy.stats.block import StatBlock
from trioproxy.stats.store import Counter, Gauge, Histogram, Scope, Store

__all__ = ["Counter", "Gauge", "Histogram", "Scope", "StatBlock", "Store"]
