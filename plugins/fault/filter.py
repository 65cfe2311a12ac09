"""The fault filter: on request headers, maybe a delay, then maybe an abort; on the response
body, maybe a bandwidth limit.

Per request (Envoy's ``FaultFilter``): the route's ``typed_per_filter_config`` replaces the
filter's config; a fault applies only when ``upstream_cluster`` (if set) is the routed cluster,
every ``headers`` matcher matches, and ``downstream_nodes`` (if set) holds the request's
``x-envoy-downstream-service-node``. Then each fault is drawn by its percentage — with
``header_delay``/``header_abort``/``header_limit``, its value and percentage come from the
``x-envoy-fault-*`` request headers, the percentage capped by the config's. While
``max_active_faults`` faults are under way, no new one starts (``faults_overflow``).

A delay flags the request ``DI``; an abort answers ``fault filter abort`` with the status (or,
for gRPC, ``grpc-status`` in a trailers-only response) and flags ``FI``. Stats, under the
connection manager's scope: ``fault.delays_injected``, ``aborts_injected``,
``response_rl_injected``, ``faults_overflow``, ``active_faults``, and per
``x-envoy-downstream-service-cluster``, ``fault.<cluster>.delays_injected`` and
``aborts_injected``.

The runtime (``trioproxy.runtime``) overrides percentages, the delay, the abort statuses and
``max_active_faults`` through Envoy's keys (``fault.http.abort.abort_percent`` …; the
``*_runtime`` fields rename them).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from trioproxy import runtime
from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.stats import Scope

from .config import FaultConfig, Percentage

_NAME = "envoy.filters.http.fault"
_STATE = "envoy.filters.http.fault"  # filter_state key: this stream's active fault
ABORT_BODY = b"fault filter abort"


class _Active:
    """A stream's fault while it lasts (it counts against ``max_active_faults``)."""

    __slots__ = ("counted", "rate", "sent", "started")

    def __init__(self) -> None:
        self.counted = False
        self.rate: float | None = None  # bytes per second
        self.sent = 0
        self.started = 0.0


class FaultFilter(HttpFilter):
    #: The rate limit only paces the body: a Content-Length stays true.
    keeps_response_length = True

    def __init__(
        self, config: FaultConfig, scope: Scope, rng: Callable[[], float] = random.random
    ) -> None:
        self.config = config
        self.scope = scope.scope("fault.")
        self.delays = self.scope.counter("delays_injected")
        self.aborts = self.scope.counter("aborts_injected")
        self.limits = self.scope.counter("response_rl_injected")
        self.overflow = self.scope.counter("faults_overflow")
        self.active = self.scope.gauge("active_faults")
        self.rng = rng

    def _config_for(self, stream: HttpStream) -> FaultConfig:
        override = stream.per_filter_config(_NAME)
        return override if isinstance(override, FaultConfig) else self.config

    def _applies(self, c: FaultConfig, stream: HttpStream, headers: Headers) -> bool:
        if c.upstream_cluster:
            route = stream.route
            name = route.cluster_name(headers) if route is not None else None
            if name != c.upstream_cluster:
                return False
        node = headers.get("x-envoy-downstream-service-node")
        if c.downstream_nodes and node not in c.downstream_nodes:
            return False
        return all(m(headers) for m in c.headers)

    def _start(self, c: FaultConfig, stream: HttpStream) -> _Active | None:
        """A new fault, unless ``max_active_faults`` are under way."""
        state = stream.filter_state.get(_STATE)
        if isinstance(state, _Active):
            return state
        limit = c.max_active_faults
        key = c.runtime_keys["max_active_faults_runtime"]
        limit = runtime.current().get_int(key, -1 if limit is None else limit)
        if limit >= 0 and self.active.value >= limit:
            self.overflow.value += 1
            return None
        state = _Active()
        state.counted = True
        self.active.inc()
        stream.filter_state[_STATE] = state
        return state

    def _downstream(self, c: FaultConfig, headers: Headers, name: str) -> None:
        cluster = headers.get("x-envoy-downstream-service-cluster")
        if cluster and not c.disable_downstream_cluster_stats:
            self.scope.counter(f"{cluster}.{name}").value += 1

    def _drawn(
        self, pct: Percentage, header: str | None, headers: Headers, runtime_key: str
    ) -> bool:
        if header is not None:
            pct = pct.capped(headers.get(header))
        return pct.hit(self.rng, runtime_key)

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        c = self._config_for(stream)
        if not (c.has_delay or c.has_abort or c.has_rate_limit):
            return None
        if not self._applies(c, stream, headers):
            return None
        # delay
        delay = c.delay
        if c.header_delay:
            value = headers.get("x-envoy-fault-delay-request")
            delay = int(value) / 1000 if value is not None and value.isdecimal() else None
        pct_header = "x-envoy-fault-delay-request-percentage" if c.header_delay else None
        keys = c.runtime_keys
        if delay and not c.header_delay:
            ms = runtime.current().get_int(keys["delay_duration_runtime"], int(delay * 1000))
            delay = ms / 1000
        drawn = bool(delay) and self._drawn(
            c.delay_percentage, pct_header, headers, keys["delay_percent_runtime"]
        )
        if drawn and self._start(c, stream) is not None:
            self.delays.value += 1
            self._downstream(c, headers, "delays_injected")
            stream.info.response_flags.add("DI")
            await trio.sleep(delay or 0)
        # abort
        reply = self._abort(c, headers)
        if reply is not None:
            pct_header = "x-envoy-fault-abort-request-percentage" if c.header_abort else None
            drawn = self._drawn(
                c.abort_percentage, pct_header, headers, keys["abort_percent_runtime"]
            )
            if drawn and self._start(c, stream) is not None:
                self.aborts.value += 1
                self._downstream(c, headers, "aborts_injected")
                return reply
        # response rate limit
        kbps = c.rate_limit_kbps
        if c.header_limit:
            value = headers.get("x-envoy-fault-throughput-response")
            kbps = int(value) if value is not None and value.isdecimal() and int(value) else None
        pct_header = "x-envoy-fault-throughput-response-percentage" if c.header_limit else None
        rl_key = keys["response_rate_limit_percent_runtime"]
        if kbps and self._drawn(c.rate_limit_percentage, pct_header, headers, rl_key):
            state = self._start(c, stream)
            if state is not None:
                self.limits.value += 1
                state.rate = kbps * 1024.0
        return None

    @staticmethod
    def _abort(c: FaultConfig, headers: Headers) -> LocalReply | None:
        status, grpc_status = c.abort_status, c.abort_grpc_status
        rt = runtime.current()
        if status is not None:
            status = rt.get_int(c.runtime_keys["abort_http_status_runtime"], status)
        if grpc_status is not None:
            grpc_status = rt.get_int(c.runtime_keys["abort_grpc_status_runtime"], grpc_status)
        if c.header_abort:
            status = grpc_status = None
            value = headers.get("x-envoy-fault-abort-request")
            if value is not None and value.isdecimal() and 200 <= int(value) < 600:
                status = int(value)
            value = headers.get("x-envoy-fault-abort-grpc-request")
            if value is not None and value.isdecimal():
                grpc_status = int(value)
        if status is not None:  # (both abort headers: the HTTP status wins, as in Envoy)
            return LocalReply(status, ABORT_BODY, details="fault_filter_abort", flag="FI")
        if grpc_status is not None:
            # (a gRPC request gets it trailers-only, with this grpc-status: ``for_request``)
            return LocalReply(
                200, ABORT_BODY, details="fault_filter_abort", flag="FI", grpc_status=grpc_status
            )
        return None

    async def on_response_data(self, stream: HttpStream, data: bytes, end_stream: bool) -> bytes:
        state = stream.filter_state.get(_STATE)
        if not isinstance(state, _Active) or state.rate is None or not data:
            return data
        now = trio.current_time()
        if not state.sent:
            state.started = now
        state.sent += len(data)
        # pace: this chunk leaves when the bytes so far fit the rate
        wait = state.started + state.sent / state.rate - now
        if wait > 0:
            await trio.sleep(wait)
        return data

    def on_log(self, stream: HttpStream) -> None:
        state = stream.filter_state.get(_STATE)
        if isinstance(state, _Active) and state.counted:
            state.counted = False
            self.active.dec()
