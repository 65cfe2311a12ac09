"""The router's own config (``envoy.extensions.filters.http.router.v3.Router``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError

_UNSUPPORTED = ("upstream_http_filters", "upstream_log", "upstream_log_options")


@attrs.frozen
class RouterConfig:
    dynamic_stats: bool = True
    suppress_envoy_headers: bool = False
    respect_expected_rq_timeout: bool = False
    strict_check_headers: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> RouterConfig:
        for name in _UNSUPPORTED:
            if d.get(name):
                raise ConfigError(f"{name} is not supported yet", path=name)
        ds = d.get("dynamic_stats", True)
        if isinstance(ds, Mapping):  # BoolValue wrapper left as {"value": …}
            ds = ds.get("value", True)
        return cls(
            dynamic_stats=bool(ds),
            suppress_envoy_headers=bool(d.get("suppress_envoy_headers", False)),
            respect_expected_rq_timeout=bool(d.get("respect_expected_rq_timeout", False)),
            strict_check_headers=tuple(d.get("strict_check_headers", ())),
        )
