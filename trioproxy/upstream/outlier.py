"""Outlier detection: hosts that keep failing leave load balancing for a while.

Theory of operation (Envoy's ``Outlier::DetectorImpl``): the router reports each attempt's
outcome for its host — the response status when headers arrive, or a local-origin failure
(connect failure, reset, timeout). Unless ``split_external_local_origin_errors`` is set, a
local-origin failure counts as the status it turns into (503, or 504 for a timeout). A host is
ejected when

- ``consecutive_5xx`` responses in a row were 5xx (enforced at ``enforcing_consecutive_5xx``
  percent, default 100),
- ``consecutive_gateway_failure`` in a row were 502/503/504 (enforced at
  ``enforcing_consecutive_gateway_failure``, default 0: detected and counted only),
- with ``split_external_local_origin_errors``, ``consecutive_local_origin_failure`` local
  failures in a row,
- at each ``interval`` (default 10 s): its success rate over the interval is below
  ``mean - stdev_factor/1000 * stdev`` of the hosts with at least ``success_rate_request_volume``
  requests (when at least ``success_rate_minimum_hosts`` have), or its failure percentage is at
  least ``failure_percentage_threshold`` (``enforcing_failure_percentage``, default 0).

An ejection lasts ``base_ejection_time * n`` (n counts the host's ejections; capped at
``max_ejection_time``) and is lifted at the first interval tick after it ran out; each tick a
host spends in service lowers its n by one. ``max_ejection_percent`` (default 10) bounds the
share of hosts ejected at once, though one host can always be (``ejections_overflow`` counts
the refusals). Stats: ``cluster.<name>.outlier_detection.*``, as Envoy names them.

Not built (refused by name): ``monitors``, ``max_ejection_time_jitter`` other than 0,
local-origin success rate and failure percentage enforcement.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError
from trioproxy.stats import Scope
from trioproxy.stats.store import NEVER_IMPORT
from trioproxy.upstream.host import Host


@attrs.frozen
class OutlierConfig:
    consecutive_5xx: int = 5
    enforcing_consecutive_5xx: int = 100
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    enforcing_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> OutlierConfig:
        if d.get("monitors"):
            raise ConfigError("not supported yet", path="outlier_detection.monitors")
        jitter = duration(d.get("max_ejection_time_jitter"), 0.0)
        if jitter:
            raise ConfigError(
                "not supported yet", path="outlier_detection.max_ejection_time_jitter"
            )
        local_origin = (
            "enforcing_local_origin_success_rate",
            "enforcing_failure_percentage_local_origin",
        )
        for name in local_origin:
            if d.get("split_external_local_origin_errors") and int(d.get(name, 0) or 0):
                raise ConfigError("not supported yet", path=f"outlier_detection.{name}")
        kw: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name not in d:
                continue
            value = d[field.name]
            path = f"outlier_detection.{field.name}"
            if field.type in ("float", float):
                try:
                    kw[field.name] = duration(value, None)
                except ConfigError as exc:
                    raise exc.at(path) from None
            elif field.type in ("bool", bool):
                kw[field.name] = bool(value)
            else:
                kw[field.name] = int(value)
                percent = field.name.startswith("enforcing_") or field.name.endswith("_percent")
                if percent and not 0 <= kw[field.name] <= 100:
                    raise ConfigError("must be between 0 and 100", path=path)
        config = cls(**kw)
        if config.interval <= 0 or config.base_ejection_time <= 0:
            raise ConfigError("must be greater than 0", path="outlier_detection.interval")
        return config


class _HostState:
    """Per-host counters (kept on ``Host.outlier``)."""

    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "ejected_at",
        "ejections",
        "total",
        "failed",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.ejected_at: float | None = None
        self.ejections = 0  # the multiplier of base_ejection_time
        self.total = 0  # this interval
        self.failed = 0


class OutlierDetector:
    """The detector of one cluster. ``hosts`` returns the current members; ``changed`` is
    called after an ejection or its end (the cluster rebuilds its balancer)."""

    def __init__(
        self,
        config: OutlierConfig,
        scope: Scope,
        hosts: Callable[[], Sequence[Host]],
        changed: Callable[[], None],
        *,
        clock: Callable[[], float] = trio.current_time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.scope = scope.scope("outlier_detection.")
        self._hosts = hosts
        self._changed = changed
        self._clock = clock
        self._rng = rng
        self.active = self.scope.gauge("ejections_active", NEVER_IMPORT)  # per worker: the most
        self.enforced_total = self.scope.counter("ejections_enforced_total")
        self.overflow = self.scope.counter("ejections_overflow")
        self._cancel = trio.CancelScope()

    # -- what the router reports -----------------------------------------------------------
    def report_status(self, host: Host, status: int) -> None:
        st = _state(host)
        st.total += 1
        c = self.config
        if status >= 500:
            st.failed += 1
            if 502 <= status <= 504:
                st.consecutive_gateway += 1
                if st.consecutive_gateway == c.consecutive_gateway_failure:
                    self._detected(
                        host, "consecutive_gateway_failure", c.enforcing_consecutive_gateway_failure
                    )
            else:
                st.consecutive_gateway = 0
            st.consecutive_5xx += 1
            if st.consecutive_5xx == c.consecutive_5xx:
                self._detected(host, "consecutive_5xx", c.enforcing_consecutive_5xx)
        else:
            st.consecutive_5xx = 0
            st.consecutive_gateway = 0

    def report_local_failure(self, host: Host, *, timeout: bool) -> None:
        """A connect failure, reset or timeout: nothing came back from the host."""
        c = self.config
        if not c.split_external_local_origin_errors:
            self.report_status(host, 504 if timeout else 503)
            return
        st = _state(host)
        st.consecutive_local += 1
        if st.consecutive_local == c.consecutive_local_origin_failure:
            self._detected(
                host,
                "consecutive_local_origin_failure",
                c.enforcing_consecutive_local_origin_failure,
            )

    def report_local_success(self, host: Host) -> None:
        if self.config.split_external_local_origin_errors:
            _state(host).consecutive_local = 0

    # -- ejection --------------------------------------------------------------------------
    def _detected(self, host: Host, kind: str, enforcing: int) -> None:
        self.scope.counter(f"ejections_detected_{kind}").value += 1
        if host.ejected or self._rng() * 100 >= enforcing:
            return
        hosts = self._hosts()
        ejected = sum(1 for h in hosts if h.ejected)
        if ejected and 100.0 * (ejected + 1) / len(hosts) > self.config.max_ejection_percent:
            self.overflow.value += 1
            return
        st = _state(host)
        st.consecutive_5xx = st.consecutive_gateway = st.consecutive_local = 0
        st.ejections += 1
        st.ejected_at = self._clock()
        host.ejected = True
        self.scope.counter(f"ejections_enforced_{kind}").value += 1
        self.enforced_total.value += 1
        self.active.value += 1
        self._changed()

    def tick(self) -> None:
        """The ``interval`` sweep: lift ejections that ran out, then judge success rates."""
        c = self.config
        now = self._clock()
        hosts = list(self._hosts())
        changed = False
        for host in hosts:
            st = host.outlier
            if st is None:
                continue
            if host.ejected and st.ejected_at is not None:
                cap = max(c.max_ejection_time, c.base_ejection_time)
                span = min(c.base_ejection_time * st.ejections, cap)
                if now - st.ejected_at >= span:
                    host.ejected = False
                    st.ejected_at = None
                    self.active.value -= 1
                    changed = True
            elif not host.ejected and st.ejections > 0:
                st.ejections -= 1
        if changed:
            self._changed()
        self._success_rate(hosts)
        for host in hosts:
            if host.outlier is not None:
                host.outlier.total = host.outlier.failed = 0

    def _success_rate(self, hosts: Sequence[Host]) -> None:
        c = self.config
        rates = []
        for h in hosts:
            st = h.outlier
            if st is not None and not h.ejected and st.total >= c.success_rate_request_volume:
                rates.append((h, 100.0 * (st.total - st.failed) / st.total))
        if len(rates) >= c.success_rate_minimum_hosts:
            values = [r for _, r in rates]
            mean = statistics.fmean(values)
            threshold = mean - (c.success_rate_stdev_factor / 1000.0) * statistics.pstdev(values)
            for host, rate in rates:
                if rate < threshold:
                    self._detected(host, "success_rate", c.enforcing_success_rate)
        volume = [
            h
            for h in hosts
            if h.outlier is not None
            and not h.ejected
            and h.outlier.total >= c.failure_percentage_request_volume
        ]
        if len(volume) >= c.failure_percentage_minimum_hosts:
            for host in volume:
                st = host.outlier
                if 100.0 * st.failed / st.total >= c.failure_percentage_threshold:
                    self._detected(host, "failure_percentage", c.enforcing_failure_percentage)

    async def run(self) -> None:
        """Tick every ``interval`` until ``stop``."""
        with self._cancel:
            while True:
                await trio.sleep(self.config.interval)
                self.tick()

    def stop(self) -> None:
        self._cancel.cancel()


def _state(host: Host) -> _HostState:
    st = host.outlier
    if st is None:
        st = host.outlier = _HostState()
    return st  # type: ignore[no-any-return]


__all__ = ["OutlierConfig", "OutlierDetector"]
