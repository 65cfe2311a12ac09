"""``HttpConnectionManager`` config → an immutable object with its compiled filter chain.

The chain is compiled here, once per config: for each phase, the tuple of bound methods of the
filters that implement it (request phases in order, response phases reversed). The connection
manager loops over those tuples, so a phase nobody implements costs one empty loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioproxy.accesslog.loggers import build_access_log
from trioproxy.config.types import duration, percent
from trioproxy.config.unsupported import ACCEPTED_WITHOUT_EFFECT, NOT_SUPPORTED
from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.http import h1, xfcc
from trioproxy.http.filter import FactoryContext, HttpFilter, TerminalFilter, implemented_phases
from trioproxy.http.local_reply_config import LocalReplyConfig
from trioproxy.http.path import EscapedSlashes
from trioproxy.http.rds import RouteHolder
from trioproxy.http.route_clusters import check_clusters
from trioproxy.http.route_table import RouteConfiguration
from trioproxy.stats import Counter, Gauge, Histogram, Scope, StatBlock
from trioproxy.tracing.config import build_tracing
from trioproxy.tracing.http import HttpTracing

log = logging.getLogger(__name__)


class HcmStats(StatBlock):
    """``http.<stat_prefix>.*`` (Envoy's ALL_HTTP_CONN_MAN_STATS, the ones we drive)."""

    downstream_cx_total: Counter
    downstream_cx_ssl_total: Counter
    downstream_cx_http1_total: Counter
    downstream_cx_http2_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_destroy_remote: Counter
    downstream_cx_destroy_local: Counter
    downstream_cx_destroy_active_rq: Counter
    downstream_cx_destroy_remote_active_rq: Counter
    downstream_cx_destroy_local_active_rq: Counter
    downstream_cx_protocol_error: Counter
    downstream_cx_delayed_close_timeout: Counter
    downstream_cx_idle_timeout: Counter
    downstream_cx_max_duration_reached: Counter
    downstream_cx_drain_close: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_cx_upgrades_total: Counter
    downstream_cx_upgrades_active: Gauge
    downstream_cx_active: Gauge
    downstream_cx_ssl_active: Gauge
    downstream_cx_http1_active: Gauge
    downstream_cx_http2_active: Gauge
    downstream_cx_rx_bytes_buffered: Gauge
    downstream_cx_tx_bytes_buffered: Gauge
    downstream_cx_length_ms: Histogram
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_http2_total: Counter
    downstream_rq_1xx: Counter
    downstream_rq_2xx: Counter
    downstream_rq_3xx: Counter
    downstream_rq_4xx: Counter
    downstream_rq_5xx: Counter
    downstream_rq_completed: Counter
    downstream_rq_timeout: Counter
    downstream_rq_header_timeout: Counter
    downstream_rq_idle_timeout: Counter
    downstream_rq_rx_reset: Counter
    downstream_rq_tx_reset: Counter
    downstream_rq_too_large: Counter
    downstream_rq_non_relative_path: Counter
    downstream_rq_response_before_rq_complete: Counter
    downstream_rq_ws_on_non_ws_route: Counter
    downstream_rq_active: Gauge
    downstream_rq_time: Histogram
    no_route: Counter
    no_cluster: Counter
    rq_direct_response: Counter
    rq_redirect: Counter
    rq_reset_after_downstream_response_started: Counter


class ListenerHttpStats(StatBlock):
    """``listener.<address>.http.<stat_prefix>.*``."""

    downstream_rq_1xx: Counter
    downstream_rq_2xx: Counter
    downstream_rq_3xx: Counter
    downstream_rq_4xx: Counter
    downstream_rq_5xx: Counter
    downstream_rq_completed: Counter


_SERVER_HEADER = ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")
_UNSUPPORTED = (
    "scoped_routes",
    "http3_protocol_options",
)


@attrs.frozen
class FilterChain:
    """The compiled HTTP filter chain of one connection manager."""

    filters: tuple[object, ...]
    names: tuple[str, ...]
    terminal: TerminalFilter
    request_headers: tuple[Callable[..., Any], ...]
    request_data: tuple[Callable[..., Any], ...]
    request_trailers: tuple[Callable[..., Any], ...]
    response_headers: tuple[Callable[..., Any], ...]
    response_data: tuple[Callable[..., Any], ...]
    response_trailers: tuple[Callable[..., Any], ...]
    log: tuple[Callable[..., Any], ...]
    #: a response data phase may change the body's length: Content-Length cannot stay
    response_length_changes: bool = False


def compile_chain(filters: list[tuple[str, object]]) -> FilterChain:
    """Build the per-phase method tuples from the configured filter objects."""
    *middle, (tname, terminal) = filters
    if not isinstance(terminal, TerminalFilter):
        raise ConfigError(
            f"the last HTTP filter must be a terminal filter such as envoy.filters.http.router, "
            f"not {tname}",
            path=f"http_filters[{len(filters) - 1}]",
        )
    for i, (name, f) in enumerate(middle):
        if isinstance(f, TerminalFilter):
            raise ConfigError(
                f"terminal filter named {name} of type {name} must be the last filter in a "
                f"http filter chain.",
                path=f"http_filters[{i}]",
            )
    objs = [f for _, f in middle]
    phases = [(f, implemented_phases(f)) for f in objs]

    def bound(phase: str, reverse: bool = False) -> tuple[Callable[..., Any], ...]:
        seq = [getattr(f, phase) for f, ph in phases if phase in ph]
        return tuple(reversed(seq)) if reverse else tuple(seq)

    return FilterChain(
        filters=tuple(objs),
        names=tuple(n for n, _ in filters),
        terminal=terminal,
        request_headers=bound("on_request_headers"),
        request_data=bound("on_request_data"),
        request_trailers=bound("on_request_trailers"),
        response_headers=bound("on_response_headers", reverse=True),
        response_data=bound("on_response_data", reverse=True),
        response_trailers=bound("on_response_trailers", reverse=True),
        log=bound("on_log") + ((terminal.on_log,) if hasattr(terminal, "on_log") else ()),
        response_length_changes=any(
            "on_response_data" in ph and not getattr(f, "keeps_response_length", False)
            for f, ph in phases
        ),
    )


@attrs.frozen
class Http2Options:
    """``http2_protocol_options`` with DEFAULTS.md's edge-safe values."""

    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 65536
    initial_connection_window_size: int = 1048576
    #: ``connection_keepalive``: a PING every ``keepalive_interval`` seconds (0: none) plus up
    #: to ``keepalive_jitter`` percent of it; no frame from the client ``keepalive_timeout``
    #: after a PING closes the connection. (Its ``connection_idle_interval`` is for clients:
    #: Envoy's server connections do not use it either.)
    keepalive_interval: float = 0.0
    keepalive_timeout: float = 0.0
    keepalive_jitter: float = 15.0

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> Http2Options:
        known = (
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        )
        for key in d:
            # (the schema walker has refused any other field set to more than its default)
            if key not in known and key != "connection_keepalive" and key not in _HTTP2_DEFAULTS:
                raise ConfigError(f"{key} is not supported yet", path=key)
        out = cls(**{k: int(d[k]) for k in known if k in d})
        if "connection_keepalive" in d:
            ka = d["connection_keepalive"]
            try:
                out = attrs.evolve(
                    out,
                    keepalive_timeout=duration(ka.get("timeout"), 0.0) or 0.0,
                    keepalive_interval=duration(ka.get("interval"), 0.0) or 0.0,
                    keepalive_jitter=percent(ka.get("interval_jitter"), 15.0),
                )
            except ConfigError as exc:
                raise exc.at("connection_keepalive") from None
        if not 65535 <= out.initial_stream_window_size <= 2**31 - 1:
            raise ConfigError("must be in [65535, 2^31-1]", path="initial_stream_window_size")
        if not 65535 <= out.initial_connection_window_size <= 2**31 - 1:
            raise ConfigError("must be in [65535, 2^31-1]", path="initial_connection_window_size")
        return out


@attrs.frozen
class HcmConfig:
    stat_prefix: str
    codec_type: str
    routes: RouteHolder
    chain: FilterChain
    stats: HcmStats
    scope: Scope
    access_loggers: tuple[Any, ...]
    server_name: str = "envoy"
    server_header_transformation: str = "OVERWRITE"
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    via: str = ""
    idle_timeout: float | None = 3600.0
    #: ``common_http_protocol_options.max_connection_duration`` (None: unlimited)
    max_connection_duration: float | None = None
    request_headers_timeout: float | None = 10.0
    delayed_close_timeout: float | None = 1.0
    stream_idle_timeout: float | None = 300.0
    request_timeout: float | None = 300.0
    drain_timeout: float = 5.0
    max_request_headers_bytes: int = 60 * 1024
    max_headers_count: int = 100
    normalize_path: bool = True
    merge_slashes: bool = False
    escaped_slashes: EscapedSlashes = EscapedSlashes.UNESCAPE_AND_REDIRECT
    strip_port_mode: str = ""  # "" | "matching" | "any"
    strip_trailing_host_dot: bool = False
    #: ``add_user_agent``: the service cluster (None: off), and the node's name
    user_agent: str | None = None
    service_node: str = ""
    append_x_forwarded_port: bool = False
    #: ``local_reply_config``: None when absent (replies go out as made)
    local_reply: LocalReplyConfig | None = None
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    #: ``http_protocol_options.header_key_format.proper_case_words``: HTTP/1.1 response
    #: header names go out proper-cased (``Content-Type``)
    proper_case_headers: bool = False
    headers_with_underscores_action: str = "ALLOW"
    h1_codec: str | None = None
    http2: Http2Options = Http2Options()
    #: ``internal_address_config.cidr_ranges``: clients whose requests count as internal.
    internal_networks: tuple[Any, ...] = ()
    #: ``forward_client_cert_details`` and ``set_current_client_cert_details`` (see xfcc.py).
    xfcc_mode: str = "SANITIZE"
    xfcc_details: tuple[str, ...] = ()
    #: ``tracing``: sampling and the provider's tracer; ``None`` when not traced.
    tracing: HttpTracing | None = None
    #: ``upgrade_configs``: the upgrade types (lower case, ``connect`` for CONNECT) this
    #: connection manager enables; a route's own ``upgrade_configs`` override it.
    upgrades: frozenset[str] = frozenset()
    canonical: Mapping[str, Any] = attrs.field(factory=dict)
    #: A cluster's name -> its ``alt_stat_name`` ("" if none, or no such cluster): what
    #: ``%UPSTREAM_CLUSTER%`` logs for a stream the router never saw
    alt_stat_name: Callable[[str], str] = attrs.field(default=lambda name: "", eq=False)
    #: Parsers of its HTTP/1.1 connections' requests, held only while a request is read.
    parsers: h1.ServerParserPool = attrs.field(init=False, eq=False, repr=False)

    @parsers.default
    def _parser_pool(self) -> h1.ServerParserPool:
        return h1.ServerParserPool(
            self.h1_codec,
            max_header_bytes=self.max_request_headers_bytes,
            max_headers=self.max_headers_count,
        )

    @classmethod
    def from_proto(cls, d: Mapping[str, Any], ctx: BuildContext) -> HcmConfig:
        for name in _UNSUPPORTED:
            if name in d:
                raise ConfigError(f"{name} is not supported yet", path=name)
        stat_prefix = d.get("stat_prefix", "")
        codec_type = d.get("codec_type", "AUTO")
        if codec_type == "HTTP3":
            raise ConfigError(f"codec_type {codec_type} is not supported yet", path="codec_type")
        scope = ctx.store.scope(f"http.{stat_prefix}.")
        fctx = FactoryContext(
            stats=scope, cluster_manager=ctx.cluster_manager, node=ctx.node, store=ctx.store
        )
        built: list[tuple[str, object]] = []
        per_route: dict[str, Callable[[Mapping[str, Any]], Any]] = {}
        entries = d.get("http_filters", [])
        if not entries:
            raise ConfigError(
                "at least one HTTP filter (the router) is required", path="http_filters"
            )
        for i, entry in enumerate(entries):
            try:
                factory, raw = ctx.registry.http_filters.lookup(entry)
                config = factory.config_type(raw)
                filt = factory.create(config, fctx)
            except ConfigError as exc:
                raise exc.at(f"http_filters[{i}]") from None
            if not isinstance(filt, (HttpFilter, TerminalFilter)):
                raise ConfigError(
                    f"{factory.name}: factory returned {type(filt).__name__}, not an HttpFilter",
                    path=f"http_filters[{i}]",
                )
            built.append((entry.get("name", factory.name), filt))
            if factory.per_route_config_type is not None:
                per_route[entry.get("name", factory.name)] = factory.per_route_config_type
        chain = compile_chain(built)

        def convert_per_filter(name: str, raw: Mapping[str, Any]) -> Any:
            conv = per_route.get(name)
            if conv is None:
                return raw
            body = {k: v for k, v in raw.items() if k != "@type"}
            return conv(body)

        def known(name: str) -> bool:
            return ctx.cluster_manager.get(name) is not None

        def alt_stat_name(name: str) -> str:
            cluster = ctx.cluster_manager.get(name)
            return "" if cluster is None else cluster.config.alt_stat_name

        def build_routes(raw: Mapping[str, Any], inline: bool = False) -> RouteConfiguration:
            routes = RouteConfiguration.from_proto(raw, per_filter_config=convert_per_filter)
            check_clusters(raw, known, default=inline)  # (Envoy: on by default inline only)
            return routes

        routes = RouteHolder(build_routes)
        if "rds" in d:
            rds = d["rds"]
            routes.rds_name = str(rds.get("route_config_name", ""))
            if ctx.rds is None:
                raise ConfigError("RDS is not available in this context", path="rds")
            try:
                ctx.rds.subscribe_routes(routes.rds_name, rds.get("config_source", {}), routes)
            except ConfigError as exc:
                raise exc.at("rds") from None
        elif "route_config" in d:
            try:
                routes.current = build_routes(d["route_config"], inline=True)
            except ConfigError as exc:
                raise exc.at("route_config") from None
        else:
            raise ConfigError("one of route_config or rds is required", path="route_config")

        loggers = []
        for i, entry in enumerate(d.get("access_log", [])):
            try:
                loggers.append(build_access_log(entry, ctx.registry.access_loggers, fctx))
            except ConfigError as exc:
                raise exc.at(f"access_log[{i}]") from None

        local_reply = None
        if "local_reply_config" in d:
            try:
                local_reply = LocalReplyConfig.from_proto(d["local_reply_config"], ctx.base_dir)
            except ConfigError as exc:
                raise exc.at("local_reply_config") from None
        common = d.get("common_http_protocol_options", {})
        h1opts = d.get("http_protocol_options", {})
        strip = ""
        if d.get("strip_any_host_port"):
            strip = "any"
        elif d.get("strip_matching_host_port"):
            strip = "matching"
        server_hdr = d.get("server_header_transformation", "OVERWRITE")
        if server_hdr not in _SERVER_HEADER:
            raise ConfigError(f"invalid value {server_hdr!r}", path="server_header_transformation")
        max_kb = d.get("max_request_headers_kb", 60)
        tracing = None
        if "tracing" in d:
            try:
                tracing = build_tracing(d["tracing"] or {}, ctx, scope)
            except ConfigError as exc:
                raise exc.at("tracing") from None
        return cls(
            tracing=tracing,
            internal_networks=_internal_networks(d.get("internal_address_config") or {}),
            xfcc_mode=xfcc.check_mode(d.get("forward_client_cert_details", "SANITIZE")),
            xfcc_details=xfcc.parse_details(d.get("set_current_client_cert_details") or {}),
            stat_prefix=stat_prefix,
            codec_type=codec_type,
            routes=routes,
            chain=chain,
            stats=HcmStats(scope),
            scope=scope,
            access_loggers=tuple(loggers),
            server_name=d.get("server_name", "envoy"),
            server_header_transformation=server_hdr,
            generate_request_id=d.get("generate_request_id", True),
            preserve_external_request_id=d.get("preserve_external_request_id", False),
            always_set_request_id_in_response=d.get("always_set_request_id_in_response", False),
            use_remote_address=d.get("use_remote_address", False),
            xff_num_trusted_hops=int(d.get("xff_num_trusted_hops", 0)),
            skip_xff_append=d.get("skip_xff_append", False),
            via=d.get("via", ""),
            idle_timeout=_timeout(common.get("idle_timeout"), 3600.0),
            max_connection_duration=_timeout(common.get("max_connection_duration"), 0.0) or None,
            request_headers_timeout=_timeout(d.get("request_headers_timeout"), 10.0),
            delayed_close_timeout=_timeout(d.get("delayed_close_timeout"), 1.0),
            stream_idle_timeout=_timeout(d.get("stream_idle_timeout"), 300.0),
            request_timeout=_timeout(d.get("request_timeout"), 300.0),
            drain_timeout=_drain_timeout(d.get("drain_timeout")),
            max_request_headers_bytes=int(max_kb) * 1024,
            max_headers_count=int(common.get("max_headers_count", 100)),
            normalize_path=d.get("normalize_path", True),
            # A plain proto3 bool: absent and false are the same, so Envoy's default stands.
            merge_slashes=d.get("merge_slashes", False),
            escaped_slashes=EscapedSlashes(
                d.get("path_with_escaped_slashes_action", "UNESCAPE_AND_REDIRECT").replace(
                    "IMPLEMENTATION_SPECIFIC_DEFAULT", "UNESCAPE_AND_REDIRECT"
                )
            ),
            strip_port_mode=strip,
            strip_trailing_host_dot=bool(d.get("strip_trailing_host_dot")),
            user_agent=ctx.service_cluster if d.get("add_user_agent") else None,
            service_node=ctx.service_node,
            append_x_forwarded_port=bool(d.get("append_x_forwarded_port")),
            local_reply=local_reply,
            accept_http_10=h1opts.get("accept_http_10", False),
            default_host_for_http_10=h1opts.get("default_host_for_http_10", ""),
            proper_case_headers="proper_case_words" in (h1opts.get("header_key_format") or {}),
            headers_with_underscores_action=common.get("headers_with_underscores_action", "ALLOW"),
            h1_codec=ctx.h1_codec,
            http2=_http2_options(d),
            upgrades=_upgrades(d),
            canonical=d,
            alt_stat_name=alt_stat_name,
        )


def _upgrades(d: Mapping[str, Any]) -> frozenset[str]:
    out = set()
    for i, u in enumerate(d.get("upgrade_configs", [])):
        if u.get("filters"):
            raise ConfigError(
                "upgrade filter chains are not supported yet", path=f"upgrade_configs[{i}].filters"
            )
        kind = str(u.get("upgrade_type", "")).lower()
        if u.get("enabled", True):
            out.add(kind)
    return frozenset(out)


#: Http2ProtocolOptions fields the schema accepts only at Envoy's default or without effect.
_HTTP2_DEFAULTS: frozenset[str] = frozenset(
    {
        *NOT_SUPPORTED["envoy.config.core.v3.Http2ProtocolOptions"],
        *ACCEPTED_WITHOUT_EFFECT["envoy.config.core.v3.Http2ProtocolOptions"],
    }
)


def _http2_options(d: Mapping[str, Any]) -> Http2Options:
    try:
        return Http2Options.from_proto(d.get("http2_protocol_options") or {})
    except ConfigError as exc:
        raise exc.at("http2_protocol_options") from None


def _timeout(value: str | None, default: float) -> float | None:
    """A duration where 0 means disabled (Envoy's convention for these timeouts)."""
    if value is None:
        return default
    seconds = duration(value, default)
    return seconds or None


def _drain_timeout(value: str | None) -> float:
    """``drain_timeout``, 5 s unless set; 0 is kept (Envoy 1.40 then sends its two GOAWAYs
    together), not read as "disabled" like the timeouts above."""
    seconds = duration(value, 5.0)
    return 5.0 if seconds is None else seconds


def _internal_networks(d: Mapping[str, Any]) -> tuple[Any, ...]:
    """``internal_address_config``: the CIDR ranges whose clients are internal (none by
    default, as in Envoy 1.40)."""
    import ipaddress

    out = []
    for i, r in enumerate(d.get("cidr_ranges", ())):
        prefix = str(r.get("address_prefix", ""))
        length = r.get("prefix_len")
        if isinstance(length, Mapping):
            length = length.get("value")
        try:
            ip = ipaddress.ip_address(prefix)
            plen = ip.max_prefixlen if length is None else int(length)
            out.append(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
        except ValueError:
            raise ConfigError(
                f"malformed IP address or prefix: {prefix}/{length}",
                path=f"internal_address_config.cidr_ranges[{i}]",
            ) from None
    return tuple(out)
