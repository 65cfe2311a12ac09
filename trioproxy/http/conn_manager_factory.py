"""Registers the HTTP connection manager as the terminal network filter
``envoy.filters.network.http_connection_manager`` — through the same hook a plugin uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.context import BuildContext
from trioproxy.hookspecs import hookimpl
from trioproxy.http.conn_manager import Http1Connection
from trioproxy.http.conn_manager_config import HcmConfig, ListenerHttpStats
from trioproxy.network.filter import DownstreamConnection, TerminalNetworkFilter
from trioproxy.registry import NetworkFilterFactory

NAME = "envoy.filters.network.http_connection_manager"
TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


class HttpConnectionManager(TerminalNetworkFilter):
    def __init__(self, config: HcmConfig) -> None:
        self.config = config
        self._listener_stats: dict[str, ListenerHttpStats] = {}

    async def handle_connection(self, conn: DownstreamConnection) -> None:
        prefix = conn.listener_stats.prefix
        lstats = self._listener_stats.get(prefix)
        if lstats is None:
            lstats = self._listener_stats[prefix] = ListenerHttpStats(
                conn.listener_stats.scope(f"http.{self.config.stat_prefix}.")
            )
        await Http1Connection(conn, self.config, lstats).run()


def _create(raw: Mapping[str, Any], ctx: BuildContext) -> HttpConnectionManager:
    return HttpConnectionManager(HcmConfig.from_proto(raw, ctx))


@hookimpl
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    # The config converter is the identity: building an HCM needs the whole BuildContext
    # (registry, cluster manager), which `create` receives.
    return [NetworkFilterFactory(NAME, (TYPE_URL,), create=_create, terminal=True)]
