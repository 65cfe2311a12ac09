"""What is known about one HTTP stream: the data access logs, stats and tracing read.

Mirrors Envoy's ``StreamInfo``: timings (monotonic seconds from ``now()``, i.e.
``time.perf_counter``, cheaper than ``trio.current_time()`` and never mixed with trio
deadlines, plus a wall-clock start), response code and flags, byte counts, upstream host and
cluster, and the details string that explains a local reply (``route_not_found`` …).
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from trioproxy.http.headers import Headers

#: The clock of every ``*_monotonic``/``*_tx``/``*_rx`` timestamp below.
now = time.perf_counter


@attrs.define(eq=False)
class StreamInfo:
    start_time: float  # wall clock, seconds since the epoch
    start_monotonic: float  # trio.current_time() at the first byte of the request
    protocol: str = "HTTP/1.1"
    downstream_remote_address: str = ""  # "ip:port"
    downstream_local_address: str = ""
    downstream_direct_remote_address: str = ""
    requested_server_name: str = ""
    request_headers: Headers | None = None
    response_headers: Headers | None = None
    response_trailers: Headers | None = None
    response_code: int = 0
    response_code_details: str = ""
    response_flags: set[str] = attrs.field(factory=set)
    bytes_received: int = 0
    bytes_sent: int = 0
    upstream_cluster: str = ""
    upstream_host: str = ""  # "ip:port" of the chosen upstream host
    upstream_local_address: str = ""
    upstream_transport_failure_reason: str = ""
    route_name: str = ""
    virtual_host_name: str = ""
    last_downstream_rx: float | None = None  # monotonic: last byte of the request received
    first_upstream_tx: float | None = None  # monotonic
    first_upstream_rx: float | None = None
    last_upstream_rx: float | None = None
    first_downstream_tx: float | None = None
    last_downstream_tx: float | None = None
    end_monotonic: float | None = None
    connection_id: int = 0
    attempt_count: int = 0
    health_check: bool = False  # answered by/for a health check (not_health_check_filter)
    filter_state: dict[str, Any] = attrs.field(factory=dict)

    def flags_string(self) -> str:
        """Envoy's %RESPONSE_FLAGS%: comma-separated short names, or ``-`` for none."""
        return ",".join(sorted(self.response_flags)) if self.response_flags else "-"

    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        return int((self.end_monotonic - self.start_monotonic) * 1000)
