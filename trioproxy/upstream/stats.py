"""``cluster.<name>.*`` stats (Envoy's ALL_CLUSTER_TRAFFIC_STATS and config-update stats).

One ``ClusterStats`` per cluster, shared by its pools, its DNS resolver and the router. Per-code
counters (``upstream_rq_200``, ``upstream_rq_2xx``) are created lazily via ``scope``.
"""

from __future__ import annotations

from typing import ClassVar

from trioproxy.stats import Counter, Gauge, Histogram, Scope, StatBlock
from trioproxy.stats.store import HEADROOM, NEVER_IMPORT, ImportMode


class ClusterStats(StatBlock):
    # connections
    upstream_cx_total: Counter
    upstream_cx_active: Gauge
    upstream_cx_http1_total: Counter
    upstream_cx_http2_total: Counter
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_attempts_exceeded: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_connect_ms: Histogram
    upstream_cx_length_ms: Histogram
    upstream_cx_destroy: Counter
    upstream_cx_destroy_local: Counter
    upstream_cx_destroy_remote: Counter
    upstream_cx_destroy_with_active_rq: Counter
    upstream_cx_destroy_local_with_active_rq: Counter
    upstream_cx_destroy_remote_with_active_rq: Counter
    upstream_cx_idle_timeout: Counter
    upstream_cx_max_requests: Counter
    upstream_cx_max_duration_reached: Counter
    upstream_cx_none_healthy: Counter
    upstream_cx_overflow: Counter
    upstream_cx_protocol_error: Counter
    upstream_cx_rx_bytes_total: Counter
    upstream_cx_tx_bytes_total: Counter
    upstream_cx_rx_bytes_buffered: Gauge
    upstream_cx_tx_bytes_buffered: Gauge
    # requests
    upstream_rq_total: Counter
    upstream_rq_active: Gauge
    upstream_rq_completed: Counter
    upstream_rq_time: Histogram
    upstream_rq_timeout: Counter
    upstream_rq_per_try_timeout: Counter
    upstream_rq_rx_reset: Counter
    upstream_rq_tx_reset: Counter
    upstream_rq_retry: Counter
    upstream_rq_retry_success: Counter
    upstream_rq_retry_overflow: Counter
    upstream_rq_retry_limit_exceeded: Counter
    upstream_rq_retry_backoff_exponential: Counter
    upstream_rq_pending_total: Counter
    upstream_rq_pending_active: Gauge
    upstream_rq_pending_overflow: Counter
    upstream_rq_pending_failure_eject: Counter
    upstream_rq_cancelled: Counter
    upstream_rq_maintenance_mode: Counter
    # membership and config updates
    membership_total: Gauge
    membership_healthy: Gauge
    membership_degraded: Gauge
    membership_excluded: Gauge
    membership_change: Counter
    update_attempt: Counter
    update_success: Counter
    update_failure: Counter
    update_empty: Counter
    update_no_rebuild: Counter
    max_host_weight: Gauge
    lb_healthy_panic: Counter

    units: ClassVar[dict[str, str]] = {}
    #: Membership and config updates: every worker of --concurrency N applies the same ones.
    import_modes: ClassVar[dict[str, ImportMode]] = {
        name: NEVER_IMPORT
        for name in (
            "membership_total",
            "membership_healthy",
            "membership_degraded",
            "membership_excluded",
            "membership_change",
            "update_attempt",
            "update_success",
            "update_failure",
            "update_empty",
            "update_no_rebuild",
            "max_host_weight",
        )
    }

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        self.scope = scope


class CircuitBreakerStats(StatBlock):
    """``cluster.<name>.circuit_breakers.default.*``: 1 while a breaker is open (merged
    across workers: open in any)."""

    import_mode: ClassVar[ImportMode] = NEVER_IMPORT

    cx_open: Gauge
    cx_pool_open: Gauge
    rq_pending_open: Gauge
    rq_open: Gauge
    rq_retry_open: Gauge


class RemainingStats(StatBlock):
    """``circuit_breakers.default.remaining_*``, only when ``track_remaining`` is set (merged
    across workers, each with its own breakers: the least any worker has left)."""

    import_mode: ClassVar[ImportMode] = HEADROOM

    remaining_cx: Gauge
    remaining_pending: Gauge
    remaining_rq: Gauge
    remaining_retries: Gauge
    remaining_cx_pools: Gauge  # max_connection_pools is unlimited: shown as 2^64 - 1


class ClusterManagerStats(StatBlock):
    """``cluster_manager.*``."""

    import_mode: ClassVar[ImportMode] = NEVER_IMPORT  # every worker manages the same clusters

    active_clusters: Gauge
    warming_clusters: Gauge
    cluster_added: Counter
    cluster_modified: Counter
    cluster_removed: Counter
    cluster_updated: Counter
    cluster_updated_via_merge: Counter
    update_merge_cancelled: Counter
    update_out_of_merge_window: Counter
