"""The running server as the admin endpoint sees it (``trioproxy.admin.backend.AdminBackend``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trioproxy import __version__
from trioproxy.admin.backend import ClusterView, ConfigDumpSources
from trioproxy.admin.config_dump import rfc3339
from trioproxy.stats import Store
from trioproxy.xds.manager import Dynamic, XdsManager
from trioproxy.xds.resources import CLUSTER as CDS
from trioproxy.xds.resources import LISTENER as LDS

if TYPE_CHECKING:
    from trioproxy.server import Options, Server

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _secrets_dump(xds: XdsManager) -> dict[str, Any]:
    """``SecretsConfigDump`` fields (``config_dump`` redacts the keys)."""
    static = [
        {
            "name": name,
            "last_updated": rfc3339(e.last_updated),
            "secret": {"@type": _SECRET, **e.canonical},
        }
        for name, e in xds.static_secrets.items()
    ]
    dynamic = []
    for name, p in xds.secrets.items():
        entry: dict[str, Any] = {"name": name}
        if p.current is not None:
            if p.current.version_info:
                entry["version_info"] = p.current.version_info
            entry["last_updated"] = rfc3339(p.current.last_updated)
            entry["secret"] = {"@type": _SECRET, **p.current.canonical}
        dynamic.append(entry)
    out: dict[str, Any] = {}
    if static:
        out["static_secrets"] = static
    active = [e for e in dynamic if "secret" in e]
    warming = [e for e in dynamic if "secret" not in e]
    if active:
        out["dynamic_active_secrets"] = active
    if warming:
        out["dynamic_warming_secrets"] = warming
    return out


def server_info(
    state: str, opts: Options, node: Mapping[str, Any], started_wall: float
) -> dict[str, Any]:
    """Envoy's ``ServerInfo`` fields."""
    uptime = int(time.time() - started_wall)
    return {
        "version": f"trioproxy/{__version__}/Clean/RELEASE/BoringSSL-compatible",
        "state": state,
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
        "node": dict(node),
        "uptime_current_epoch": f"{uptime}s",
        "uptime_all_epochs": f"{uptime}s",
    }


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
        xds = s.built.xds
        lm = s.listener_manager

        def dyn(entries: Mapping[str, Dynamic]) -> list[tuple[str, Mapping[str, Any], float]]:
            return [(e.version_info, e.canonical, e.last_updated) for e in entries.values()]

        def errors(kind: str) -> list[tuple[str, str, str, Mapping[str, Any], float]]:
            return [
                (name, e.version_info, e.details, e.failed_configuration, e.at)
                for name, e in xds.errors[kind].items()
            ]

        draining = [
            (e.version_info, e.config.canonical, e.last_updated)
            for e in lm.draining
            if not e.static
        ]
        return ConfigDumpSources(
            bootstrap=s.loaded.canonical,
            bootstrap_last_updated=loaded_at,
            static_clusters=[(c, loaded_at) for c in static.get("clusters", [])],
            dynamic_active_clusters=dyn(xds.clusters),
            dynamic_warming_clusters=dyn(xds.warming_clusters),
            static_listeners=[(lst, loaded_at) for lst in static.get("listeners", [])],
            dynamic_listeners=dyn(xds.listeners),
            dynamic_warming_listeners=dyn(xds.warming_listeners),
            dynamic_draining_listeners=draining,
            static_route_configs=routes,
            dynamic_route_configs=[
                (p.current.version_info, p.current.canonical, p.current.last_updated)
                for p in xds.routes.values()
                if p.current is not None
            ],
            endpoint_configs=dyn(xds.endpoints),
            cluster_errors=errors(CDS),
            listener_errors=errors(LDS),
            secrets=_secrets_dump(xds),
            clusters_version=xds.versions.get(CDS, ""),
            listeners_version=xds.versions.get(LDS, ""),
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
        return server_info(s.state, s.options, s.built.node, s.started_wall)

    def is_ready(self) -> bool:
        return self.server.state == "LIVE"

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.server.healthcheck_failed = failed

    def request_shutdown(self) -> None:
        self.server.request_shutdown()

    def reset_counters(self) -> None:
        self.server.store.reset_counters()
