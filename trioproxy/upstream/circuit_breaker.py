"""Per-cluster circuit breakers (Envoy's ResourceManager for priority DEFAULT), sans-IO.

Theory of operation: four resources, each a count against a limit: connections, pending
requests (waiting for a connection), active requests and active retries. ``can_*`` asks,
``inc_*`` / ``dec_*`` move the count and keep the ``*_open`` gauges (1 when the count has reached
the limit) and, with ``track_remaining``, the ``remaining_*`` gauges in step. Whoever refuses
work counts the overflow stat; the breaker itself only counts.
"""

from __future__ import annotations

from trioproxy.stats import Gauge, Scope
from trioproxy.upstream.config import CircuitBreakerThresholds
from trioproxy.upstream.stats import CircuitBreakerStats, RemainingStats


class _Resource:
    __slots__ = ("count", "limit", "open_gauge", "remaining")

    def __init__(self, limit: int, open_gauge: Gauge, remaining: Gauge | None) -> None:
        self.count = 0
        self.limit = limit
        self.open_gauge = open_gauge
        self.remaining = remaining
        self._update()

    def can_create(self) -> bool:
        return self.count < self.limit

    def inc(self) -> None:
        self.count += 1
        self._update()

    def dec(self) -> None:
        self.count -= 1
        self._update()

    def _update(self) -> None:
        self.open_gauge.value = 1 if self.count >= self.limit else 0
        if self.remaining is not None:
            self.remaining.value = max(0, self.limit - self.count)


class CircuitBreakers:
    __slots__ = ("connections", "pending", "requests", "retries", "stats", "thresholds")

    def __init__(self, thresholds: CircuitBreakerThresholds, scope: Scope) -> None:
        """``scope`` is the cluster's scope; gauges go under ``circuit_breakers.default.``."""
        self.thresholds = thresholds
        cb_scope = scope.scope("circuit_breakers.default.")
        self.stats = s = CircuitBreakerStats(cb_scope)
        CircuitBreakerStats(scope.scope("circuit_breakers.high."))  # HIGH is not used yet
        r = RemainingStats(cb_scope) if thresholds.track_remaining else None
        if r is not None:
            r.remaining_cx_pools.value = 2**64 - 1
        t = thresholds
        self.connections = _Resource(t.max_connections, s.cx_open, r.remaining_cx if r else None)
        self.pending = _Resource(
            t.max_pending_requests, s.rq_pending_open, r.remaining_pending if r else None
        )
        self.requests = _Resource(t.max_requests, s.rq_open, r.remaining_rq if r else None)
        self.retries = _Resource(t.max_retries, s.rq_retry_open, r.remaining_retries if r else None)

    def can_retry(self) -> bool:
        """Room for one more retry: under ``max_retries``, or within the retry budget (a share
        of the requests active and pending, at least ``min_retry_concurrency``)."""
        percent = self.thresholds.retry_budget_percent
        if percent is None:
            return self.retries.can_create()
        # (the request asking is outstanding, whether or not its attempt let go of its slot)
        outstanding = max(1, self.requests.count + self.pending.count)
        limit = max(self.thresholds.min_retry_concurrency, percent / 100.0 * outstanding)
        return self.retries.count < limit

    def __repr__(self) -> str:
        return (
            f"<CircuitBreakers cx={self.connections.count}/{self.connections.limit}"
            f" pending={self.pending.count}/{self.pending.limit}"
            f" rq={self.requests.count}/{self.requests.limit}"
            f" retries={self.retries.count}/{self.retries.limit}>"
        )
