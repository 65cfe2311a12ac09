"""``filter_chain_match``: which of a listener's filter chains a connection gets.

Envoy's order, and its rule at every step: among the chains still in the running, keep those
whose criterion matches *most specifically*; only when none of them names a matching value do
the chains that leave the criterion empty go on. A connection never falls back to a less
specific chain because a later criterion failed: it gets ``default_filter_chain`` or is
closed (``no_filter_chain_match``). The steps:

1. ``destination_port``
2. ``prefix_ranges`` (destination IP; longest prefix wins)
3. ``server_names`` (exact, then the longest ``*.suffix`` wildcard)
4. ``transport_protocol``
5. ``application_protocols``
6. ``direct_source_prefix_ranges`` (longest prefix)
7. ``source_type`` (``SAME_IP_OR_LOOPBACK`` / ``EXTERNAL`` before ``ANY``)
8. ``source_prefix_ranges`` (longest prefix)
9. ``source_ports``

``ChainMatch.from_proto`` checks a ``filter_chain_match`` the way Envoy does; ``select`` is
pure, so it is tested without sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from trioproxy.errors import ConfigError
from trioproxy.upstream.config import uint

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


def _ranges(items: Sequence[Mapping[str, Any]], path: str) -> tuple[Network, ...]:
    out = []
    for i, r in enumerate(items):
        prefix = str(r.get("address_prefix", ""))
        plen = r.get("prefix_len")
        if isinstance(plen, Mapping):
            plen = plen.get("value")
        try:
            ip = ipaddress.ip_address(prefix)
            length = ip.max_prefixlen if plen is None else int(plen)
            out.append(ipaddress.ip_network(f"{ip}/{length}", strict=False))
        except ValueError:
            raise ConfigError(
                f"malformed IP address or prefix: {prefix}/{plen}", path=f"{path}[{i}]"
            ) from None
    return tuple(out)


@attrs.frozen
class ChainMatch:
    destination_port: int | None = None
    prefix_ranges: tuple[Network, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    direct_source_prefix_ranges: tuple[Network, ...] = ()
    source_type: str = "ANY"
    source_prefix_ranges: tuple[Network, ...] = ()
    source_ports: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> ChainMatch:
        port = d.get("destination_port")
        if isinstance(port, Mapping):
            port = port.get("value")
        if port is not None:
            port = uint(port, "destination_port")
            if not 1 <= port <= 65535:
                raise ConfigError("destination_port must be in 1..65535", path="destination_port")
        names = tuple(str(n).lower() for n in d.get("server_names", ()))
        for i, name in enumerate(names):
            if "*" in name and not name.startswith("*."):
                raise ConfigError(
                    f'partial wildcards are not supported in "server_names": {name}',
                    path=f"server_names[{i}]",
                )
        return cls(
            destination_port=port,
            prefix_ranges=_ranges(d.get("prefix_ranges", ()), "prefix_ranges"),
            server_names=names,
            transport_protocol=str(d.get("transport_protocol", "")),
            application_protocols=tuple(str(p) for p in d.get("application_protocols", ())),
            direct_source_prefix_ranges=_ranges(
                d.get("direct_source_prefix_ranges", ()), "direct_source_prefix_ranges"
            ),
            source_type=str(d.get("source_type", "ANY")),
            source_prefix_ranges=_ranges(d.get("source_prefix_ranges", ()), "source_prefix_ranges"),
            source_ports=tuple(
                uint(p, f"source_ports[{i}]") for i, p in enumerate(d.get("source_ports", ()))
            ),
        )

    @property
    def needs_tls_inspection(self) -> bool:
        """Criteria only a listener filter reading the ClientHello can satisfy."""
        return bool(
            self.server_names or self.application_protocols or self.transport_protocol == "tls"
        )


@attrs.frozen
class Conn:
    """What a match looks at."""

    local: tuple[str, int]
    remote: tuple[str, int]
    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()


@attrs.frozen
class Candidate(Generic[T]):
    match: ChainMatch
    value: T


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _by_prefix(
    cands: list[Candidate[T]], address: str, get: Callable[[ChainMatch], tuple[Network, ...]]
) -> list[Candidate[T]]:
    ip = _ip(address)
    best = -1
    winners: list[Candidate[T]] = []
    for c in cands:
        for net in get(c.match):
            if ip is not None and ip.version == net.version and ip in net:
                if net.prefixlen > best:
                    best, winners = net.prefixlen, [c]
                elif net.prefixlen == best and (not winners or winners[-1] is not c):
                    winners.append(c)
    if winners:
        return winners
    return [c for c in cands if not get(c.match)]


def _by_server_name(cands: list[Candidate[T]], sni: str) -> list[Candidate[T]]:
    sni = sni.lower()
    if sni:
        exact = [c for c in cands if sni in c.match.server_names]
        if exact:
            return exact
        # *.example.com matches a.example.com and a.b.example.com; the longest suffix wins
        labels = sni.split(".")
        for i in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[i:])
            hits = [c for c in cands if wildcard in c.match.server_names]
            if hits:
                return hits
    return [c for c in cands if not c.match.server_names]


def _exact(
    cands: list[Candidate[T]], hit: Callable[[ChainMatch], bool | None]
) -> list[Candidate[T]]:
    """``hit`` returns None when the chain leaves the criterion empty."""
    specific = [c for c in cands if hit(c.match)]
    if specific:
        return specific
    return [c for c in cands if hit(c.match) is None]


def _source_type(conn: Conn) -> str:
    ip = _ip(conn.remote[0])
    if ip is not None and (ip.is_loopback or ip == _ip(conn.local[0])):
        return "SAME_IP_OR_LOOPBACK"
    return "EXTERNAL"


def select(candidates: Sequence[Candidate[T]], conn: Conn) -> T | None:
    """The chain for ``conn`` (``None``: no chain matches)."""
    cands = list(candidates)
    port = conn.local[1]
    cands = _exact(
        cands,
        lambda m: None if m.destination_port is None else m.destination_port == port,
    )
    if cands:
        cands = _by_prefix(cands, conn.local[0], lambda m: m.prefix_ranges)
    if cands:
        cands = _by_server_name(cands, conn.server_name)
    if cands:
        tp = conn.transport_protocol
        cands = _exact(
            cands, lambda m: None if not m.transport_protocol else m.transport_protocol == tp
        )
    if cands:
        alpn = set(conn.application_protocols)
        cands = _exact(
            cands,
            lambda m: (
                None
                if not m.application_protocols
                else bool(alpn.intersection(m.application_protocols))
            ),
        )
    if cands:
        cands = _by_prefix(cands, conn.remote[0], lambda m: m.direct_source_prefix_ranges)
    if cands:
        st = _source_type(conn)
        cands = _exact(cands, lambda m: None if m.source_type == "ANY" else m.source_type == st)
    if cands:
        cands = _by_prefix(cands, conn.remote[0], lambda m: m.source_prefix_ranges)
    if cands:
        sport = conn.remote[1]
        cands = _exact(cands, lambda m: None if not m.source_ports else sport in m.source_ports)
    return cands[0].value if cands else None
