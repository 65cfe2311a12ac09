"""The local rate limit filter: token buckets in this process, no service to ask.

Per request (Envoy's ``LocalRateLimit`` filter): the route's ``typed_per_filter_config`` (with
its own buckets) or the filter's config; ``filter_enabled`` of the requests are looked at
(``enabled``). With ``descriptors``, the route's ``rate_limits`` of this ``stage`` (and the
virtual host's, by ``vh_rate_limits``) give the request's descriptors; each configured
descriptor they match spends a token of its own bucket, the most restrictive first, and the
default bucket is spent too unless ``always_consume_default_token_bucket`` is false and a
descriptor matched. With a token the request goes on (``ok``); without one it is counted
(``rate_limited``) and, for ``filter_enforced`` of the requests, answered with ``429
local_rate_limited`` (``enforced``, flag ``RL``) — else it goes on with
``request_headers_to_add_when_not_enforced``. ``enable_x_ratelimit_headers`` adds
``x-ratelimit-limit``/``-remaining``/``-reset`` from the bucket that decided. Stats:
``<stat_prefix>.http_local_rate_limit.{enabled,ok,rate_limited,enforced}``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.http.rate_limits import descriptors as request_descriptors
from trioproxy.stats import Store

from .bucket import TokenBucket
from .config import BucketConfig, Descriptor, LocalRateLimitConfig

NAME = "envoy.filters.http.local_ratelimit"
_STATE = "envoy.filters.http.local_ratelimit"
BODY = b"local_rate_limited"


def _bucket(c: BucketConfig) -> TokenBucket:
    return TokenBucket(c.max_tokens, c.tokens_per_fill, c.fill_interval)


def _matches(want: tuple[tuple[str, str], ...], got: tuple[tuple[str, str], ...]) -> bool:
    return len(want) == len(got) and all(
        wk == gk and (wv == "" or wv == gv) for (wk, wv), (gk, gv) in zip(want, got, strict=True)
    )


class Limiter:
    """One config's buckets and stats (the filter's, or a route's)."""

    def __init__(self, config: LocalRateLimitConfig, store: Store) -> None:
        self.config = config
        scope = store.scope(f"{config.stat_prefix}.http_local_rate_limit.")
        self.enabled = scope.counter("enabled")
        self.ok = scope.counter("ok")
        self.rate_limited = scope.counter("rate_limited")
        self.enforced = scope.counter("enforced")
        self.default = _bucket(config.bucket) if config.bucket is not None else None
        self.descriptors: list[tuple[Descriptor, TokenBucket]] = sorted(
            ((d, _bucket(d.bucket)) for d in config.descriptors), key=lambda p: p[1].rate
        )

    def allow(
        self, wanted: Sequence[tuple[tuple[str, str], ...]]
    ) -> tuple[bool, TokenBucket | None]:
        """Spend tokens for a request with these descriptors: (allowed, the deciding bucket)."""
        matched = False
        last: TokenBucket | None = None
        if self.descriptors and wanted:
            for desc, bucket in self.descriptors:
                if any(_matches(desc.entries, got) for got in wanted):
                    matched = True
                    last = bucket
                    if not bucket.consume():
                        return False, bucket
        if self.default is not None and (not matched or self.config.always_consume_default):
            ok = self.default.consume()
            return ok, last if (ok and last is not None) else self.default
        return True, last


class LocalRateLimitFilter(HttpFilter):
    def __init__(
        self,
        limiter: Limiter,
        per_route: Callable[[LocalRateLimitConfig], Limiter],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.limiter = limiter
        self.per_route = per_route
        self.rng = rng

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        override = stream.per_filter_config(NAME)
        limiter = (
            self.per_route(override) if isinstance(override, LocalRateLimitConfig) else self.limiter
        )
        c = limiter.config
        if not c.enabled.enabled(self.rng):
            return None
        limiter.enabled.value += 1
        wanted = self._descriptors(stream, c) if limiter.descriptors else []
        ok, bucket = limiter.allow(wanted)
        if c.x_ratelimit_headers and bucket is not None:
            stream.filter_state[_STATE] = bucket
        if ok:
            limiter.ok.value += 1
            return None
        limiter.rate_limited.value += 1
        if not c.enforced.enabled(self.rng):
            for key, value, append in c.headers_when_not_enforced:
                if append:
                    headers.add(key, value)
                else:
                    headers.set(key, value)
            return None
        limiter.enforced.value += 1
        reply_headers = [(k, v) for k, v, _ in c.response_headers]
        # (a gRPC request gets it trailers-only: ``for_request``)
        return LocalReply(
            c.status,
            BODY,
            tuple(reply_headers),
            details="local_rate_limited",
            flag="RL",
            grpc_status=8 if c.grpc_resource_exhausted else None,
        )

    @staticmethod
    def _descriptors(
        stream: HttpStream, c: LocalRateLimitConfig
    ) -> list[tuple[tuple[str, str], ...]]:
        route = stream.route
        if route is None:
            return []
        limits = list(getattr(route, "rate_limits", ()))
        vh = route.virtual_host
        vh_limits = list(getattr(vh, "rate_limits", ())) if vh is not None else []
        if c.vh_rate_limits == "INCLUDE" or (c.vh_rate_limits == "OVERRIDE" and not limits):
            limits += vh_limits
        return request_descriptors(stream, limits, c.stage)

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        bucket = stream.filter_state.get(_STATE)
        if isinstance(bucket, TokenBucket):
            headers.set("x-ratelimit-limit", str(bucket.max_tokens))
            headers.set("x-ratelimit-remaining", str(bucket.remaining))
            headers.set("x-ratelimit-reset", str(bucket.reset_seconds()))
