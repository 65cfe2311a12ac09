"""``envoy.config.listener.v3.Listener`` → a listener with built filter chains.

Now: TCP listeners with one filter chain (optionally TLS-terminating). Filter-chain matching on
SNI, ALPN and addresses, listener filters and UDP come with later work; configs that need them
are refused with an error naming the field rather than half-served.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.config.types import socket_address
from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.listener.tls import server_context
from trioproxy.network.filter import NetworkFilter, TerminalNetworkFilter
from trioproxy.stats import Counter, Gauge, Histogram, Scope, StatBlock

log = logging.getLogger(__name__)

DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
# Listener filters that are harmless no-ops while there is a single filter chain.
_NOOP_LISTENER_FILTERS = (
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
)


class ListenerStats(StatBlock):
    """``listener.<address>.*``."""

    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_overflow: Counter
    downstream_cx_transport_socket_connect_timeout: Counter
    downstream_pre_cx_timeout: Counter
    no_filter_chain_match: Counter
    downstream_cx_active: Gauge
    downstream_pre_cx_active: Gauge
    downstream_cx_length_ms: Histogram


class WorkerListenerStats(StatBlock):
    """``listener.<address>.worker_<n>.*`` (one worker per process for now)."""

    downstream_cx_total: Counter
    downstream_cx_active: Gauge


class TlsStats(StatBlock):
    """``listener.<address>.ssl.*``."""

    handshake: Counter
    connection_error: Counter
    no_certificate: Counter
    session_reused: Counter


@attrs.frozen
class FilterChain:
    name: str
    filters: tuple[NetworkFilter, ...]
    terminal: TerminalNetworkFilter
    tls: ssl.SSLContext | None


@attrs.frozen
class ListenerConfig:
    name: str
    address: tuple[str, int]
    stat_name: str  # listener.<stat_name>.
    filter_chain: FilterChain
    traffic_direction: str
    buffer_limit: int
    scope: Scope
    stats: ListenerStats
    worker_stats: WorkerListenerStats
    tls_stats: TlsStats | None
    max_connections: int
    canonical: Mapping[str, Any]

    @classmethod
    def from_proto(cls, d: Mapping[str, Any], ctx: BuildContext) -> ListenerConfig:
        addr = d.get("address", {})
        if "socket_address" not in addr:
            raise ConfigError("only socket_address listeners are supported", path="address")
        sa = addr["socket_address"]
        if sa.get("protocol", "TCP") != "TCP":
            raise ConfigError(
                "UDP listeners are not supported yet", path="address.socket_address.protocol"
            )
        try:
            host, port = socket_address(sa)
        except ConfigError as exc:
            raise exc.at("address.socket_address") from None
        for i, lf in enumerate(d.get("listener_filters", [])):
            if lf.get("name") not in _NOOP_LISTENER_FILTERS:
                raise ConfigError(
                    f"listener filter {lf.get('name')!r} is not supported yet",
                    path=f"listener_filters[{i}]",
                )
        chains = list(d.get("filter_chains", []))
        if "default_filter_chain" in d:
            chains.append(d["default_filter_chain"])
        if len(chains) != 1:
            raise ConfigError(
                "exactly one filter chain is supported for now (filter-chain matching comes later)"
                if chains
                else "a listener needs a filter chain",
                path="filter_chains",
            )
        if chains[0].get("filter_chain_match"):
            raise ConfigError(
                "filter_chain_match is not supported yet",
                path="filter_chains[0].filter_chain_match",
            )
        try:
            chain = _filter_chain(chains[0], ctx)
        except ConfigError as exc:
            raise exc.at("filter_chains[0]") from None
        stat_name = d.get("stat_prefix") or _address_stat_name(host, port)
        scope = ctx.store.scope(f"listener.{stat_name}.")
        return cls(
            name=d.get("name", "") or f"{host}:{port}",
            address=(host, port),
            stat_name=stat_name,
            filter_chain=chain,
            traffic_direction=d.get("traffic_direction", "UNSPECIFIED"),
            buffer_limit=int(d.get("per_connection_buffer_limit_bytes", 32 * 1024)),
            scope=scope,
            stats=ListenerStats(scope),
            worker_stats=WorkerListenerStats(scope.scope("worker_0.")),
            tls_stats=TlsStats(scope.scope("ssl.")) if chain.tls is not None else None,
            max_connections=10_000,
            canonical=d,
        )


def _address_stat_name(host: str, port: int) -> str:
    """Envoy names an unnamed listener's stats after its address: ``0.0.0.0_8000``,
    ``[__]_8000`` for ``[::]:8000``."""
    if ":" in host:
        return f"[{host.replace(':', '_')}]_{port}"
    return f"{host}_{port}"


def _filter_chain(d: Mapping[str, Any], ctx: BuildContext) -> FilterChain:
    tls: ssl.SSLContext | None = None
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
        except ConfigError as exc:
            raise exc.at("transport_socket.typed_config") from None
    filters: list[NetworkFilter] = []
    terminal: TerminalNetworkFilter | None = None
    entries = d.get("filters", [])
    for i, entry in enumerate(entries):
        try:
            factory, raw = ctx.registry.network_filters.lookup(entry)
            obj = factory.create(factory.config_type(raw), ctx)
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
    return FilterChain(name=d.get("name", ""), filters=tuple(filters), terminal=terminal, tls=tls)
