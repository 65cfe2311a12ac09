"""``envoy.filters.udp_listener.udp_proxy``: the UDP listener filter that proxies datagrams to
a cluster in per-client sessions. Registered through the ``trioproxy`` entry-point group like
any third-party plugin; the proxy is in ``proxy.py``, its config in ``config.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.context import BuildContext
from trioproxy.hookspecs import hookimpl
from trioproxy.registry import UdpListenerFilterFactory

from .config import DEFAULT_MAX_RX_DATAGRAM_SIZE, UdpProxyConfig
from .proxy import UdpProxyFilter, UdpProxyStats

NAME = "envoy.filters.udp_listener.udp_proxy"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"


def _config(raw: Mapping[str, Any]) -> UdpProxyConfig:
    return UdpProxyConfig.from_proto(raw)


def _create(config: UdpProxyConfig, ctx: BuildContext) -> UdpProxyFilter:
    stats = UdpProxyStats(ctx.store.scope(f"udp.{config.stat_prefix}."))
    size = ctx.listener_udp_max_rx_datagram_size or DEFAULT_MAX_RX_DATAGRAM_SIZE
    return UdpProxyFilter(config, ctx.cluster_manager, stats, size)


@hookimpl
def trioproxy_udp_listener_filters() -> list[UdpListenerFilterFactory]:
    return [UdpListenerFilterFactory(NAME, (TYPE_URL,), config_type=_config, create=_create)]
