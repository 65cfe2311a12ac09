"""``envoy.filters.http.router``: the terminal HTTP filter that forwards to a cluster.

Registered through the ``trioproxy`` entry-point group like any third-party plugin. The
filter itself lives in ``filter.py``, its config in ``config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .config import RouterConfig
from .filter import Router

NAME = "envoy.filters.http.router"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _create(config: RouterConfig, ctx: FactoryContext) -> Router:
    return Router(config, ctx)


def _config(raw: Mapping[str, Any]) -> RouterConfig:
    return RouterConfig.from_proto(raw)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(NAME, (TYPE_URL,), config_type=_config, create=_create, terminal=True)
    ]
