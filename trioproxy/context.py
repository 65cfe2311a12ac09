"""What builders need while turning canonical config into running objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from trioproxy.background import Background
    from trioproxy.http.rds import RdsSubscriber
    from trioproxy.listener.tls import SecretSubscriber
    from trioproxy.registry import Registry
    from trioproxy.stats import Store
    from trioproxy.upstream.cluster_manager import ClusterManager


@attrs.frozen
class BuildContext:
    registry: Registry
    store: Store
    cluster_manager: ClusterManager
    node: Mapping[str, Any] = attrs.field(factory=dict)
    service_cluster: str = ""
    service_node: str = ""
    base_dir: str = "."  # relative DataSource filenames resolve here
    h1_codec: str | None = None  # "httptools" | "h11" | None (best available)
    rds: RdsSubscriber | None = None  # the xDS manager, where RDS can be used
    secrets: SecretSubscriber | None = None  # the xDS manager: static and SDS secrets
    #: While a UDP listener's filter is built: the listener's
    #: ``udp_listener_config.downstream_socket_config.max_rx_datagram_size`` (0: default).
    listener_udp_max_rx_datagram_size: int = 0
    #: While a listener's filter chains are built: its ``traffic_direction`` (tracing spans
    #: are SERVER for INBOUND and unspecified, CLIENT for OUTBOUND).
    traffic_direction: str = "UNSPECIFIED"
    #: The bootstrap's ``tracing.http`` provider, for connection managers that trace
    #: without naming one.
    bootstrap_tracing: Mapping[str, Any] | None = None
    #: Long-lived helper tasks (span reporters, stats sinks).
    background: Background | None = None
    #: This process's worker number under ``--concurrency N`` (``listener.*.worker_<n>.*``).
    worker_index: int = 0
