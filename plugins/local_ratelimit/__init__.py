"""``envoy.filters.http.local_ratelimit`` and ``envoy.filters.network.local_ratelimit``:
token-bucket rate limiting in the proxy itself (``network.py`` limits new connections).

Registered through the ``trioproxy`` entry-point group like any third-party plugin: the filter
is ``filter.py``, its config ``config.py``, the bucket ``bucket.py``. A route's
``typed_per_filter_config`` entry brings its own buckets (kept while the route's config is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory, NetworkFilterFactory

from .config import LocalRateLimitConfig
from .filter import NAME, Limiter, LocalRateLimitFilter
from .network import NetworkLimitConfig, NetworkLocalRateLimit

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
NETWORK_NAME = "envoy.filters.network.local_ratelimit"
NETWORK_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
)


def _config(raw: Mapping[str, Any]) -> LocalRateLimitConfig:
    return LocalRateLimitConfig.from_proto(raw)


def _create(config: LocalRateLimitConfig, ctx: FactoryContext) -> LocalRateLimitFilter:
    store = ctx.store or ctx.cluster_manager.store  # the root: stats are <stat_prefix>.*
    limiters: dict[int, Limiter] = {}

    def per_route(route_config: LocalRateLimitConfig) -> Limiter:
        # one limiter (buckets) per route config object, made on first use
        key = id(route_config)
        limiter = limiters.get(key)
        if limiter is None or limiter.config is not route_config:
            limiter = limiters[key] = Limiter(route_config, store)
        return limiter

    return LocalRateLimitFilter(Limiter(config, store), per_route)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_config
        )
    ]


def _network_config(raw: Mapping[str, Any]) -> NetworkLimitConfig:
    return NetworkLimitConfig.from_proto(raw)


def _create_network(config: NetworkLimitConfig, ctx: Any) -> NetworkLocalRateLimit:
    return NetworkLocalRateLimit(config, ctx.store)


@hookimpl
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    return [
        NetworkFilterFactory(
            NETWORK_NAME, (NETWORK_TYPE_URL,), config_type=_network_config, create=_create_network
        )
    ]
