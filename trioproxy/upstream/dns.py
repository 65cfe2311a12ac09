"""DNS for STRICT_DNS and LOGICAL_DNS clusters.

Theory of operation: the pure half turns getaddrinfo results into addresses under Envoy's
``dns_lookup_family`` policy (``select_addresses``) and a resolution into the cluster's next host
list, keeping the existing ``Host`` objects (and so their stats and pools) for addresses that
stay (``next_hosts``). The I/O half (``resolve``, ``DnsResolver.refresh``) calls
``trio.socket.getaddrinfo`` once per endpoint and hands the result to the cluster, which swaps
its host set atomically.

- STRICT_DNS: every endpoint's name is resolved and every address becomes a host with the
  endpoint's weight and locality. A name that fails keeps its previous hosts (initially: none)
  and counts ``update_failure``; the cluster stays up, empty if nothing resolved.
- LOGICAL_DNS: the single endpoint's first address is the one host.
- Every resolution counts ``update_attempt`` and ``update_success`` or ``update_failure``
  (per name, as Envoy does per resolve target).

``respect_dns_ttl`` is not implemented (getaddrinfo does not report TTLs): names are re-resolved
every ``dns_refresh_rate``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from trioproxy.upstream.config import ClusterConfig, EndpointConfig
from trioproxy.upstream.host import Host

if TYPE_CHECKING:
    from trioproxy.upstream.cluster_manager import Cluster

AddrInfo = tuple[Any, Any, Any, str, tuple[Any, ...]]


def select_addresses(infos: Iterable[AddrInfo], family: str) -> list[str]:
    """Addresses from getaddrinfo results under a ``dns_lookup_family`` policy, deduplicated."""
    v4: list[str] = []
    v6: list[str] = []
    both: list[str] = []
    for fam, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if fam == socket.AF_INET and addr not in v4:
            v4.append(addr)
            both.append(addr)
        elif fam == socket.AF_INET6 and addr not in v6:
            v6.append(addr)
            both.append(addr)
    if family == "V4_ONLY":
        return v4
    if family == "V6_ONLY":
        return v6
    if family == "AUTO":
        return v6 or v4
    if family == "V4_PREFERRED":
        return v4 or v6
    return both  # ALL


_QUERY_FAMILY = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}


async def resolve(name: str, port: int, family: str) -> list[str]:
    """Resolve ``name``; raises ``OSError`` (``socket.gaierror``) when it does not resolve,
    ``UnicodeError`` when the name is not a valid IDNA name."""
    infos = await trio.socket.getaddrinfo(
        name, port, _QUERY_FAMILY.get(family, 0), socket.SOCK_STREAM
    )
    return select_addresses(infos, family)


def next_hosts(
    previous: Sequence[Host], resolved: Sequence[tuple[EndpointConfig, Sequence[str]]]
) -> list[Host]:
    """The host list for ``resolved`` endpoints, reusing ``previous`` hosts by address."""
    by_addr = {h.address: h for h in previous}
    out: list[Host] = []
    seen: set[tuple[str, int]] = set()
    for ep, addresses in resolved:
        for a in addresses:
            key = (a, ep.port)
            if key in seen:
                continue
            seen.add(key)
            h = by_addr.get(key)
            if h is None:
                h = Host(
                    address=key,
                    hostname=ep.hostname or ep.address,
                    weight=ep.weight,
                    healthy=ep.healthy,
                    locality=ep.locality,
                    priority=ep.priority,
                    locality_weight=ep.locality_weight,
                )
            else:  # the same host: what EDS or DNS may change about it
                h.weight = ep.weight
                h.priority = ep.priority
                h.locality = ep.locality
                h.locality_weight = ep.locality_weight
                h.healthy = ep.healthy
            out.append(h)
    return out


class DnsResolver:
    """Keeps one DNS cluster's hosts up to date."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        config: ClusterConfig = cluster.config
        self.endpoints = config.endpoints
        self.logical = config.type == "LOGICAL_DNS"
        self.family = config.dns_lookup_family
        # last good addresses per endpoint index, kept when a later resolution fails
        self._last: list[Sequence[str]] = [() for _ in self.endpoints]

    async def refresh(self) -> None:
        """Resolve every endpoint once and update the cluster's hosts."""
        stats = self.cluster.stats
        for i, ep in enumerate(self.endpoints):
            stats.update_attempt.value += 1
            try:
                addresses = await resolve(ep.address, ep.port, self.family)
            except (OSError, UnicodeError):  # gaierror; a name IDNA cannot encode
                stats.update_failure.value += 1
                continue
            stats.update_success.value += 1
            if self.logical:
                addresses = addresses[:1]
            self._last[i] = addresses
        resolved = list(zip(self.endpoints, self._last, strict=True))
        self.cluster.set_hosts(next_hosts(self.cluster.hosts, resolved))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Initial resolution, then ``started()``, then a refresh every ``dns_refresh_rate``."""
        await self.refresh()
        task_status.started()
        rate = self.cluster.config.dns_refresh_rate
        while True:
            await trio.sleep(rate)
            await self.refresh()
