"""trioproxy: an Envoy-compatible L4/L7 proxy on trio, with filters as plain async plugins."""

from __future__ import annotations

import importlib.util

__version__ = "0.1.0"


def compiled_modules() -> list[str]:
    """Which of the hot path's main modules this install runs compiled by mypyc
    (``setup.py``; empty in a pure-Python install)."""
    out = []
    for name in ("trioproxy.http.conn_manager", "trioproxy.http.headers", "trioproxy.io"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and not spec.origin.endswith(".py"):
            out.append(name)
    return out
