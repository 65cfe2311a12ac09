"""The CORS filter (Envoy's ``CorsFilter``).

A request with an ``Origin`` header, on a route with a policy: if no
``allow_origin_string_match`` matcher takes the origin, ``cors.origin_invalid`` counts it and
it goes on untouched. Otherwise (``cors.origin_valid``) a preflight — ``OPTIONS`` with
``Access-Control-Request-Method`` — is answered ``200`` by the proxy with
``access-control-allow-origin`` (the origin), ``-allow-credentials``, ``-allow-methods``,
``-allow-headers``, ``-max-age`` and ``-expose-headers`` as configured; any other request
goes upstream and its response gets ``access-control-allow-origin``, ``-allow-credentials``
and ``-expose-headers``. ``filter_enabled`` (default 100%) switches a policy off;
``shadow_enabled`` counts without acting. Refused: ``allow_private_network_access``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.http.matchers import string_matcher
from trioproxy.runtime import ALWAYS, NEVER, RuntimeFraction
from trioproxy.stats import Scope

NAME = "envoy.filters.http.cors"
_STATE = "envoy.filters.http.cors"


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    return bool(value.get("value", False)) if isinstance(value, Mapping) else bool(value)


@attrs.frozen
class CorsPolicy:
    origins: tuple[Callable[[str], bool], ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    enabled: RuntimeFraction = ALWAYS
    shadow: RuntimeFraction = NEVER
    forward_not_matching_preflights: bool = True

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> CorsPolicy:
        if d.get("allow_private_network_access"):
            raise ConfigError("not supported yet", path="allow_private_network_access")
        origins = []
        for i, m in enumerate(d.get("allow_origin_string_match", ())):
            try:
                origins.append(string_matcher(m))
            except ConfigError as exc:
                raise exc.at(f"allow_origin_string_match[{i}]") from None
        return cls(
            origins=tuple(origins),
            allow_methods=str(d.get("allow_methods", "")),
            allow_headers=str(d.get("allow_headers", "")),
            expose_headers=str(d.get("expose_headers", "")),
            max_age=str(d.get("max_age", "")),
            allow_credentials=_bool(d.get("allow_credentials"), False),
            enabled=RuntimeFraction.from_proto(d.get("filter_enabled"), 100),
            shadow=RuntimeFraction.from_proto(d.get("shadow_enabled"), 0),
            forward_not_matching_preflights=_bool(d.get("forward_not_matching_preflights"), True),
        )

    def allows(self, origin: str) -> bool:
        return any(m(origin) for m in self.origins)


class CorsFilter(HttpFilter):
    def __init__(self, scope: Scope, rng: Callable[[], float] = random.random) -> None:
        cors = scope.scope("cors.")
        self.valid = cors.counter("origin_valid")
        self.invalid = cors.counter("origin_invalid")
        self.rng = rng

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        policy = stream.per_filter_config(NAME)
        if not isinstance(policy, CorsPolicy):
            return None
        enabled, shadow = policy.enabled.enabled(self.rng), policy.shadow.enabled(self.rng)
        if not enabled and not shadow:
            return None
        origin = headers.get("origin")
        if not origin:
            return None
        preflight = headers.get(":method") == "OPTIONS" and bool(
            headers.get("access-control-request-method")
        )
        if not policy.allows(origin):
            self.invalid.value += 1
            if preflight and enabled and not policy.forward_not_matching_preflights:
                return LocalReply(403, b"", details="cors_origin_not_allowed")
            return None
        self.valid.value += 1
        if not enabled:
            return None
        if not preflight:
            stream.filter_state[_STATE] = (policy, origin)
            return None
        out = [("access-control-allow-origin", origin)]
        if policy.allow_credentials:
            out.append(("access-control-allow-credentials", "true"))
        for name, value in (
            ("access-control-allow-methods", policy.allow_methods),
            ("access-control-allow-headers", policy.allow_headers),
            ("access-control-max-age", policy.max_age),
            ("access-control-expose-headers", policy.expose_headers),
        ):
            if value:
                out.append((name, value))
        return LocalReply(200, b"", tuple(out), details="cors_response")

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        state = stream.filter_state.get(_STATE)
        if state is None:
            return
        policy, origin = state
        headers.set("access-control-allow-origin", origin)
        if policy.allow_credentials:
            headers.set("access-control-allow-credentials", "true")
        if policy.expose_headers:
            headers.set("access-control-expose-headers", policy.expose_headers)
