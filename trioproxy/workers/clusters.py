"""``/clusters`` and ``/listeners`` of several workers as one view (sans-IO).

A worker describes its clusters as plain data (``cluster_records``); the main process merges
the records of every live worker into ``Cluster``-like objects that ``trioproxy.admin.views``
renders as it renders a single process's clusters (``merge_clusters``):

- clusters and hosts appear in the order the first worker that has them lists them;
- per-host counters and gauges (``cx_total``, ``rq_active`` …) are summed;
- health: each worker runs its own health checks and outlier detection, so their verdicts
  can differ for a moment. A host shows ``failed_active_hc`` or ``failed_outlier_check`` when
  any worker has it failed or ejected, and is EDS-healthy only when every worker says so —
  the flags say "out of service somewhere", never hide a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from trioproxy.upstream.cluster_manager import ClusterInfo
from trioproxy.upstream.config import CircuitBreakerThresholds, Locality
from trioproxy.upstream.host import HOST_STAT_NAMES, Host

_LIMITS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def cluster_records(clusters: Iterable[Any]) -> list[dict[str, Any]]:
    """What ``/clusters`` needs of a worker's clusters, as JSON-able data."""
    out = []
    for c in clusters:
        cb = c.info.circuit_breakers
        out.append(
            {
                "name": c.name,
                "added_via_api": bool(c.info.added_via_api),
                "observability_name": str(c.info.observability_name or c.name),
                "limits": {k: int(getattr(cb, k)) for k in _LIMITS},
                "hosts": [_host_record(h) for h in c.hosts],
            }
        )
    return out


def _host_record(h: Host) -> dict[str, Any]:
    loc = h.locality
    return {
        "address": list(h.address),
        "hostname": h.hostname,
        "weight": h.weight,
        "healthy": h.healthy,
        "hc_failed": h.hc_failed,
        "ejected": h.ejected,
        "locality": [loc.region, loc.zone, loc.sub_zone],
        "priority": h.priority,
        "stats": h.stats(),
    }


@attrs.define(eq=False)
class MergedCluster:
    """A cluster as ``trioproxy.admin.backend.ClusterView`` sees it, summed over workers."""

    name: str
    info: ClusterInfo
    hosts: list[Host] = attrs.field(factory=list)


def merge_clusters(workers: Sequence[Sequence[Mapping[str, Any]]]) -> list[MergedCluster]:
    clusters: dict[str, MergedCluster] = {}
    hosts: dict[tuple[str, tuple[str, int]], Host] = {}
    for records in workers:
        for rec in records:
            cluster = clusters.get(rec["name"])
            if cluster is None:
                info = ClusterInfo(
                    _thresholds(rec["limits"]),
                    bool(rec["added_via_api"]),
                    str(rec.get("observability_name") or rec["name"]),
                )
                cluster = clusters[rec["name"]] = MergedCluster(rec["name"], info)
            for h in rec["hosts"]:
                address = (str(h["address"][0]), int(h["address"][1]))
                key = (cluster.name, address)
                host = hosts.get(key)
                if host is None:
                    host = hosts[key] = Host(
                        address,
                        h["hostname"],
                        h["weight"],
                        locality=Locality(*h["locality"]),
                        priority=h["priority"],
                    )
                    cluster.hosts.append(host)
                host.healthy = host.healthy and h["healthy"]
                host.hc_failed = host.hc_failed or h["hc_failed"]
                host.ejected = host.ejected or h["ejected"]
                for name in HOST_STAT_NAMES:
                    setattr(host, name, getattr(host, name) + int(h["stats"].get(name, 0)))
    return list(clusters.values())


def _thresholds(limits: Mapping[str, Any]) -> CircuitBreakerThresholds:
    """The limits ``/clusters`` shows, read back from a worker's record."""
    return CircuitBreakerThresholds(
        max_connections=int(limits["max_connections"]),
        max_pending_requests=int(limits["max_pending_requests"]),
        max_requests=int(limits["max_requests"]),
        max_retries=int(limits["max_retries"]),
    )


def merge_listeners(workers: Sequence[Sequence[Sequence[str]]]) -> list[tuple[str, str]]:
    """(name, "ip:port") of the listeners any worker has, in first-seen order."""
    seen: dict[str, tuple[str, str]] = {}
    for listeners in workers:
        for name, address in listeners:
            seen.setdefault(name, (name, address))
    return list(seen.values())
