"""``envoy.filters.http.rbac`` and ``envoy.filters.network.rbac``: role-based access control.

Registered through the ``trioproxy`` entry-point group like any third-party plugin. The policy
engine (``policy.py``) is shared; ``filter.py`` is the HTTP filter, ``network.py`` the network
one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory, NetworkFilterFactory

from .config import RbacConfig
from .filter import NAME, RbacFilter
from .network import NetworkRbacFilter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NETWORK_NAME = "envoy.filters.network.rbac"
NETWORK_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _config(raw: Mapping[str, Any]) -> RbacConfig:
    return RbacConfig.from_proto(raw)


def _per_route(raw: Mapping[str, Any]) -> RbacConfig:
    return RbacConfig.per_route(raw)


def _create(config: RbacConfig, ctx: FactoryContext) -> RbacFilter:
    return RbacFilter(config, ctx.stats)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_per_route
        )
    ]


def _network_config(raw: Mapping[str, Any]) -> RbacConfig:
    config = RbacConfig.from_proto(raw)
    if not config.stat_prefix:
        from trioproxy.errors import ConfigError

        raise ConfigError("value length must be at least 1 characters", path="stat_prefix")
    return config


def _create_network(config: RbacConfig, ctx: Any) -> NetworkRbacFilter:
    return NetworkRbacFilter(config, ctx.store)


@hookimpl
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    return [
        NetworkFilterFactory(
            NETWORK_NAME,
            (NETWORK_TYPE_URL,),
            config_type=_network_config,
            create=_create_network,
        )
    ]
