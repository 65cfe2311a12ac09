"""The network local rate limit filter (``envoy.filters.network.local_ratelimit``): each new
connection spends a token; without one it is closed (``local_rate_limit.<stat_prefix>.
rate_limited``). ``runtime_enabled`` (a runtime flag's default) can switch it off."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.network.filter import DownstreamConnection, NetworkFilter
from trioproxy.stats import Store

from .bucket import TokenBucket
from .config import BucketConfig


@attrs.frozen
class NetworkLimitConfig:
    stat_prefix: str
    bucket: BucketConfig
    enabled: bool = True

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> NetworkLimitConfig:
        if d.get("share_key"):
            raise ConfigError("not supported yet", path="share_key")
        prefix = str(d.get("stat_prefix", ""))
        if not prefix:
            raise ConfigError("value length must be at least 1 characters", path="stat_prefix")
        try:
            bucket = BucketConfig.from_proto(d.get("token_bucket") or {})
        except ConfigError as exc:
            raise exc.at("token_bucket") from None
        runtime = d.get("runtime_enabled") or {}
        default = runtime.get("default_value", True)
        enabled = default.get("value", True) if isinstance(default, Mapping) else bool(default)
        return cls(prefix, bucket, enabled)


class NetworkLocalRateLimit(NetworkFilter):
    def __init__(self, config: NetworkLimitConfig, store: Store) -> None:
        self.config = config
        b = config.bucket
        self.bucket = TokenBucket(b.max_tokens, b.tokens_per_fill, b.fill_interval)
        self.rate_limited = store.scope(f"local_rate_limit.{config.stat_prefix}.").counter(
            "rate_limited"
        )

    async def on_new_connection(self, conn: DownstreamConnection) -> bool:
        if not self.config.enabled or self.bucket.consume():
            return True
        self.rate_limited.value += 1
        return False
