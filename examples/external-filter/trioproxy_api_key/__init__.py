"""``example.filters.http.api_key``: requests must carry a known API key.

A third-party trioproxy plugin, packaged as any would be: this module is registered in the
``trioproxy`` entry-point group by ``pyproject.toml``, and its hook returns the filter's
factory — the Envoy-style name and config type URL it answers to, how its config is read,
and how the filter is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .config import ApiKeyConfig
from .filter import ApiKeyFilter

NAME = "example.filters.http.api_key"
TYPE_URL = "type.googleapis.com/example.filters.http.api_key.v1.ApiKey"


def _config(raw: Mapping[str, Any]) -> ApiKeyConfig:
    return ApiKeyConfig.from_proto(raw)


def _create(config: ApiKeyConfig, ctx: FactoryContext) -> ApiKeyFilter:
    return ApiKeyFilter(config, ctx.stats)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        # per_route_config_type: a route may bring its own config (``typed_per_filter_config``)
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_config
        )
    ]
