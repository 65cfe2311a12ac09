"""``envoy.filters.network.tcp_proxy``: the terminal network filter that proxies a TCP
connection to a cluster. Registered through the ``trioproxy`` entry-point group like any
third-party plugin; the proxy is in ``filter.py``, its config in ``config.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.accesslog.loggers import build_access_log
from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.hookspecs import hookimpl
from trioproxy.registry import NetworkFilterFactory

from .config import TcpProxyConfig
from .filter import TcpProxy, TcpProxyStats

NAME = "envoy.filters.network.tcp_proxy"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _config(raw: Mapping[str, Any]) -> TcpProxyConfig:
    return TcpProxyConfig.from_proto(raw)


def _create(config: TcpProxyConfig, ctx: BuildContext) -> TcpProxy:
    loggers = []
    for i, entry in enumerate(config.access_log):
        try:
            loggers.append(build_access_log(entry, ctx.registry.access_loggers, ctx))
        except ConfigError as exc:
            raise exc.at(f"typed_config.access_log[{i}]") from None
    stats = TcpProxyStats(ctx.store.scope(f"tcp.{config.stat_prefix}."))
    return TcpProxy(config, ctx.cluster_manager, stats, loggers)


@hookimpl
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    return [
        NetworkFilterFactory(NAME, (TYPE_URL,), config_type=_config, create=_create, terminal=True)
    ]
