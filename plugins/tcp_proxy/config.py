"""``envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`` → ``TcpProxyConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.upstream.config import duration, uint

DEFAULT_IDLE_TIMEOUT = 3600.0  # Envoy: 1 h
# Fields that change what the proxy does and are not built: refused, not ignored.
_NOT_YET = (
    "tunneling_config",
    "on_demand",
    "metadata_match",
    "hash_policy",
    "backoff_options",
    "proxy_protocol_tlvs",
)


@attrs.frozen
class WeightedCluster:
    name: str
    weight: int


@attrs.frozen
class TcpProxyConfig:
    stat_prefix: str
    cluster: str = ""
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # None: disabled
    max_connect_attempts: int = 1
    max_downstream_connection_duration: float | None = None
    access_log: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> TcpProxyConfig:
        prefix = str(d.get("stat_prefix", ""))
        if not prefix:
            raise ConfigError("value length must be at least 1 characters", path="stat_prefix")
        for key in _NOT_YET:
            if key in d:
                raise ConfigError(f"{key} is not supported yet", path=key)
        weighted: list[WeightedCluster] = []
        wc = d.get("weighted_clusters")
        if wc is not None:
            for i, c in enumerate(wc.get("clusters", ())):
                name = str(c.get("name", ""))
                if not name:
                    raise ConfigError(
                        "value length must be at least 1 characters",
                        path=f"weighted_clusters.clusters[{i}].name",
                    )
                weighted.append(
                    WeightedCluster(
                        name, uint(c.get("weight", 0), f"weighted_clusters.clusters[{i}].weight")
                    )
                )
            if not weighted:
                raise ConfigError(
                    "value must contain at least 1 item(s)", path="weighted_clusters.clusters"
                )
            if sum(c.weight for c in weighted) == 0:
                raise ConfigError(
                    "the weights of weighted_clusters must not all be 0",
                    path="weighted_clusters.clusters",
                )
        cluster = str(d.get("cluster", ""))
        if not cluster and not weighted:
            raise ConfigError("a tcp_proxy needs cluster or weighted_clusters", path="cluster")
        idle: float | None = DEFAULT_IDLE_TIMEOUT
        if "idle_timeout" in d:
            idle = duration(d["idle_timeout"], "idle_timeout") or None
        attempts = 1
        if "max_connect_attempts" in d:
            raw = d["max_connect_attempts"]
            attempts = uint(
                raw.get("value") if isinstance(raw, Mapping) else raw, "max_connect_attempts"
            )
            if attempts < 1:
                raise ConfigError(
                    "value must be greater than or equal to 1", path="max_connect_attempts"
                )
        max_duration = None
        if "max_downstream_connection_duration" in d:
            max_duration = (
                duration(
                    d["max_downstream_connection_duration"], "max_downstream_connection_duration"
                )
                or None
            )
        return cls(
            stat_prefix=prefix,
            cluster=cluster,
            weighted_clusters=tuple(weighted),
            idle_timeout=idle,
            max_connect_attempts=attempts,
            max_downstream_connection_duration=max_duration,
            access_log=tuple(d.get("access_log", ())),
        )
