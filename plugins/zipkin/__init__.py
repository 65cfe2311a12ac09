"""``envoy.tracers.zipkin``: Zipkin v2 spans over HTTP JSON, B3 propagation.

Registered through the ``trioproxy`` entry-point group like any third-party plugin; spans,
B3 and the reporter are in ``tracer.py`` and ``b3.py``, the config in ``config.py``.
Connection managers with the same Zipkin config share one tracer and one reporter, as in
Envoy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.registry import TracerFactory
from trioproxy.tracing import TracerContext

from .config import ZipkinConfig
from .tracer import Reporter, ZipkinStats, ZipkinTracer

NAME = "envoy.tracers.zipkin"
TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


def _config(raw: Mapping[str, Any]) -> ZipkinConfig:
    return ZipkinConfig.from_proto(raw)


def _create(config: ZipkinConfig, ctx: TracerContext) -> ZipkinTracer:
    """One tracer (one reporter) per config for each server; a tracer built without a server
    (``ctx.background`` None) reports nothing and is not shared."""
    background = ctx.background
    key = (NAME, config, ctx.service_cluster)
    tracer: ZipkinTracer | None = background.shared.get(key) if background else None
    if tracer is None:
        reporter = Reporter(config, ctx, ZipkinStats(ctx.store.scope("tracing.zipkin.")))
        tracer = ZipkinTracer(config, ctx, reporter)
        if background is not None:
            background.shared[key] = tracer
            background.start_soon(reporter.run)
    return tracer


@hookimpl
def trioproxy_tracers() -> list[TracerFactory]:
    return [TracerFactory(NAME, (TYPE_URL,), config_type=_config, create=_create)]
