"""``envoy.filters.http.cors``: Cross-Origin Resource Sharing, answered at the proxy.

The filter has no config of its own; policies (``envoy.extensions.filters.http.cors.v3.
CorsPolicy``) come from ``typed_per_filter_config`` on the route, virtual host or route
configuration (the most specific wins). Registered through the ``trioproxy`` entry-point group
like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .filter import NAME, CorsFilter, CorsPolicy

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"


def _config(raw: Mapping[str, Any]) -> None:
    return None


def _policy(raw: Mapping[str, Any]) -> CorsPolicy:
    return CorsPolicy.from_proto(raw)


def _create(config: None, ctx: FactoryContext) -> CorsFilter:
    return CorsFilter(ctx.stats)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_policy
        )
    ]
