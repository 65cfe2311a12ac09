"""Envoy's route table (``envoy.config.route.v3.RouteConfiguration``), sans-IO.

Theory of operation
-------------------
``RouteConfiguration.route(headers, random_value)`` picks the virtual host from
``:authority``, then the first route whose match accepts the request, and returns that
``Route`` (or ``None``). Everything is compiled at config time: exact domains live in a dict,
wildcard domains in lists sorted longest first, and each route's match is a tuple of small
predicates over the path (without query) and headers.

Virtual host selection follows Envoy: exact domain, then the longest ``*suffix`` wildcard, then
the longest ``prefix*`` wildcard, then ``*``; case-insensitive; a port in the authority is part
of the name unless ``ignore_port_in_host_matching`` is set.

A ``Route`` carries what the router and the connection manager need: its action (cluster
choice, direct response or redirect), the timeout, path and host rewrites, and the header
mutations of route, virtual host and route configuration in Envoy's order.

A CONNECT request has no ``:path`` (its target is the authority): as in Envoy, only routes
with ``connect_matcher`` are tried for it, and a route's ``upgrade_configs`` say which upgrades
(CONNECT among them) it enables or disables over the connection manager's, and whether it
terminates CONNECT itself (``connect_config``) or forwards it.

This module is compiled by mypyc in a compiled build, and mypyc compiles attrs fields with
factories wrongly (the class fails at import). ``Route`` and ``HeaderMutations``, which had
such fields, are plain slotted classes that keep what ``attrs.frozen`` gave them: the same
arguments and defaults, an ``attrs.exceptions.FrozenInstanceError`` on assignment or
deletion (a route is shared by every stream of its configuration), and equality as before
(by value for ``HeaderMutations``, identity for ``Route``). What they no longer have:
``copy`` and weak references fail on both, ``pickle`` on ``HeaderMutations`` (a ``Route``
holds functions and never pickled), attrs' helpers (``attrs.evolve``, ``attrs.asdict``,
``attrs.fields``) do not apply, and positional pattern matching has no ``__match_args__``.
The other classes have no factories and stay attrs. Nothing may subclass these classes:
mypyc refuses interpreted subclasses of compiled classes.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import attrs
from attrs.exceptions import FrozenInstanceError

from trioproxy import runtime
from trioproxy.config.types import DENOMINATORS, data_source, duration, fractional_percent
from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.matchers import compile_regex, header_matcher, query_parameter_matcher
from trioproxy.http.mirror import MirrorPolicy, compile_mirrors
from trioproxy.http.rate_limits import RateLimit, compile_rate_limits
from trioproxy.http.retry import RetryPolicy, compile_retry_policy
from trioproxy.http.stream_info import StreamInfo
from trioproxy.upstream.hashing import StreamHash, compile_http

log = logging.getLogger(__name__)

PerFilterConverter = Callable[[str, Mapping[str, Any]], Any]

_REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}
_NOT_FOUND_CODES = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}
_DEFAULT_TIMEOUT = 15.0


# -- header mutations ------------------------------------------------------------------------


class HeaderMutations:
    """``*_headers_to_add`` / ``*_headers_to_remove`` of one level. Frozen, with value
    equality, as the attrs class it was (see the module docstring)."""

    __slots__ = ("add", "formatters", "remove")
    add: tuple[tuple[str, str, str, bool], ...]  # (name, value, append_action, keep_empty)
    remove: tuple[str, ...]
    formatters: Mapping[str, Any]  # value → compiled formatter

    def __init__(
        self,
        add: tuple[tuple[str, str, str, bool], ...] = (),
        remove: tuple[str, ...] = (),
        formatters: Mapping[str, Any] | None = None,  # None: a new empty dict
    ) -> None:
        object.__setattr__(self, "add", add)
        object.__setattr__(self, "remove", remove)
        object.__setattr__(self, "formatters", {} if formatters is None else formatters)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError

    def __eq__(self, other: object) -> bool:
        if type(other) is not HeaderMutations:
            return NotImplemented
        return (self.add, self.remove, self.formatters) == (
            other.add,
            other.remove,
            other.formatters,
        )

    def __repr__(self) -> str:
        return (
            f"HeaderMutations(add={self.add!r}, remove={self.remove!r}, "
            f"formatters={self.formatters!r})"
        )

    @classmethod
    def from_proto(
        cls, adds: Sequence[Mapping[str, Any]], removes: Sequence[str], path: str
    ) -> HeaderMutations:
        from trioproxy.accesslog.format import TextFormatter

        out = []
        formatters: dict[str, Any] = {}
        for i, opt in enumerate(adds):
            hdr = opt.get("header", {})
            name = str(hdr.get("key", "")).lower()
            if not name:
                raise ConfigError("header key must not be empty", path=f"{path}[{i}].header.key")
            value = str(hdr.get("value", ""))
            action = opt.get("append_action", "APPEND_IF_EXISTS_OR_ADD")
            if "append" in opt:
                app = opt["append"]
                app = app.get("value", True) if isinstance(app, Mapping) else app
                action = "APPEND_IF_EXISTS_OR_ADD" if app else "OVERWRITE_IF_EXISTS_OR_ADD"
            if "%" in value and value not in formatters:
                try:
                    formatters[value] = TextFormatter(value)
                except ConfigError as exc:
                    raise exc.at(f"{path}[{i}].header.value") from None
            out.append((name, value, action, bool(opt.get("keep_empty_value", False))))
        return cls(tuple(out), tuple(str(r).lower() for r in removes), formatters)

    def apply(self, headers: Headers, info: StreamInfo | None) -> None:
        for name in self.remove:
            headers.remove(name)
        for name, value, action, keep_empty in self.add:
            fmt = self.formatters.get(value)
            if fmt is not None and info is not None:
                value = fmt.format(info)
                if value == "-":
                    value = ""
            if not value and not keep_empty:
                continue
            if action == "APPEND_IF_EXISTS_OR_ADD":
                headers.add(name, value)
            elif action == "ADD_IF_ABSENT":
                if name not in headers:
                    headers.add(name, value)
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or (
                action == "OVERWRITE_IF_EXISTS" and name in headers
            ):
                headers.set(name, value)

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def _mutations(d: Mapping[str, Any], kind: str) -> HeaderMutations:
    return HeaderMutations.from_proto(
        d.get(f"{kind}_headers_to_add", ()),
        d.get(f"{kind}_headers_to_remove", ()),
        f"{kind}_headers_to_add",
    )


def _per_filter(d: Mapping[str, Any], conv: PerFilterConverter | None) -> Mapping[str, Any]:
    raw = d.get("typed_per_filter_config", {})
    if not raw:
        return {}
    out = {}
    for name, cfg in raw.items():
        try:
            out[name] = conv(name, cfg) if conv else cfg
        except ConfigError as exc:
            raise exc.at(f"typed_per_filter_config.{name}") from None
    return out


# -- actions ---------------------------------------------------------------------------------


@attrs.frozen
class DirectResponse:
    status: int
    body: bytes


@attrs.frozen
class Redirect:
    response_code: int
    scheme: str | None
    host: str | None
    port: int | None
    path: str | None
    prefix_rewrite: str | None
    regex: tuple[re.Pattern[str], str] | None
    strip_query: bool
    matched_prefix: str | None  # for prefix_rewrite: the route's prefix
    #: a virtual host's ``require_tls``: the same authority and path, over https (as Envoy)
    ssl: bool = False

    def location(self, headers: Headers) -> str:
        if self.ssl:
            return f"https://{headers.get(':authority') or ''}{headers.get(':path') or ''}"
        orig_scheme = headers.get("x-forwarded-proto") or headers.get(":scheme") or "http"
        scheme = self.scheme or orig_scheme
        authority = headers.get(":authority") or ""
        host, port = _split_authority(authority)
        if self.host is not None:
            host = self.host
        if self.port is not None:
            port = str(self.port) if self.port else ""
        elif self.scheme and self.scheme != orig_scheme and port in ("80", "443"):
            port = ""  # the default port of the old scheme goes with it
        full = headers.get(":path") or "/"
        q = full.find("?")
        path, query = (full, "") if q < 0 else (full[:q], full[q:])
        if self.path is not None:
            new_q = self.path.find("?")
            if new_q >= 0:
                path, query = self.path[:new_q], self.path[new_q:]
            else:
                path = self.path
        elif self.prefix_rewrite is not None and self.matched_prefix is not None:
            path = self.prefix_rewrite + path[len(self.matched_prefix) :]
        elif self.regex is not None:
            rx, sub = self.regex
            path = rx.sub(sub, path)
        if self.strip_query:
            query = ""
        if port and not (
            (scheme == "http" and port == "80") or (scheme == "https" and port == "443")
        ):
            host = f"{host}:{port}"
        return f"{scheme}://{host}{path}{query}"


def _split_authority(authority: str) -> tuple[str, str]:
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[: end + 1]
        rest = authority[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else ""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, port
    return authority, ""


def _redirect(d: Mapping[str, Any], matched_prefix: str | None) -> Redirect:
    scheme = d.get("scheme_redirect") or ("https" if d.get("https_redirect") else None)
    regex = None
    if "regex_rewrite" in d:
        rr = d["regex_rewrite"]
        regex = (
            compile_regex(rr.get("pattern", {}), "regex_rewrite.pattern"),
            _re2_substitution(rr.get("substitution", "")),
        )
    return Redirect(
        response_code=_REDIRECT_CODES[d.get("response_code", "MOVED_PERMANENTLY")],
        scheme=scheme,
        host=d.get("host_redirect"),
        port=int(d["port_redirect"]) if "port_redirect" in d else None,
        path=d.get("path_redirect"),
        prefix_rewrite=d.get("prefix_rewrite"),
        regex=regex,
        strip_query=bool(d.get("strip_query", False)),
        matched_prefix=matched_prefix,
    )


def _re2_substitution(s: str) -> str:
    r"""RE2 writes groups as ``\1``; Python's ``re.sub`` takes the same, but ``\g<1>`` is safer
    before digits."""
    return re.sub(r"\\(\d)", r"\\g<\1>", s)


@attrs.frozen
class WeightedCluster:
    name: str
    weight: int
    request_mutations: HeaderMutations
    response_mutations: HeaderMutations


# -- the route -------------------------------------------------------------------------------


@attrs.frozen
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_mutations: HeaderMutations
    response_mutations: HeaderMutations
    per_filter: Mapping[str, Any]
    retry_policy: RetryPolicy | None = None
    #: ``x-envoy-attempt-count`` on requests to the upstream / on responses downstream
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False
    rate_limits: tuple[RateLimit, ...] = ()
    #: ``require_tls``: the redirect every request not forwarded as https gets (EXTERNAL_ONLY:
    #: only external requests)
    ssl_redirect: Route | None = None
    tls_external_only: bool = False


def _ssl_redirect(require_tls: str) -> Route | None:
    if require_tls not in ("ALL", "EXTERNAL_ONLY"):
        return None
    rd = Redirect(301, None, None, None, None, None, None, False, None, ssl=True)
    # not linked to its virtual host: Envoy's SSL redirect adds no configured headers
    return Route(name="", match_fn=_match_all, redirect=rd, mutates_headers=False)


def _match_all(path: str, headers: Headers) -> bool:
    return True


#: ``Route``'s attributes, in its ``__init__``'s order (for ``__slots__`` and ``__repr__``).
_ROUTE_FIELDS = (
    "name",
    "match_fn",
    "cluster",
    "cluster_header",
    "weighted",
    "total_weight",
    "weights_runtime_prefix",
    "direct_response",
    "redirect",
    "timeout",
    "idle_timeout",
    "prefix",
    "prefix_rewrite",
    "regex_rewrite",
    "host_rewrite_literal",
    "host_rewrite_header",
    "append_x_forwarded_host",
    "auto_host_rewrite",
    "cluster_not_found_response_code",
    "decorator",
    "retry_policy",
    "buffer_limit",
    "rate_limits",
    "mirrors",
    "hash_policy",
    "hash_fn",
    "grpc_timeout_max",
    "grpc_timeout_offset",
    "request_mutations",
    "response_mutations",
    "per_filter",
    "virtual_host",
    "config",
    "mutates_headers",
    "upgrades",
    "terminate_connect",
    "pathless",
)


class Route:
    """One route: its match, its action and what the router needs to carry it out. Frozen,
    as the attrs class it was (see the module docstring); ``RouteConfiguration.from_proto``
    links it to its virtual host and configuration once they are built."""

    __slots__ = _ROUTE_FIELDS
    name: str
    match_fn: Callable[[str, Headers], bool]
    # action
    cluster: str | None
    cluster_header: str | None
    weighted: tuple[WeightedCluster, ...]
    total_weight: int
    #: ``weighted_clusters.runtime_key_prefix``: weights read from the runtime per request
    #: (``<prefix>.<cluster>``), the configured ones as defaults.
    weights_runtime_prefix: str
    direct_response: DirectResponse | None
    redirect: Redirect | None
    timeout: float | None
    idle_timeout: float | None
    prefix: str | None  # the matched prefix, for prefix_rewrite
    prefix_rewrite: str | None
    regex_rewrite: tuple[re.Pattern[str], str] | None
    host_rewrite_literal: str | None
    host_rewrite_header: str | None
    append_x_forwarded_host: bool
    auto_host_rewrite: bool
    cluster_not_found_response_code: int
    decorator: str | None
    #: The route's ``retry_policy``, else its virtual host's.
    retry_policy: RetryPolicy | None
    #: ``per_request_buffer_limit_bytes``: how much request body is kept for retries.
    buffer_limit: int
    #: The route action's ``rate_limits`` (``include_vh_rate_limits`` aside).
    rate_limits: tuple[RateLimit, ...]
    #: ``request_mirror_policies`` (``trioproxy.http.mirror``).
    mirrors: tuple[MirrorPolicy, ...]
    hash_policy: tuple[Mapping[str, Any], ...]
    #: The compiled ``hash_policy`` (RING_HASH and MAGLEV clusters read it).
    hash_fn: StreamHash | None
    #: ``max_stream_duration.grpc_timeout_header_max`` (0: no cap; None: ``grpc-timeout``
    #: is not honoured) and ``grpc_timeout_header_offset``.
    grpc_timeout_max: float | None
    grpc_timeout_offset: float
    request_mutations: HeaderMutations
    response_mutations: HeaderMutations
    per_filter: Mapping[str, Any]
    # set after the virtual host and route configuration are built
    virtual_host: Any
    config: Any
    #: Whether any level (weighted cluster, route, virtual host, route configuration) adds
    #: or removes headers; most routes do not, and then the router skips both calls below.
    mutates_headers: bool
    #: The route action's ``upgrade_configs``: upgrade type (lower case) → enabled. A type
    #: named here overrides the connection manager's ``upgrade_configs`` (``upgrade_enabled``).
    upgrades: Mapping[str, bool]
    #: ``connect_config`` on the CONNECT upgrade: the router answers CONNECT itself and opens
    #: a TCP connection to the host; without it, CONNECT is forwarded as a request.
    terminate_connect: bool
    #: The match is ``connect_matcher``: the one kind of route a request without ``:path``
    #: (CONNECT) can match.
    pathless: bool

    def __init__(
        self,
        name: str,
        match_fn: Callable[[str, Headers], bool],
        cluster: str | None = None,
        cluster_header: str | None = None,
        weighted: tuple[WeightedCluster, ...] = (),
        total_weight: int = 0,
        weights_runtime_prefix: str = "",
        direct_response: DirectResponse | None = None,
        redirect: Redirect | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
        idle_timeout: float | None = None,
        prefix: str | None = None,
        prefix_rewrite: str | None = None,
        regex_rewrite: tuple[re.Pattern[str], str] | None = None,
        host_rewrite_literal: str | None = None,
        host_rewrite_header: str | None = None,
        append_x_forwarded_host: bool = False,
        auto_host_rewrite: bool = False,
        cluster_not_found_response_code: int = 503,
        decorator: str | None = None,
        retry_policy: RetryPolicy | None = None,
        buffer_limit: int = 1 << 20,
        rate_limits: tuple[RateLimit, ...] = (),
        mirrors: tuple[MirrorPolicy, ...] = (),
        hash_policy: tuple[Mapping[str, Any], ...] = (),
        hash_fn: StreamHash | None = None,
        grpc_timeout_max: float | None = None,
        grpc_timeout_offset: float = 0.0,
        request_mutations: HeaderMutations | None = None,  # None: no mutations
        response_mutations: HeaderMutations | None = None,
        per_filter: Mapping[str, Any] | None = None,  # None: a new empty dict
        virtual_host: Any = None,
        config: Any = None,
        mutates_headers: bool = True,
        upgrades: Mapping[str, bool] | None = None,  # None: a new empty dict
        terminate_connect: bool = False,
        pathless: bool = False,
    ) -> None:
        # object.__setattr__, as __setattr__ refuses (see _link)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "match_fn", match_fn)
        object.__setattr__(self, "cluster", cluster)
        object.__setattr__(self, "cluster_header", cluster_header)
        object.__setattr__(self, "weighted", weighted)
        object.__setattr__(self, "total_weight", total_weight)
        object.__setattr__(self, "weights_runtime_prefix", weights_runtime_prefix)
        object.__setattr__(self, "direct_response", direct_response)
        object.__setattr__(self, "redirect", redirect)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "idle_timeout", idle_timeout)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "prefix_rewrite", prefix_rewrite)
        object.__setattr__(self, "regex_rewrite", regex_rewrite)
        object.__setattr__(self, "host_rewrite_literal", host_rewrite_literal)
        object.__setattr__(self, "host_rewrite_header", host_rewrite_header)
        object.__setattr__(self, "append_x_forwarded_host", append_x_forwarded_host)
        object.__setattr__(self, "auto_host_rewrite", auto_host_rewrite)
        object.__setattr__(self, "cluster_not_found_response_code", cluster_not_found_response_code)
        object.__setattr__(self, "decorator", decorator)
        object.__setattr__(self, "retry_policy", retry_policy)
        object.__setattr__(self, "buffer_limit", buffer_limit)
        object.__setattr__(self, "rate_limits", rate_limits)
        object.__setattr__(self, "mirrors", mirrors)
        object.__setattr__(self, "hash_policy", hash_policy)
        object.__setattr__(self, "hash_fn", hash_fn)
        object.__setattr__(self, "grpc_timeout_max", grpc_timeout_max)
        object.__setattr__(self, "grpc_timeout_offset", grpc_timeout_offset)
        object.__setattr__(
            self,
            "request_mutations",
            HeaderMutations() if request_mutations is None else request_mutations,
        )
        object.__setattr__(
            self,
            "response_mutations",
            HeaderMutations() if response_mutations is None else response_mutations,
        )
        object.__setattr__(self, "per_filter", {} if per_filter is None else per_filter)
        object.__setattr__(self, "virtual_host", virtual_host)
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "mutates_headers", mutates_headers)
        object.__setattr__(self, "upgrades", {} if upgrades is None else upgrades)
        object.__setattr__(self, "terminate_connect", terminate_connect)
        object.__setattr__(self, "pathless", pathless)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError

    def __repr__(self) -> str:
        parts = []
        for name in _ROUTE_FIELDS:
            value = getattr(self, name)
            if name in ("virtual_host", "config") and value is not None:
                # by name: the virtual host's repr holds its routes, this one among them
                parts.append(f"{name}=<{type(value).__name__} {value.name!r}>")
            else:
                parts.append(f"{name}={value!r}")
        return f"Route({', '.join(parts)})"

    def _link(self, virtual_host: VirtualHost, config: RouteConfiguration) -> None:
        """Once its virtual host and configuration are built (``RouteConfiguration``)."""
        # object.__setattr__ in a method of this class: compiled by mypyc it is a direct
        # store; elsewhere, mypyc leaves it to CPython, which refuses it on this class
        object.__setattr__(self, "virtual_host", virtual_host)
        if self.retry_policy is None and virtual_host.retry_policy is not None:
            object.__setattr__(self, "retry_policy", virtual_host.retry_policy)
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "mutates_headers", self._any_mutations())

    def _any_mutations(self) -> bool:
        levels: list[HeaderMutations] = [self.request_mutations, self.response_mutations]
        for wc in self.weighted:
            levels += (wc.request_mutations, wc.response_mutations)
        for holder in (self.virtual_host, self.config):
            if holder is not None:
                levels += (holder.request_mutations, holder.response_mutations)
        return not all(m.empty for m in levels)

    # -- what the router calls ----------------------------------------------------------
    def upgrade_enabled(self, kind: str, hcm_upgrades: frozenset[str]) -> bool:
        """Whether an upgrade of ``kind`` (``websocket``, ``connect`` …, lower case) may go
        on this route: the route's own ``upgrade_configs`` say so if they name the type, else
        the connection manager's (Envoy's ``createUpgradeFilterChain``)."""
        enabled = self.upgrades.get(kind)
        return kind in hcm_upgrades if enabled is None else enabled

    def cluster_name(self, headers: Headers, random_value: int = 0) -> str | None:
        if self.cluster is not None:
            return self.cluster
        if self.cluster_header is not None:
            return headers.get(self.cluster_header) or None
        if self.weighted:
            if self.weights_runtime_prefix:
                return self._runtime_weighted(random_value)
            point = random_value % self.total_weight
            for wc in self.weighted:
                if point < wc.weight:
                    return wc.name
                point -= wc.weight
            return self.weighted[-1].name
        return None

    def _runtime_weighted(self, random_value: int) -> str | None:
        rt = runtime.current()
        prefix = self.weights_runtime_prefix
        weights = [rt.get_int(f"{prefix}.{wc.name}", wc.weight) for wc in self.weighted]
        total = sum(w for w in weights if w > 0)
        if total <= 0:
            return None
        point = random_value % total
        for wc, w in zip(self.weighted, weights, strict=True):
            if w <= 0:
                continue
            if point < w:
                return wc.name
            point -= w
        return None

    def rewrite(self, headers: Headers, envoy_headers: bool = True) -> None:
        """Apply path and host rewrites; with ``envoy_headers`` (the router's
        ``suppress_envoy_headers`` off), keep the original path and host in
        x-envoy-original-path and x-envoy-original-host, as Envoy does."""
        if self.prefix_rewrite is not None or self.regex_rewrite is not None:
            full = headers.get(":path") or "/"
            q = full.find("?")
            path, query = (full, "") if q < 0 else (full[:q], full[q:])
            if self.prefix_rewrite is not None:
                cut = len(self.prefix) if self.prefix is not None else len(path)
                new = self.prefix_rewrite + path[cut:]
            else:
                assert self.regex_rewrite is not None
                rx, sub = self.regex_rewrite
                new = rx.sub(sub, path)
            if new != path:
                if envoy_headers:
                    headers.set("x-envoy-original-path", full)
                headers.set(":path", new + query)
        if self.host_rewrite_literal is not None:
            self.rewrite_host(headers, self.host_rewrite_literal, envoy_headers)
        elif self.host_rewrite_header is not None:
            value = headers.get(self.host_rewrite_header)
            if value:
                self.rewrite_host(headers, value, envoy_headers)

    def rewrite_host(self, headers: Headers, host: str, envoy_headers: bool) -> None:
        """Forward with ``host`` as the authority (a rewrite, or ``auto_host_rewrite`` once the
        router has picked an upstream host), noting the old one as Envoy does."""
        old = headers.get(":authority")
        if envoy_headers and old:
            headers.set("x-envoy-original-host", old)
        if self.append_x_forwarded_host:
            # the old host joins x-forwarded-host unless it is its last entry already
            xfh = headers.get("x-forwarded-host")
            if not xfh:
                if old:
                    headers.set("x-forwarded-host", old)
            elif old and xfh.rsplit(",", 1)[-1] != old:  # (unstripped, as Envoy compares)
                headers.set("x-forwarded-host", f"{xfh},{old}")
        headers.set(":authority", host)

    def _weighted_for(self, info: StreamInfo | None) -> WeightedCluster | None:
        if not self.weighted or info is None:
            return None
        for wc in self.weighted:
            if wc.name == info.upstream_cluster:
                return wc
        return None

    def apply_request_headers(self, headers: Headers, info: StreamInfo | None) -> None:
        """Route-level first, then virtual host, then route configuration (so the less
        specific level wins), unless most_specific_header_mutations_wins reverses it."""
        wc = self._weighted_for(info)
        levels = [
            wc.request_mutations if wc else None,
            self.request_mutations,
            self.virtual_host.request_mutations if self.virtual_host else None,
            self.config.request_mutations if self.config else None,
        ]
        if self.config is not None and self.config.most_specific_wins:
            levels.reverse()
        for m in levels:
            if m is not None and not m.empty:
                m.apply(headers, info)

    def apply_response_headers(self, headers: Headers, info: StreamInfo | None) -> None:
        wc = self._weighted_for(info)
        levels = [
            wc.response_mutations if wc else None,
            self.response_mutations,
            self.virtual_host.response_mutations if self.virtual_host else None,
            self.config.response_mutations if self.config else None,
        ]
        if self.config is not None and self.config.most_specific_wins:
            levels.reverse()
        for m in levels:
            if m is not None and not m.empty:
                m.apply(headers, info)

    def per_filter_config(self, name: str) -> Any:
        if name in self.per_filter:
            return self.per_filter[name]
        if self.virtual_host is not None and name in self.virtual_host.per_filter:
            return self.virtual_host.per_filter[name]
        if self.config is not None:
            return self.config.per_filter.get(name)
        return None


def _compile_match(m: Mapping[str, Any]) -> tuple[Callable[[str, Headers], bool], str | None]:
    """The match predicate over (path without query, headers) and the literal prefix."""
    case = m.get("case_sensitive", True)
    if isinstance(case, Mapping):
        case = case.get("value", True)
    preds: list[Callable[[str, Headers], bool]] = []
    prefix: str | None = None
    if "prefix" in m:
        prefix = str(m["prefix"])
        p = prefix if case else prefix.lower()
        preds.append(
            (lambda path, h: path.startswith(p))
            if case
            else (lambda path, h: path.lower().startswith(p))
        )
    elif "path" in m:
        exact = str(m["path"])
        e = exact if case else exact.lower()
        prefix = exact
        preds.append((lambda path, h: path == e) if case else (lambda path, h: path.lower() == e))
    elif "safe_regex" in m:
        rx = compile_regex(m["safe_regex"], "safe_regex")
        preds.append(lambda path, h: rx.fullmatch(path) is not None)
    elif "path_separated_prefix" in m:
        psp = str(m["path_separated_prefix"])
        if psp.endswith("/") or "?" in psp or "#" in psp:
            raise ConfigError(
                "path_separated_prefix must not end with '/' or contain ? or #",
                path="path_separated_prefix",
            )
        prefix = psp
        q = psp if case else psp.lower()

        def sep(path: str, h: Headers) -> bool:
            pp = path if case else path.lower()
            return pp == q or pp.startswith(q + "/")

        preds.append(sep)
    elif "connect_matcher" in m:
        # (only tried for requests without :path, see ``RouteConfiguration.route``)
        preds.append(lambda path, h: h.get(":method") == "CONNECT")
    elif "path_match_policy" in m:
        raise ConfigError("path_match_policy is not supported yet", path="path_match_policy")
    else:
        raise ConfigError(
            "a route match needs prefix, path, safe_regex, path_separated_prefix or connect_matcher"
        )
    for i, hm in enumerate(m.get("headers", ())):
        try:
            hp = header_matcher(hm)
        except ConfigError as exc:
            raise exc.at(f"headers[{i}]") from None
        preds.append(lambda path, h, hp=hp: hp(h))  # type: ignore[misc]
    qps = [query_parameter_matcher(q) for q in m.get("query_parameters", ())]
    if qps:

        def query_ok(path: str, h: Headers) -> bool:
            full = h.get(":path") or ""
            q = full.find("?")
            params = dict(parse_qsl(full[q + 1 :], keep_blank_values=True)) if q >= 0 else {}
            return all(qp(params) for qp in qps)

        preds.append(query_ok)
    if "grpc" in m:
        preds.append(lambda path, h: (h.get("content-type") or "").startswith("application/grpc"))
    if "runtime_fraction" in m:
        rf = m["runtime_fraction"]
        default = rf.get("default_value") or {}
        fractional_percent(default)  # validates the denominator
        denominator = DENOMINATORS[default.get("denominator", "HUNDRED")]
        numerator = int(default.get("numerator", 0))
        key = str(rf.get("runtime_key", ""))

        def runtime_ok(path: str, h: Headers) -> bool:
            # the runtime's value for the key if it has one, else the default; drawn on a
            # random value per request
            draw = random.getrandbits(32)
            return runtime.current().feature_enabled(key, numerator, denominator, draw)

        preds.append(runtime_ok)
    if len(preds) == 1:
        return preds[0], prefix
    ps = tuple(preds)
    return (lambda path, h: all(p(path, h) for p in ps)), prefix


def _route(d: Mapping[str, Any], conv: PerFilterConverter | None, base_dir: str) -> Route:
    match_fn, prefix = _compile_match(d.get("match", {}))
    common: dict[str, Any] = {
        "name": d.get("name", ""),
        "match_fn": match_fn,
        "prefix": prefix if "prefix" in d.get("match", {}) else None,
        "decorator": d.get("decorator", {}).get("operation"),
        "request_mutations": _mutations(d, "request"),
        "response_mutations": _mutations(d, "response"),
        "per_filter": _per_filter(d, conv),
        "pathless": "connect_matcher" in d.get("match", {}),
    }
    if "direct_response" in d:
        dr = d["direct_response"]
        body = data_source(dr.get("body"), base_dir) if dr.get("body") else b""
        return Route(direct_response=DirectResponse(int(dr.get("status", 200)), body), **common)
    if "redirect" in d:
        try:
            rd = _redirect(d["redirect"], common["prefix"])
        except ConfigError as exc:
            raise exc.at("redirect") from None
        return Route(redirect=rd, **common)
    if "route" not in d:
        raise ConfigError("a route needs route, redirect or direct_response")
    a = d["route"]
    if a.get("priority") == "HIGH":
        log.warning(
            "route %r: priority HIGH is served with the DEFAULT circuit breakers and pools",
            d.get("name", ""),
        )
    if a.get("internal_redirect_policy"):
        raise ConfigError(
            "internal_redirect_policy is not supported yet", path="route.internal_redirect_policy"
        )
    kw: dict[str, Any] = {}
    kw["upgrades"], kw["terminate_connect"] = _route_upgrades(a.get("upgrade_configs", ()))
    if "cluster" in a:
        kw["cluster"] = a["cluster"]
    elif "cluster_header" in a:
        kw["cluster_header"] = str(a["cluster_header"]).lower()
    elif "weighted_clusters" in a:
        wcs = []
        for c in a["weighted_clusters"].get("clusters", []):
            w = c.get("weight", 0)
            w = int(w.get("value", 0) if isinstance(w, Mapping) else w)
            wcs.append(
                WeightedCluster(c["name"], w, _mutations(c, "request"), _mutations(c, "response"))
            )
        total = sum(wc.weight for wc in wcs)
        if total <= 0:
            raise ConfigError(
                "weighted clusters need a positive total weight", path="route.weighted_clusters"
            )
        kw["weighted"] = tuple(wcs)
        kw["total_weight"] = total
        kw["weights_runtime_prefix"] = str(a["weighted_clusters"].get("runtime_key_prefix", ""))
    else:
        raise ConfigError(
            "a route action needs cluster, cluster_header or weighted_clusters", path="route"
        )
    kw["timeout"] = duration(a.get("timeout"), _DEFAULT_TIMEOUT) or None
    kw["idle_timeout"] = duration(a.get("idle_timeout"), None)
    kw["prefix_rewrite"] = a.get("prefix_rewrite")
    if "regex_rewrite" in a:
        rr = a["regex_rewrite"]
        kw["regex_rewrite"] = (
            compile_regex(rr.get("pattern", {}), "route.regex_rewrite.pattern"),
            _re2_substitution(rr.get("substitution", "")),
        )
    kw["host_rewrite_literal"] = a.get("host_rewrite_literal")
    kw["host_rewrite_header"] = (a.get("host_rewrite_header") or "").lower() or None
    kw["append_x_forwarded_host"] = bool(a.get("append_x_forwarded_host"))
    kw["auto_host_rewrite"] = bool(a.get("auto_host_rewrite"))
    kw["cluster_not_found_response_code"] = _NOT_FOUND_CODES.get(
        a.get("cluster_not_found_response_code", "SERVICE_UNAVAILABLE"), 503
    )
    try:
        kw["retry_policy"] = compile_retry_policy(a.get("retry_policy"))
    except ConfigError as exc:
        raise exc.at("route") from None
    if d.get("per_request_buffer_limit_bytes") is not None:
        kw["buffer_limit"] = int(d["per_request_buffer_limit_bytes"])
    msd = a.get("max_stream_duration") or {}
    if msd.get("max_stream_duration") is not None:
        raise ConfigError(
            "max_stream_duration.max_stream_duration is not supported yet",
            path="route.max_stream_duration.max_stream_duration",
        )
    if "grpc_timeout_header_max" in msd:
        kw["grpc_timeout_max"] = duration(msd["grpc_timeout_header_max"], 0.0) or 0.0
        kw["grpc_timeout_offset"] = duration(msd.get("grpc_timeout_header_offset"), 0.0) or 0.0
    try:
        kw["rate_limits"] = compile_rate_limits(a.get("rate_limits", ()))
        kw["mirrors"] = compile_mirrors(a.get("request_mirror_policies"))
    except ConfigError as exc:
        raise exc.at("route") from None
    kw["hash_policy"] = tuple(a.get("hash_policy", ()))
    try:
        kw["hash_fn"] = compile_http(kw["hash_policy"])
    except ConfigError as exc:
        raise exc.at("route") from None
    return Route(**kw, **common)


def _route_upgrades(configs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, bool], bool]:
    """``RouteAction.upgrade_configs``: (upgrade type → enabled, whether CONNECT is
    terminated here), with Envoy's errors."""
    upgrades: dict[str, bool] = {}
    terminate = False
    for i, u in enumerate(configs):
        path = f"route.upgrade_configs[{i}]"
        kind = str(u.get("upgrade_type", ""))
        enabled = u.get("enabled", True)
        if isinstance(enabled, Mapping):  # a BoolValue
            enabled = enabled.get("value", False)
        if kind.lower() in upgrades:
            raise ConfigError(f"Duplicate upgrade {kind}", path=path)
        upgrades[kind.lower()] = bool(enabled)
        if "connect_config" not in u:
            continue
        if kind.lower() == "connect-udp":
            raise ConfigError("CONNECT-UDP is not supported yet", path=f"{path}.connect_config")
        if kind.lower() != "connect":
            raise ConfigError(
                f"Non-CONNECT upgrade type {kind} has ConnectConfig", path=f"{path}.connect_config"
            )
        cc = u.get("connect_config") or {}
        for unsupported in ("proxy_protocol_config", "allow_post"):
            if cc.get(unsupported):
                raise ConfigError(
                    f"{unsupported} is not supported yet",
                    path=f"{path}.connect_config.{unsupported}",
                )
        terminate = True
    return upgrades, terminate


@attrs.frozen(eq=False)
class RouteConfiguration:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    exact: Mapping[str, VirtualHost]
    suffixes: tuple[tuple[str, VirtualHost], ...]  # longest first
    prefixes: tuple[tuple[str, VirtualHost], ...]  # longest first
    default: VirtualHost | None
    request_mutations: HeaderMutations
    response_mutations: HeaderMutations
    per_filter: Mapping[str, Any]
    most_specific_wins: bool
    ignore_port: bool
    #: removed from every request that is not internal, before the filters see it
    internal_only_headers: tuple[str, ...] = ()

    @classmethod
    def from_proto(
        cls,
        d: Mapping[str, Any],
        *,
        per_filter_config: PerFilterConverter | None = None,
        base_dir: str = ".",
    ) -> RouteConfiguration:
        vhosts: list[VirtualHost] = []
        exact: dict[str, VirtualHost] = {}
        suffixes: list[tuple[str, VirtualHost]] = []
        prefixes: list[tuple[str, VirtualHost]] = []
        default: VirtualHost | None = None
        seen: set[str] = set()
        for i, vd in enumerate(d.get("virtual_hosts", [])):
            path = f"virtual_hosts[{i}]"
            routes = []
            for j, rd in enumerate(vd.get("routes", [])):
                try:
                    routes.append(_route(rd, per_filter_config, base_dir))
                except ConfigError as exc:
                    raise exc.at(f"{path}.routes[{j}]") from None
            try:
                vh = VirtualHost(
                    name=vd.get("name", ""),
                    domains=tuple(vd.get("domains", ())),
                    routes=tuple(routes),
                    request_mutations=_mutations(vd, "request"),
                    response_mutations=_mutations(vd, "response"),
                    per_filter=_per_filter(vd, per_filter_config),
                    retry_policy=compile_retry_policy(vd.get("retry_policy")),
                    include_request_attempt_count=bool(vd.get("include_request_attempt_count")),
                    include_attempt_count_in_response=bool(
                        vd.get("include_attempt_count_in_response")
                    ),
                    rate_limits=compile_rate_limits(vd.get("rate_limits", ())),
                    ssl_redirect=_ssl_redirect(vd.get("require_tls", "NONE")),
                    tls_external_only=vd.get("require_tls") == "EXTERNAL_ONLY",
                )
            except ConfigError as exc:
                raise exc.at(path) from None
            for k, domain in enumerate(vh.domains):
                dom = domain.lower()
                if dom in seen:
                    raise ConfigError(
                        f"Only unique values for domains are permitted. Duplicate entry of "
                        f"domain {dom} in route {d.get('name', '')}",
                        path=f"{path}.domains[{k}]",
                    )
                seen.add(dom)
                if dom == "*":
                    default = vh
                elif dom.startswith("*"):
                    suffixes.append((dom[1:], vh))
                elif dom.endswith("*"):
                    prefixes.append((dom[:-1], vh))
                else:
                    exact[dom] = vh
            vhosts.append(vh)
        suffixes.sort(key=lambda t: -len(t[0]))
        prefixes.sort(key=lambda t: -len(t[0]))
        config = cls(
            name=d.get("name", ""),
            virtual_hosts=tuple(vhosts),
            exact=exact,
            suffixes=tuple(suffixes),
            prefixes=tuple(prefixes),
            default=default,
            request_mutations=_mutations(d, "request"),
            response_mutations=_mutations(d, "response"),
            per_filter=_per_filter(d, per_filter_config),
            most_specific_wins=bool(d.get("most_specific_header_mutations_wins", False)),
            ignore_port=bool(d.get("ignore_port_in_host_matching", False)),
            internal_only_headers=tuple(str(h).lower() for h in d.get("internal_only_headers", ())),
        )
        for vh in vhosts:
            for r in vh.routes:
                r._link(vh, config)
        return config

    def find_virtual_host(self, headers: Headers) -> VirtualHost | None:
        host = (headers.get(":authority") or "").lower()
        if self.ignore_port:
            host = _split_authority(host)[0]
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, vh in self.suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return vh
        for prefix, vh in self.prefixes:
            if host.startswith(prefix) and len(host) > len(prefix):
                return vh
        return self.default

    def route(self, headers: Headers, random_value: int = 0) -> Route | None:
        vh = self.find_virtual_host(headers)
        if vh is None:
            return None
        full = headers.get(":path")
        if (
            vh.ssl_redirect is not None
            and headers.get("x-forwarded-proto") != "https"
            and not (vh.tls_external_only and headers.get("x-envoy-internal") == "true")
        ):
            return vh.ssl_redirect
        if full is None:  # CONNECT: only connect_matcher routes (as Envoy)
            for r in vh.routes:
                if r.pathless and r.match_fn("", headers):
                    return r
            return None
        full = full or "/"
        q = full.find("?")
        path = full if q < 0 else full[:q]
        for r in vh.routes:
            if r.match_fn(path, headers):
                return r
        return None
