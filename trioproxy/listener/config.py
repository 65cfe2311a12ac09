"""``envoy.config.listener.v3.Listener`` → a listener with built filter chains.

A TCP listener has listener filters (``original_dst`` …), filter chains chosen per connection
by ``filter_chain_match`` (``trioproxy.listener.match``) with an optional
``default_filter_chain``, and may hand connections to the listener of their original
destination (``use_original_dst``); ``bind_to_port: false`` listeners only take such
hand-offs. A UDP listener (``socket_address.protocol: UDP``) has one UDP listener filter
(``udp_proxy``) that owns its datagrams and no filter chains. What is not built yet is
refused with an error naming the field rather than half-served.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from trioproxy.config.types import socket_address
from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.listener.filter import ListenerFilter, UdpListenerFilter
from trioproxy.listener.match import Candidate, ChainMatch
from trioproxy.listener.tls import client_san_matcher, server_context
from trioproxy.network.filter import NetworkFilter, TerminalNetworkFilter
from trioproxy.registry import Kind
from trioproxy.stats import Counter, Gauge, Histogram, Scope, StatBlock
from trioproxy.upstream.config import duration

log = logging.getLogger(__name__)

DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_INSPECTORS = ("envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector")
DEFAULT_LISTENER_FILTERS_TIMEOUT = 15.0


class ListenerStats(StatBlock):
    """``listener.<address>.*``."""

    units: ClassVar[dict[str, str]] = {"connections_accepted_per_socket_event": "Unspecified"}

    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_overflow: Counter
    downstream_cx_transport_socket_connect_timeout: Counter
    downstream_pre_cx_timeout: Counter
    no_filter_chain_match: Counter
    downstream_cx_active: Gauge
    downstream_pre_cx_active: Gauge
    downstream_cx_length_ms: Histogram
    #: Recorded (as Envoy does) only when ``max_connections_to_accept_per_socket_event`` is set.
    connections_accepted_per_socket_event: Histogram


class WorkerListenerStats(StatBlock):
    """``listener.<address>.worker_<n>.*`` (a process is one worker: ``ctx.worker_index``)."""

    downstream_cx_total: Counter
    downstream_cx_active: Gauge


class TlsStats(StatBlock):
    """``listener.<address>.ssl.*``."""

    handshake: Counter
    connection_error: Counter
    no_certificate: Counter
    session_reused: Counter
    fail_verify_no_cert: Counter
    fail_verify_error: Counter
    fail_verify_san: Counter


@attrs.frozen
class FilterChain:
    name: str
    filters: tuple[NetworkFilter, ...]
    terminal: TerminalNetworkFilter
    tls: ssl.SSLContext | None
    #: mTLS: ``match_typed_subject_alt_names`` applied to the client's certificate.
    client_san_check: Callable[[Mapping[str, Any]], bool] | None = None


@attrs.frozen
class ListenerConfig:
    name: str
    address: tuple[str, int]
    stat_name: str  # listener.<stat_name>.
    filter_chains: tuple[Candidate[FilterChain], ...]
    default_chain: FilterChain | None
    traffic_direction: str
    buffer_limit: int
    scope: Scope
    stats: ListenerStats
    worker_stats: WorkerListenerStats
    tls_stats: TlsStats | None
    max_connections: int
    canonical: Mapping[str, Any]
    protocol: str = "TCP"
    listener_filters: tuple[ListenerFilter, ...] = ()
    listener_filters_timeout: float = DEFAULT_LISTENER_FILTERS_TIMEOUT
    continue_on_listener_filters_timeout: bool = False
    use_original_dst: bool = False
    bind_to_port: bool = True
    ipv4_compat: bool = False
    udp_filter: UdpListenerFilter | None = None
    #: ``max_connections_to_accept_per_socket_event``: how many connections one wake-up of the
    #: accept loop takes from the kernel; None (unset) takes all that are pending, as Envoy.
    accept_per_event: int | None = None

    @property
    def single_chain(self) -> FilterChain | None:
        """The chain every connection gets when there is nothing to match on."""
        if not self.filter_chains:
            return self.default_chain
        if len(self.filter_chains) == 1 and self.default_chain is None:
            only = self.filter_chains[0]
            if only.match == ChainMatch():
                return only.value
        return None

    @classmethod
    def from_proto(cls, d: Mapping[str, Any], ctx: BuildContext) -> ListenerConfig:
        addr = d.get("address", {})
        if "socket_address" not in addr:
            raise ConfigError("only socket_address listeners are supported", path="address")
        sa = addr["socket_address"]
        protocol = sa.get("protocol", "TCP")
        try:
            host, port = socket_address(sa)
        except ConfigError as exc:
            raise exc.at("address.socket_address") from None
        stat_name = d.get("stat_prefix") or _address_stat_name(host, port)
        scope = ctx.store.scope(f"listener.{stat_name}.")
        for key in ("filter_chain_matcher", "additional_addresses", "listener_specifier"):
            if key in d:
                raise ConfigError(f"{key} is not supported yet", path=key)
        common: dict[str, Any] = {
            "name": d.get("name", "") or f"{host}:{port}",
            "address": (host, port),
            "stat_name": stat_name,
            "traffic_direction": d.get("traffic_direction", "UNSPECIFIED"),
            "buffer_limit": int(d.get("per_connection_buffer_limit_bytes", 32 * 1024)),
            "scope": scope,
            "stats": ListenerStats(scope),
            "worker_stats": WorkerListenerStats(scope.scope(f"worker_{ctx.worker_index}.")),
            "max_connections": 10_000,
            "canonical": d,
            "bind_to_port": _bool(d.get("bind_to_port", True)),
            "ipv4_compat": bool(sa.get("ipv4_compat", False)),
            "accept_per_event": _accept_per_event(d),
        }
        if protocol == "UDP":
            return cls(
                filter_chains=(),
                default_chain=None,
                tls_stats=None,
                protocol="UDP",
                udp_filter=_udp_filter(d, ctx),
                **common,
            )
        listener_filters = _listener_filters(d, ctx)
        ctx = attrs.evolve(ctx, traffic_direction=common["traffic_direction"])
        candidates: list[Candidate[FilterChain]] = []
        seen: dict[ChainMatch, int] = {}
        tls_inspection = False
        for i, raw in enumerate(d.get("filter_chains", [])):
            try:
                match = ChainMatch.from_proto(raw.get("filter_chain_match") or {})
            except ConfigError as exc:
                raise exc.at(f"filter_chains[{i}].filter_chain_match") from None
            if match in seen:
                raise ConfigError(
                    f"error adding listener '{host}:{port}': filter chain '{raw.get('name', '')}'"
                    " has the same matching rules defined as"
                    f" '{d['filter_chains'][seen[match]].get('name', '')}'",
                    path=f"filter_chains[{i}].filter_chain_match",
                )
            seen[match] = i
            tls_inspection = tls_inspection or match.needs_tls_inspection
            try:
                candidates.append(Candidate(match, _filter_chain(raw, ctx)))
            except ConfigError as exc:
                raise exc.at(f"filter_chains[{i}]") from None
        if tls_inspection and not any(
            lf.get("name") in _INSPECTORS for lf in d.get("listener_filters", ())
        ):
            log.warning(
                "listener %s matches filter chains on server_names, application_protocols or"
                " transport_protocol but has no tls_inspector or http_inspector listener"
                " filter: those chains can never match (as in Envoy)",
                d.get("name") or f"{host}:{port}",
            )
        default = None
        if "default_filter_chain" in d:
            try:
                default = _filter_chain(d["default_filter_chain"], ctx)
            except ConfigError as exc:
                raise exc.at("default_filter_chain") from None
        if not candidates and default is None:
            raise ConfigError("a listener needs a filter chain", path="filter_chains")
        chains = [c.value for c in candidates] + ([default] if default else [])
        timeout = DEFAULT_LISTENER_FILTERS_TIMEOUT
        if "listener_filters_timeout" in d:
            timeout = duration(d["listener_filters_timeout"], "listener_filters_timeout")
        return cls(
            filter_chains=tuple(candidates),
            default_chain=default,
            tls_stats=TlsStats(scope.scope("ssl.")) if any(c.tls for c in chains) else None,
            listener_filters=listener_filters,
            listener_filters_timeout=timeout,
            continue_on_listener_filters_timeout=_bool(
                d.get("continue_on_listener_filters_timeout", False)
            ),
            use_original_dst=_bool(d.get("use_original_dst", False)),
            **common,
        )


def _accept_per_event(d: Mapping[str, Any]) -> int | None:
    """``max_connections_to_accept_per_socket_event``: a ``UInt32Value`` (its type is checked
    with the proto) that must be greater than 0."""
    key = "max_connections_to_accept_per_socket_event"
    value = d.get(key)
    if isinstance(value, Mapping):
        value = value.get("value")
    if value is None:
        return None
    if int(value) <= 0:
        raise ConfigError(f"must be greater than 0, got {value}", path=key)
    return int(value)


def _bool(value: Any) -> bool:
    """``google.protobuf.BoolValue`` fields come bare or as ``{"value": b}``."""
    if isinstance(value, Mapping):
        value = value.get("value", False)
    return bool(value)


def _listener_filters(d: Mapping[str, Any], ctx: BuildContext) -> tuple[ListenerFilter, ...]:
    out: list[ListenerFilter] = []
    for i, entry in enumerate(d.get("listener_filters", [])):
        if entry.get("filter_disabled"):
            raise ConfigError(
                "filter_disabled is not supported yet",
                path=f"listener_filters[{i}].filter_disabled",
            )
        try:
            out.append(_build(ctx.registry.listener_filters, entry, ctx))
        except ConfigError as exc:
            raise exc.at(f"listener_filters[{i}]") from None
    return tuple(out)


def _build(kind: Kind[Any], entry: Mapping[str, Any], ctx: BuildContext) -> Any:
    """The object a ``{name, typed_config}`` entry configures; errors from the factory are
    located under ``typed_config``."""
    factory, raw = kind.lookup(entry)
    try:
        return factory.create(factory.config_type(raw), ctx)
    except ConfigError as exc:
        raise exc.at("typed_config") if "typed_config" in entry else exc from None


def _udp_filter(d: Mapping[str, Any], ctx: BuildContext) -> UdpListenerFilter:
    if d.get("filter_chains") or d.get("default_filter_chain"):
        raise ConfigError(
            "a UDP listener takes a UDP listener filter, not filter chains",
            path="filter_chains",
        )
    entries = d.get("listener_filters", [])
    if len(entries) != 1:
        raise ConfigError(
            "a UDP listener needs exactly one UDP listener filter (udp_proxy)",
            path="listener_filters",
        )
    dsc = (d.get("udp_listener_config") or {}).get("downstream_socket_config") or {}
    size = dsc.get("max_rx_datagram_size", 0)
    if isinstance(size, Mapping):
        size = size.get("value", 0)
    for key in ("quic_options", "udp_packet_packet_writer_config"):
        if key in (d.get("udp_listener_config") or {}):
            raise ConfigError(f"{key} is not supported", path=f"udp_listener_config.{key}")
    ctx = attrs.evolve(ctx, listener_udp_max_rx_datagram_size=int(size))
    try:
        udp: UdpListenerFilter = _build(ctx.registry.udp_listener_filters, entries[0], ctx)
    except ConfigError as exc:
        raise exc.at("listener_filters[0]") from None
    return udp


def _address_stat_name(host: str, port: int) -> str:
    """Envoy names an unnamed listener's stats after its address: ``0.0.0.0_8000``,
    ``[__]_8000`` for ``[::]:8000``."""
    if ":" in host:
        return f"[{host.replace(':', '_')}]_{port}"
    return f"{host}_{port}"


def _filter_chain(d: Mapping[str, Any], ctx: BuildContext) -> FilterChain:
    tls: ssl.SSLContext | None = None
    san_check = None
    ts = d.get("transport_socket")
    if ts:
        typed = ts.get("typed_config", {})
        if typed.get("@type") != DOWNSTREAM_TLS:
            raise ConfigError(
                f"transport socket {ts.get('name')!r} is not supported",
                path="transport_socket",
            )
        try:
            tls = server_context(typed, ctx.base_dir, ctx.secrets)
            san_check = client_san_matcher(typed)
        except ConfigError as exc:
            raise exc.at("transport_socket.typed_config") from None
    filters: list[NetworkFilter] = []
    terminal: TerminalNetworkFilter | None = None
    entries = d.get("filters", [])
    for i, entry in enumerate(entries):
        try:
            factory, _ = ctx.registry.network_filters.lookup(entry)
            obj = _build(ctx.registry.network_filters, entry, ctx)
        except ConfigError as exc:
            raise exc.at(f"filters[{i}]") from None
        if factory.terminal:
            if i != len(entries) - 1:
                raise ConfigError(
                    f"terminal filter named {entry.get('name')} must be the last filter in a "
                    "network filter chain",
                    path=f"filters[{i}]",
                )
            terminal = obj
        else:
            filters.append(obj)
    if terminal is None:
        raise ConfigError("the filter chain has no terminal filter", path="filters")
    return FilterChain(
        name=d.get("name", ""),
        filters=tuple(filters),
        terminal=terminal,
        tls=tls,
        client_san_check=san_check,
    )
