"""The running server as the admin endpoint sees it (``trioproxy.admin.backend.AdminBackend``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trioproxy import __version__
from trioproxy.admin.backend import ClusterView, ConfigDumpSources
from trioproxy.stats import Store

if TYPE_CHECKING:
    from trioproxy.server import Server

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


class ServerAdminBackend:
    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def stats(self) -> Store:
        return self.server.store

    def config_dump_sources(self) -> ConfigDumpSources:
        s = self.server
        loaded_at = s.loaded_at
        static = s.loaded.canonical.get("static_resources", {})
        routes: list[tuple[dict[str, Any], float]] = []
        for listener in static.get("listeners", []):
            for chain in listener.get("filter_chains", []):
                for filt in chain.get("filters", []):
                    typed = filt.get("typed_config", {})
                    if typed.get("@type") == HCM_TYPE and "route_config" in typed:
                        routes.append((typed["route_config"], loaded_at))
        return ConfigDumpSources(
            bootstrap=s.loaded.canonical,
            bootstrap_last_updated=loaded_at,
            static_clusters=[(c, loaded_at) for c in static.get("clusters", [])],
            static_listeners=[(lst, loaded_at) for lst in static.get("listeners", [])],
            static_route_configs=routes,
        )

    def clusters(self) -> Sequence[ClusterView]:
        return list(self.server.cluster_manager.clusters.values())

    def listeners(self) -> Sequence[tuple[str, str]]:
        return [
            (lst.config.name, f"{lst.config.address[0]}:{lst.port}")
            for lst in self.server.listeners
        ]

    def server_info(self) -> dict[str, Any]:
        s = self.server
        uptime = int(time.time() - s.started_wall)
        opts = s.options
        return {
            "version": f"trioproxy/{__version__}/Clean/RELEASE/BoringSSL-compatible",
            "state": s.state,
            "hot_restart_version": "disabled",
            "command_line_options": {
                "base_id": "0",
                "concurrency": opts.concurrency,
                "config_path": opts.config_path,
                "service_cluster": opts.service_cluster,
                "service_node": opts.service_node,
                "service_zone": opts.service_zone,
                "drain_time": f"{opts.drain_time:g}s",
                "mode": "Serve",
            },
            "node": dict(s.built.node),
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
        }

    def is_ready(self) -> bool:
        return self.server.state == "LIVE"

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.server.healthcheck_failed = failed

    def request_shutdown(self) -> None:
        self.server.request_shutdown()

    def reset_counters(self) -> None:
        self.server.store.reset_counters()
