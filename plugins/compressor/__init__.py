"""``envoy.filters.http.compressor`` with the gzip library: responses compressed for the
clients that accept it. Registered through the ``trioproxy`` entry-point group like any
third-party plugin: the filter is ``filter.py``, its config ``config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import FactoryContext
from trioproxy.registry import HttpFilterFactory

from .config import CompressorConfig
from .filter import CompressorFilter

NAME = "envoy.filters.http.compressor"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"


def _config(raw: Mapping[str, Any]) -> CompressorConfig:
    return CompressorConfig.from_proto(raw)


def _create(config: CompressorConfig, ctx: FactoryContext) -> CompressorFilter:
    return CompressorFilter(config, ctx.stats)


@hookimpl
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    return [HttpFilterFactory(NAME, (TYPE_URL,), config_type=_config, create=_create)]
