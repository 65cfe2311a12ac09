"""``envoy.filters.http.fault``: delays, aborts and response rate limits, by percentage or
by request header, as Envoy's fault injection filter does.

Registered through the ``trioproxy`` entry-point group like any third-party plugin: the filter
is ``filter.py``, its config ``config.py``. A route's ``typed_per_filter_config`` entry for the
filter replaces the listener-level config for that route.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .config import FaultConfig
from .filter import FaultFilter

NAME = "envoy.filters.http.fault"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def _config(raw: Mapping[str, Any]) -> FaultConfig:
    return FaultConfig.from_proto(raw)


def _create(config: FaultConfig, ctx: FactoryContext) -> FaultFilter:
    return FaultFilter(config, ctx.stats)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [
        HttpFilterFactory(
            NAME, (TYPE_URL,), config_type=_config, create=_create, per_route_config_type=_config
        )
    ]
