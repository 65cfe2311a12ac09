"""The ext_authz filter: every request is checked by the authorization service first.

On request headers (Envoy's ``ext_authz::Filter``): a route's ``ExtAuthzPerRoute`` may disable
the check; ``filter_enabled`` decides how many requests are checked (with ``deny_at_disable``
the others are refused). The answer (``check.py``) allows the request — with the header
changes it asked for, upstream and back to the client — denies it with the service's status,
headers and body (flag ``UAEX``), or fails: then ``status_on_error`` (403) unless
``failure_mode_allow`` lets it through (``x-envoy-auth-failure-mode-allowed: true`` with
``failure_mode_allow_header_add``). Stats ``ext_authz.{ok,denied,error,failure_mode_allowed,
disabled}`` under the connection manager's scope and under the routed cluster's, as Envoy
counts them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.stats import Scope
from trioproxy.upstream.cluster_manager import ClusterManager

from .check import Decision, check_grpc, check_http
from .config import ExtAuthzConfig, PerRoute

NAME = "envoy.filters.http.ext_authz"
_STATE = "envoy.filters.http.ext_authz"


class ExtAuthzFilter(HttpFilter):
    def __init__(
        self,
        config: ExtAuthzConfig,
        scope: Scope,
        cm: ClusterManager,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.cm = cm
        self.prefix = f"ext_authz.{config.stat_prefix}." if config.stat_prefix else "ext_authz."
        self.scope = scope.scope(self.prefix)
        self.rng = rng

    def _count(self, stream: HttpStream, name: str) -> None:
        self.scope.counter(name).value += 1
        route = stream.route
        cluster_name = route.cluster_name(stream.request_headers) if route is not None else None
        cluster = self.cm.get(cluster_name) if cluster_name else None
        if cluster is not None:
            cluster.scope.counter(self.prefix + name).value += 1

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        per_route = stream.per_filter_config(NAME)
        if isinstance(per_route, PerRoute) and per_route.disabled:
            return None
        c = self.config
        if not c.enabled.enabled(self.rng):
            self.scope.counter("disabled").value += 1
            if c.deny_at_disable:
                return LocalReply(c.status_on_error, b"", details="ext_authz_disabled", flag="UAEX")
            return None
        if c.kind == "http":
            decision = await check_http(c, self.cm, stream, headers)
        else:
            extensions = per_route.context_extensions if isinstance(per_route, PerRoute) else {}
            decision = await check_grpc(c, self.cm, stream, headers, extensions)
        if decision.verdict == "ok":
            self._count(stream, "ok")
            self._allow(stream, headers, decision)
            return None
        if decision.verdict == "denied":
            self._count(stream, "denied")
            return LocalReply(
                decision.status,
                decision.body,
                tuple(decision.client_headers),
                details="ext_authz_denied",
                flag="UAEX",
            )
        self._count(stream, "error")
        if c.failure_mode_allow:
            self._count(stream, "failure_mode_allowed")
            if c.failure_mode_allow_header_add:
                headers.set("x-envoy-auth-failure-mode-allowed", "true")
            return None
        return LocalReply(c.status_on_error, b"", details="ext_authz_error", flag="UAEX")

    def _allow(self, stream: HttpStream, headers: Headers, decision: Decision) -> None:
        d = decision
        changed = bool(d.upstream_set or d.upstream_append or d.upstream_remove)
        for name in decision.upstream_remove:
            if name[0] != ":" and name != "host":
                headers.remove(name)
        for name, value in decision.upstream_set:
            headers.set(name, value)
        for name, value in decision.upstream_append:
            headers.add(name, value)
        if changed and self.config.clear_route_cache:
            stream.clear_route_cache()
        if decision.success_headers:
            stream.filter_state[_STATE] = decision.success_headers

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        extra = stream.filter_state.get(_STATE)
        if extra:
            for name, value in extra:
                headers.set(name, value)
