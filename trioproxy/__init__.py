"""trioproxy: an Envoy-compatible L4/L7 proxy on trio, with filters as plain async plugins."""

from __future__ import annotations

import importlib.util

__version__ = "0.1.0"


def compiled_modules() -> list[str]:
    """Which of the hot path's main modules this install runs compiled by mypyc
    (``setup.py``; empty in a pure-Python install)."""
    names = ("trioproxy.http.conn_manager", "trioproxy.http.headers", "trioproxy.io")
    return [name for name in names if _compiled(name)]


def _compiled(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and bool(spec.origin) and not str(spec.origin).endswith(".py")


def mixed_install() -> str | None:
    """Why this process cannot run, when the core is imported from sources while the
    built-in plugins come from a compiled install (``python -m trioproxy`` in a source
    checkout, with a compiled install in the environment): compiled code then meets classes
    it was not compiled against. ``None`` when the install is consistent."""
    core = importlib.util.find_spec("trioproxy.http.conn_manager")
    if _compiled("trioproxy_plugins.router.filter") and not _compiled(
        "trioproxy.http.conn_manager"
    ):
        where = core.origin if core is not None else "?"
        return (
            f"trioproxy's core is imported from {where} (sources) but its plugins are a "
            "compiled install; run the trioproxy command, or python -P -m trioproxy, away from "
            "the source tree"
        )
    return None
