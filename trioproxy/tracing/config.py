"""``HttpConnectionManager.tracing`` → ``HttpTracing``: find the provider, build its tracer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.netutil import local_ipv4
from trioproxy.stats import Scope
from trioproxy.tracing import TracerContext
from trioproxy.tracing.http import HttpTracing


def build_tracing(d: Mapping[str, Any], ctx: BuildContext, scope: Scope) -> HttpTracing | None:
    """``None`` when neither the connection manager nor the bootstrap names a provider (Envoy
    then does not trace)."""
    provider = d.get("provider")
    path = "provider"
    if provider is None and ctx.bootstrap_tracing is not None:
        provider = ctx.bootstrap_tracing
        path = "(bootstrap) tracing.http"
    if provider is None:
        return None
    try:
        factory, raw = ctx.registry.tracers.lookup(provider)
        config = factory.config_type(raw)
    except ConfigError as exc:
        raise exc.at(path) from None
    tctx = TracerContext(
        service_cluster=ctx.service_cluster,
        node_id=ctx.service_node,
        local_address=local_ipv4(),
        cluster_manager=ctx.cluster_manager,
        background=ctx.background,
        store=ctx.store,
        node=ctx.node,
    )
    try:
        tracer = factory.create(config, tctx)
    except ConfigError as exc:
        raise exc.at(f"{path}.typed_config") from None
    return HttpTracing.from_proto(
        d, tracer, scope, traffic_direction=ctx.traffic_direction, node_id=ctx.service_node
    )
