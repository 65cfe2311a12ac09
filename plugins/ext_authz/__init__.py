"""``envoy.filters.http.ext_authz``: ask an external authorization service (HTTP or gRPC)
before a request goes on.

Registered through the ``trioproxy`` entry-point group like any third-party plugin: the filter
is ``filter.py``, the two ways of asking ``check.py``, the config ``config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .config import ExtAuthzConfig, PerRoute
from .filter import NAME, ExtAuthzFilter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


def _config(raw: Mapping[str, Any]) -> ExtAuthzConfig:
    return ExtAuthzConfig.from_proto(raw)


def _per_route(raw: Mapping[str, Any]) -> PerRoute:
    return PerRoute.from_proto(raw)


def _create(config: ExtAuthzConfig, ctx: FactoryContext) -> ExtAuthzFilter:
    return ExtAuthzFilter(config, ctx.stats, ctx.cluster_manager)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_per_route
        )
    ]
