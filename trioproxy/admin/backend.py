"""What the admin server needs from the running proxy, as ``typing.Protocol``s.

Theory of operation: the admin server never imports the server, the cluster manager or the
listeners; it sees them through ``AdminBackend`` (implemented by the lead's
``ServerAdminBackend``) and ``ClusterView``/``HostView`` (which the upstream ``Cluster`` and
``Host`` already satisfy structurally). Config dumps come as plain canonical proto-JSON dicts
in ``ConfigDumpSources``; the admin adds ``@type`` and timestamps and drops empty fields.
Timestamps are Unix seconds (``time.time()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from trioproxy.stats.store import Store

Canonical = Mapping[str, Any]


@attrs.frozen
class ConfigDumpSources:
    """Everything ``/config_dump`` shows; ``last_updated`` values are Unix seconds."""

    bootstrap: Canonical
    bootstrap_last_updated: float
    static_clusters: Sequence[tuple[Canonical, float]] = ()
    # (version_info, cluster, last_updated)
    dynamic_active_clusters: Sequence[tuple[str, Canonical, float]] = ()
    dynamic_warming_clusters: Sequence[tuple[str, Canonical, float]] = ()
    static_listeners: Sequence[tuple[Canonical, float]] = ()
    # (version_info, listener, last_updated)
    dynamic_listeners: Sequence[tuple[str, Canonical, float]] = ()
    dynamic_warming_listeners: Sequence[tuple[str, Canonical, float]] = ()
    dynamic_draining_listeners: Sequence[tuple[str, Canonical, float]] = ()
    # The last rejected update of a resource: (name, version_info, details, config, when).
    cluster_errors: Sequence[tuple[str, str, str, Canonical, float]] = ()
    listener_errors: Sequence[tuple[str, str, str, Canonical, float]] = ()
    # Latest accepted CDS / LDS version ("" when none).
    clusters_version: str = ""
    listeners_version: str = ""
    static_route_configs: Sequence[tuple[Canonical, float]] = ()
    dynamic_route_configs: Sequence[tuple[str, Canonical, float]] = ()
    # Secrets as SecretsConfigDump fields, already redacted (e.g. {"static_secrets": [...]}).
    secrets: Canonical = attrs.field(factory=dict)
    # (version_info, cluster_load_assignment, last_updated), shown with ?include_eds.
    endpoint_configs: Sequence[tuple[str, Canonical, float]] = ()


class HostView(Protocol):
    """An upstream host as ``/clusters`` shows it (``trioproxy.upstream.host.Host``)."""

    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def hostname(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def locality(self) -> Any: ...  # None, a mapping or an object with region/zone/sub_zone

    # Plain-int stats (attributes, or read from an object exposing them).
    cx_active: Any
    cx_connect_fail: Any
    cx_total: Any
    rq_active: Any
    rq_error: Any
    rq_success: Any
    rq_timeout: Any
    rq_total: Any


class ClusterView(Protocol):
    """An upstream cluster as ``/clusters`` shows it.

    ``hosts`` are ``HostView``s; ``info.added_via_api`` says whether it came from CDS;
    ``info.circuit_breakers`` gives the default-priority thresholds as an object with
    ``max_connections``, ``max_pending_requests``, ``max_requests`` and ``max_retries``.
    ``trioproxy.upstream.cluster_manager.Cluster`` satisfies it as is.
    """

    @property
    def name(self) -> str: ...
    @property
    def hosts(self) -> Sequence[Any]: ...
    @property
    def info(self) -> Any: ...


class AdminBackend(Protocol):
    """The running proxy as seen from the admin endpoint."""

    @property
    def stats(self) -> Store: ...

    def config_dump_sources(self) -> ConfigDumpSources: ...

    def clusters(self) -> Sequence[ClusterView]: ...

    def listeners(self) -> Sequence[tuple[str, str]]:
        """(name, "ip:port") of each active listener."""
        ...

    def server_info(self) -> dict[str, Any]:
        """Envoy's ServerInfo fields: version, state, hot_restart_version,
        command_line_options, node, uptime_current_epoch, uptime_all_epochs."""
        ...

    def is_ready(self) -> bool: ...

    def set_healthcheck_failed(self, failed: bool) -> None: ...

    def request_shutdown(self) -> None: ...

    def reset_counters(self) -> None: ...
