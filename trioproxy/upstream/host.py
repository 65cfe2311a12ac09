"""Upstream hosts: where to connect, how much weight, and per-host counters.

Theory of operation: a ``Host`` is a stateful object (identity matters) that lives as long as its
address stays in the cluster's membership, so its stats and its connection pool survive DNS
refreshes that return the same address. Its stats are plain ints that the pool and the router
bump in place; the admin's ``/clusters`` renders them.
"""

from __future__ import annotations

from typing import Any

import attrs

from trioproxy.netutil import address_string
from trioproxy.upstream.config import Locality

HOST_STAT_NAMES = (
    "cx_active",
    "cx_connect_fail",
    "cx_total",
    "rq_active",
    "rq_error",
    "rq_success",
    "rq_timeout",
    "rq_total",
)


@attrs.define(eq=False)
class Host:
    address: tuple[str, int]
    hostname: str = ""
    weight: int = 1
    healthy: bool = True  # as EDS says (health_status)
    #: Failed active health checking (``trioproxy.upstream.health_check``).
    hc_failed: bool = False
    #: Out of load balancing by outlier detection (``trioproxy.upstream.outlier``).
    ejected: bool = False
    locality: Locality = attrs.field(factory=Locality)
    priority: int = 0
    locality_weight: int = 0  # its locality's load_balancing_weight (0: none given)
    cx_active: int = 0
    cx_connect_fail: int = 0
    cx_total: int = 0
    rq_active: int = 0
    rq_error: int = 0
    rq_success: int = 0
    rq_timeout: int = 0
    rq_total: int = 0
    outlier: Any = None  # the outlier detector's per-host state
    #: ``address`` as Envoy writes it (``[::1]:80`` for IPv6): ``%UPSTREAM_HOST%``.
    address_str: str = attrs.field(init=False, eq=False)

    @address_str.default
    def _address_str(self) -> str:
        return address_string(self.address)

    @property
    def usable(self) -> bool:
        """Healthy by EDS and health checks, and not ejected: what load balancing takes."""
        return self.healthy and not self.hc_failed and not self.ejected

    def stats(self) -> dict[str, int]:
        """A snapshot of the per-host stats, by Envoy's names."""
        return {name: getattr(self, name) for name in HOST_STAT_NAMES}

    def __repr__(self) -> str:
        health = "healthy" if self.healthy and not self.hc_failed else "unhealthy"
        if self.ejected:
            health += " ejected"
        return (
            f"<Host {self.address_str} weight={self.weight} {health}"
            f" rq_active={self.rq_active} cx_active={self.cx_active}>"
        )
