"""``StatBlock``: the stats a module owns, declared as annotated attributes.

Apart from ``store`` so that ``store`` can be compiled (setup.py): the blocks are subclassed
all over the code base and by plugins, and an interpreted class cannot subclass a compiled one.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import ClassVar

from trioproxy.stats.store import ACCUMULATE, Counter, Gauge, Histogram, ImportMode, Scope


class StatBlock:
    """A named set of stats declared as annotated attributes, created under one scope.

    ``units`` maps a histogram's attribute name to its unit when it is not milliseconds.
    ``import_mode`` is how the block's counters and gauges merge across workers, and
    ``import_modes`` overrides it for some attributes (see ``trioproxy.stats.store``).
    """

    units: ClassVar[dict[str, str]] = {}
    import_mode: ClassVar[ImportMode] = ACCUMULATE
    import_modes: ClassVar[Mapping[str, ImportMode]] = {}
    #: (attribute, kind) per class, worked out once: ``get_type_hints`` evaluates every
    #: annotation and would otherwise cost more than the stats themselves (1,000 CDS
    #: clusters: 0.6 s).
    _fields_cache: ClassVar[dict[type, tuple[tuple[str, type], ...]]] = {}

    def __init__(self, scope: Scope) -> None:
        cls = type(self)
        fields = StatBlock._fields_cache.get(cls)
        if fields is None:
            hints = typing.get_type_hints(cls)
            fields = tuple(
                (name, kind) for name, kind in hints.items() if kind in (Counter, Gauge, Histogram)
            )
            StatBlock._fields_cache[cls] = fields
        for name, kind in fields:
            mode = self.import_modes.get(name, self.import_mode)
            if kind is Counter:
                setattr(self, name, scope.counter(name, mode))
            elif kind is Gauge:
                setattr(self, name, scope.gauge(name, mode))
            else:
                setattr(self, name, scope.histogram(name, self.units.get(name, "Milliseconds")))
