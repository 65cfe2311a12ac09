"""What is known about one HTTP stream: the data access logs, stats and tracing read.

Mirrors Envoy's ``StreamInfo``: timings (monotonic seconds from ``now()``, i.e.
``time.perf_counter``, cheaper than ``trio.current_time()`` and never mixed with trio
deadlines, plus a wall-clock start), response code and flags, byte counts, upstream host and
cluster, and the details string that explains a local reply (``route_not_found`` …).

A plain slotted class, not attrs: this module is compiled by mypyc in a compiled build, and
mypyc compiles attrs fields with factories (``response_flags``, ``filter_state``) wrongly.
It keeps the attrs class's keyword (and positional) arguments and defaults, a fresh set and
dict per instance, identity equality (it was ``eq=False``) and a ``__repr__`` of every
field. It lost the rest: weak references fail on it (and in the compiled build ``copy`` and
``pickle``), attrs' helpers (``attrs.asdict``, ``attrs.evolve``, ``attrs.fields``) do not
apply, and it has no ``__match_args__``. Nothing may subclass it (mypyc refuses
interpreted subclasses of compiled classes). Attribute types are checked on assignment in
the compiled build (a ``response_code`` must be an ``int``).
"""

from __future__ import annotations

import time
from typing import Any

from trioproxy.http.headers import Headers

#: The clock of every ``*_monotonic``/``*_tx``/``*_rx`` timestamp below.
now = time.perf_counter

_FIELDS = (
    "start_time",
    "start_monotonic",
    "protocol",
    "downstream_remote_address",
    "downstream_local_address",
    "downstream_direct_remote_address",
    "requested_server_name",
    "request_headers",
    "response_headers",
    "response_trailers",
    "response_code",
    "response_code_details",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "upstream_cluster",
    "upstream_host",
    "upstream_local_address",
    "upstream_transport_failure_reason",
    "route_name",
    "virtual_host_name",
    "last_downstream_rx",
    "first_upstream_tx",
    "first_upstream_rx",
    "last_upstream_rx",
    "first_downstream_tx",
    "last_downstream_tx",
    "end_monotonic",
    "connection_id",
    "attempt_count",
    "health_check",
    "filter_state",
    "local_reply_body",
    "upstream_cluster_observability",
)


class StreamInfo:
    __slots__ = _FIELDS

    def __init__(
        self,
        start_time: float,  # wall clock, seconds since the epoch
        start_monotonic: float,  # now() at the first byte of the request
        protocol: str = "HTTP/1.1",
        downstream_remote_address: str = "",  # "ip:port"
        downstream_local_address: str = "",
        downstream_direct_remote_address: str = "",
        requested_server_name: str = "",
        request_headers: Headers | None = None,
        response_headers: Headers | None = None,
        response_trailers: Headers | None = None,
        response_code: int = 0,
        response_code_details: str = "",
        response_flags: set[str] | None = None,  # None: a new empty set
        bytes_received: int = 0,
        bytes_sent: int = 0,
        upstream_cluster: str = "",
        upstream_host: str = "",  # "ip:port" of the chosen upstream host
        upstream_local_address: str = "",
        upstream_transport_failure_reason: str = "",
        route_name: str = "",
        virtual_host_name: str = "",
        last_downstream_rx: float | None = None,  # monotonic: last byte of the request received
        first_upstream_tx: float | None = None,  # monotonic
        first_upstream_rx: float | None = None,
        last_upstream_rx: float | None = None,
        first_downstream_tx: float | None = None,
        last_downstream_tx: float | None = None,
        end_monotonic: float | None = None,
        connection_id: int = 0,
        attempt_count: int = 0,
        health_check: bool = False,  # answered by/for a health check (not_health_check_filter)
        filter_state: dict[str, Any] | None = None,  # None: a new empty dict
        local_reply_body: str = "",  # a local reply's own body (%LOCAL_REPLY_BODY%)
        upstream_cluster_observability: str = "",  # its alt_stat_name, if it has one
    ) -> None:
        self.start_time = start_time
        self.start_monotonic = start_monotonic
        self.protocol = protocol
        self.downstream_remote_address = downstream_remote_address
        self.downstream_local_address = downstream_local_address
        self.downstream_direct_remote_address = downstream_direct_remote_address
        self.requested_server_name = requested_server_name
        self.request_headers = request_headers
        self.response_headers = response_headers
        self.response_trailers = response_trailers
        self.response_code = response_code
        self.response_code_details = response_code_details
        self.response_flags: set[str] = set() if response_flags is None else response_flags
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.upstream_cluster = upstream_cluster
        self.upstream_host = upstream_host
        self.upstream_local_address = upstream_local_address
        self.upstream_transport_failure_reason = upstream_transport_failure_reason
        self.route_name = route_name
        self.virtual_host_name = virtual_host_name
        self.last_downstream_rx = last_downstream_rx
        self.first_upstream_tx = first_upstream_tx
        self.first_upstream_rx = first_upstream_rx
        self.last_upstream_rx = last_upstream_rx
        self.first_downstream_tx = first_downstream_tx
        self.last_downstream_tx = last_downstream_tx
        self.end_monotonic = end_monotonic
        self.connection_id = connection_id
        self.attempt_count = attempt_count
        self.health_check = health_check
        self.filter_state: dict[str, Any] = {} if filter_state is None else filter_state
        self.local_reply_body = local_reply_body
        self.upstream_cluster_observability = upstream_cluster_observability

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"StreamInfo({fields})"

    def flags_string(self) -> str:
        """Envoy's %RESPONSE_FLAGS%: comma-separated short names, or ``-`` for none."""
        return ",".join(sorted(self.response_flags)) if self.response_flags else "-"

    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        return int((self.end_monotonic - self.start_monotonic) * 1000)
