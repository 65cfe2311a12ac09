"""The fault filter's config (``envoy.extensions.filters.http.fault.v3.HTTPFault``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioproxy import runtime
from trioproxy.config.types import DENOMINATORS, duration, fractional_percent
from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.matchers import header_matcher

#: The runtime keys Envoy's fault filter reads (their ``*_runtime`` fields rename them).
RUNTIME_DEFAULTS = {
    "delay_percent_runtime": "fault.http.delay.fixed_delay_percent",
    "abort_percent_runtime": "fault.http.abort.abort_percent",
    "delay_duration_runtime": "fault.http.delay.fixed_duration_ms",
    "abort_http_status_runtime": "fault.http.abort.http_status",
    "max_active_faults_runtime": "fault.http.max_active_faults",
    "response_rate_limit_percent_runtime": "fault.http.rate_limit.response_percent",
    "abort_grpc_status_runtime": "fault.http.abort.grpc_status",
}


@attrs.frozen
class Percentage:
    """A ``FractionalPercent``: ``numerator`` out of ``denominator``."""

    numerator: int = 100
    denominator: int = 100

    @classmethod
    def from_proto(cls, d: Mapping[str, Any] | None) -> Percentage:
        if d is None:
            return cls()
        fractional_percent(d)  # validates the denominator
        denominator = DENOMINATORS[d.get("denominator", "HUNDRED")]
        return cls(min(int(d.get("numerator", 0)), denominator), denominator)

    def capped(self, header_value: str | None) -> Percentage:
        """A header's percentage (``x-envoy-fault-*-percentage``): its numerator over this
        denominator, never more than this one."""
        if header_value is None or not header_value.isdigit():
            return self
        return Percentage(min(int(header_value), self.numerator), self.denominator)

    def hit(self, rng: Callable[[], float], key: str = "") -> bool:
        """Drawn at this percentage, or at the runtime's numerator for ``key`` if it has one."""
        value = runtime.current().get(key) if key else None
        numerator = self.numerator
        if value is not None:
            try:
                numerator = min(int(float(value)), self.denominator)
            except ValueError:
                pass
        return rng() * self.denominator < numerator


@attrs.frozen
class FaultConfig:
    delay: float | None = None  # fixed_delay, seconds
    header_delay: bool = False
    delay_percentage: Percentage = Percentage()
    abort_status: int | None = None
    abort_grpc_status: int | None = None
    header_abort: bool = False
    abort_percentage: Percentage = Percentage()
    rate_limit_kbps: int | None = None
    header_limit: bool = False
    rate_limit_percentage: Percentage = Percentage()
    upstream_cluster: str = ""
    headers: tuple[Callable[[Headers], bool], ...] = ()
    downstream_nodes: frozenset[str] = frozenset()
    max_active_faults: int | None = None
    disable_downstream_cluster_stats: bool = False
    #: runtime key names by field (``RUNTIME_DEFAULTS`` unless renamed)
    runtime_keys: Mapping[str, str] = attrs.field(factory=lambda: dict(RUNTIME_DEFAULTS))

    @property
    def has_delay(self) -> bool:
        return self.delay is not None or self.header_delay

    @property
    def has_abort(self) -> bool:
        fixed = self.abort_status is not None or self.abort_grpc_status is not None
        return fixed or self.header_abort

    @property
    def has_rate_limit(self) -> bool:
        return self.rate_limit_kbps is not None or self.header_limit

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> FaultConfig:
        keys = {name: str(d.get(name) or default) for name, default in RUNTIME_DEFAULTS.items()}
        if "filter_metadata" in d:
            raise ConfigError("not supported yet", path="filter_metadata")
        kw: dict[str, Any] = {}
        delay = d.get("delay")
        if delay is not None:
            if "fixed_delay" in delay:
                try:
                    kw["delay"] = duration(delay["fixed_delay"], None)
                except ConfigError as exc:
                    raise exc.at("delay.fixed_delay") from None
            elif "header_delay" in delay:
                kw["header_delay"] = True
            else:
                raise ConfigError("fixed_delay or header_delay is required", path="delay")
            kw["delay_percentage"] = Percentage.from_proto(delay.get("percentage"))
        abort = d.get("abort")
        if abort is not None:
            if "http_status" in abort:
                status = int(abort["http_status"])
                if not 200 <= status < 600:
                    raise ConfigError("must be in [200, 600)", path="abort.http_status")
                kw["abort_status"] = status
            elif "grpc_status" in abort:
                kw["abort_grpc_status"] = int(abort["grpc_status"])
            elif "header_abort" in abort:
                kw["header_abort"] = True
            else:
                raise ConfigError(
                    "http_status, grpc_status or header_abort is required", path="abort"
                )
            kw["abort_percentage"] = Percentage.from_proto(abort.get("percentage"))
        limit = d.get("response_rate_limit")
        if limit is not None:
            if "fixed_limit" in limit:
                kbps = int((limit["fixed_limit"] or {}).get("limit_kbps", 0))
                if kbps < 1:
                    raise ConfigError(
                        "must be at least 1", path="response_rate_limit.fixed_limit.limit_kbps"
                    )
                kw["rate_limit_kbps"] = kbps
            elif "header_limit" in limit:
                kw["header_limit"] = True
            else:
                raise ConfigError(
                    "fixed_limit or header_limit is required", path="response_rate_limit"
                )
            kw["rate_limit_percentage"] = Percentage.from_proto(limit.get("percentage"))
        matchers = []
        for i, m in enumerate(d.get("headers", ())):
            try:
                matchers.append(header_matcher(m))
            except ConfigError as exc:
                raise exc.at(f"headers[{i}]") from None
        kw["headers"] = tuple(matchers)
        kw["upstream_cluster"] = str(d.get("upstream_cluster", ""))
        kw["downstream_nodes"] = frozenset(str(n) for n in d.get("downstream_nodes", ()))
        if d.get("max_active_faults") is not None:
            kw["max_active_faults"] = int(d["max_active_faults"])
        kw["runtime_keys"] = keys
        kw["disable_downstream_cluster_stats"] = bool(
            d.get("disable_downstream_cluster_stats", False)
        )
        return cls(**kw)
