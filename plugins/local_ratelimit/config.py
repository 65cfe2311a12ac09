"""The local rate limit filter's config
(``envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError
from trioproxy.runtime import NEVER, RuntimeFraction

_REFUSED = (
    "local_cluster_rate_limit",
    "rate_limits",
    "max_dynamic_descriptors",
    "local_rate_limit_per_downstream_connection",
)


@attrs.frozen
class BucketConfig:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> BucketConfig:
        max_tokens = int(d.get("max_tokens", 0))
        if max_tokens < 1:
            raise ConfigError("value must be greater than 0", path="max_tokens")
        per_fill = d.get("tokens_per_fill")
        per_fill = per_fill.get("value", 1) if isinstance(per_fill, Mapping) else per_fill
        try:
            interval = duration(d.get("fill_interval"), None)
        except ConfigError as exc:
            raise exc.at("fill_interval") from None
        if interval is None or interval <= 0:
            raise ConfigError("value is required and must be greater than 0", path="fill_interval")
        return cls(max_tokens, int(1 if per_fill is None else per_fill), interval)


def _header_options(items: Any, path: str) -> tuple[tuple[str, str, bool], ...]:
    out = []
    for i, opt in enumerate(items or ()):
        header = opt.get("header") or {}
        key = str(header.get("key", "")).lower()
        if not key:
            raise ConfigError("a header needs a key", path=f"{path}[{i}].header.key")
        action = opt.get("append_action", "APPEND_IF_EXISTS_OR_ADD")
        out.append((key, str(header.get("value", "")), action != "OVERWRITE_IF_EXISTS_OR_ADD"))
    return tuple(out)


@attrs.frozen
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    bucket: BucketConfig


@attrs.frozen
class LocalRateLimitConfig:
    stat_prefix: str
    status: int = 429
    bucket: BucketConfig | None = None
    enabled: RuntimeFraction = NEVER
    enforced: RuntimeFraction = NEVER
    response_headers: tuple[tuple[str, str, bool], ...] = ()
    headers_when_not_enforced: tuple[tuple[str, str, bool], ...] = ()
    descriptors: tuple[Descriptor, ...] = ()
    stage: int = 0
    x_ratelimit_headers: bool = False
    vh_rate_limits: str = "OVERRIDE"
    always_consume_default: bool = True
    grpc_resource_exhausted: bool = False

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> LocalRateLimitConfig:
        for key in _REFUSED:
            if d.get(key):
                raise ConfigError("not supported yet", path=key)
        prefix = str(d.get("stat_prefix", ""))
        if not prefix:
            raise ConfigError("value length must be at least 1 characters", path="stat_prefix")
        kw: dict[str, Any] = {"stat_prefix": prefix}
        status = (d.get("status") or {}).get("code")
        if status is not None:
            kw["status"] = _status_code(status)
        if d.get("token_bucket") is not None:
            try:
                kw["bucket"] = BucketConfig.from_proto(d["token_bucket"])
            except ConfigError as exc:
                raise exc.at("token_bucket") from None
        kw["enabled"] = RuntimeFraction.from_proto(d.get("filter_enabled"), 0)
        kw["enforced"] = RuntimeFraction.from_proto(d.get("filter_enforced"), 0)
        kw["response_headers"] = _header_options(
            d.get("response_headers_to_add"), "response_headers_to_add"
        )
        kw["headers_when_not_enforced"] = _header_options(
            d.get("request_headers_to_add_when_not_enforced"),
            "request_headers_to_add_when_not_enforced",
        )
        descriptors = []
        for i, desc in enumerate(d.get("descriptors", ())):
            path = f"descriptors[{i}]"
            entries = tuple(
                (str(e.get("key", "")), str(e.get("value", ""))) for e in desc.get("entries", ())
            )
            if not entries:
                raise ConfigError("a descriptor needs entries", path=f"{path}.entries")
            try:
                bucket = BucketConfig.from_proto(desc.get("token_bucket") or {})
            except ConfigError as exc:
                raise exc.at(f"{path}.token_bucket") from None
            descriptors.append(Descriptor(entries, bucket))
        if descriptors and kw.get("bucket") is None:
            raise ConfigError("descriptors need a default token_bucket", path="token_bucket")
        kw["descriptors"] = tuple(descriptors)
        kw["stage"] = int(d.get("stage", 0) or 0)
        kw["x_ratelimit_headers"] = d.get("enable_x_ratelimit_headers", "OFF") == "DRAFT_VERSION_03"
        kw["vh_rate_limits"] = str(d.get("vh_rate_limits", "OVERRIDE"))
        always = d.get("always_consume_default_token_bucket", True)
        kw["always_consume_default"] = (
            always.get("value", True) if isinstance(always, Mapping) else bool(always)
        )
        kw["grpc_resource_exhausted"] = bool(d.get("rate_limited_as_resource_exhausted", False))
        return cls(**kw)


_CODE_NAMES = {"TooManyRequests": 429, "ServiceUnavailable": 503, "Forbidden": 403}


def _status_code(value: Any) -> int:
    if isinstance(value, str) and not value.isdigit():
        code = _CODE_NAMES.get(value)
        if code is None:
            raise ConfigError(f"status code {value} is not supported yet", path="status.code")
        return code
    code = int(value)
    if code < 400:
        raise ConfigError("must be at least 400", path="status.code")
    return code
