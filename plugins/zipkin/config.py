"""``envoy.config.trace.v3.ZipkinConfig`` → ``ZipkinConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError


@attrs.frozen
class ZipkinConfig:
    collector_cluster: str
    collector_endpoint: str
    collector_hostname: str = ""
    trace_id_128bit: bool = False
    shared_span_context: bool = True

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> ZipkinConfig:
        for key in ("collector_cluster", "collector_endpoint"):
            if not d.get(key):
                raise ConfigError("value length must be at least 1 characters", path=key)
        version = d.get("collector_endpoint_version", "HTTP_JSON")
        if version not in ("HTTP_JSON", "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE"):
            raise ConfigError(
                f"collector_endpoint_version {version} is not supported yet (HTTP_JSON is)",
                path="collector_endpoint_version",
            )
        for key in ("split_spans_for_request", "collector_service"):
            if d.get(key):
                raise ConfigError(f"{key} is not supported yet", path=key)
        if d.get("trace_context_option", "USE_B3") != "USE_B3":
            raise ConfigError(
                "trace_context_option other than USE_B3 is not supported yet",
                path="trace_context_option",
            )
        shared = d.get("shared_span_context", True)
        if isinstance(shared, Mapping):
            shared = shared.get("value", True)
        return cls(
            collector_cluster=str(d["collector_cluster"]),
            collector_endpoint=str(d["collector_endpoint"]),
            collector_hostname=str(d.get("collector_hostname", "")),
            trace_id_128bit=bool(d.get("trace_id_128bit", False)),
            shared_span_context=bool(shared),
        )
