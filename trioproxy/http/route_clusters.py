"""``RouteConfiguration.validate_clusters``: a route table naming a cluster the cluster manager
does not have is refused, as Envoy refuses it, instead of answering 503 ``NC`` at run time.

Envoy checks by default a table given inline (``route_config``) and, only when it says
``validate_clusters: true``, one from RDS; against the clusters known when the table is built.
A static listener's inline table is built before any cluster from CDS arrives, so (as in
Envoy) it may name only static clusters unless it says ``validate_clusters: false``. Checked:
a route's ``cluster``, its ``weighted_clusters`` names and ``request_mirror_policies``, and a
virtual host's mirror policies; ``cluster_header`` is not (it is known per request). Envoy's
wording: ``route: unknown cluster 'x'`` (``weighted cluster``, ``shadow cluster``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from trioproxy.errors import ConfigError


def check_clusters(raw: Mapping[str, Any], known: Callable[[str], bool], default: bool) -> None:
    """Raise ``ConfigError`` at the first cluster name in ``raw`` (a canonical
    ``RouteConfiguration``) that ``known`` denies, if validation is on (``default`` when the
    table does not say)."""
    if not raw.get("validate_clusters", default):
        return
    for kind, name, path in _named(raw):
        if not known(name):
            raise ConfigError(f"route: unknown {kind}'{name}'", path=path)


def _named(raw: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(kind, cluster name, path) for each cluster the table names, in Envoy's order."""
    for i, vhost in enumerate(raw.get("virtual_hosts", ())):
        vpath = f"virtual_hosts[{i}]"
        for j, route in enumerate(vhost.get("routes", ())):
            action = route.get("route")
            if action is None:
                continue
            path = f"{vpath}.routes[{j}].route"
            if action.get("cluster"):
                yield "cluster ", str(action["cluster"]), f"{path}.cluster"
            weighted = action.get("weighted_clusters") or {}
            for k, entry in enumerate(weighted.get("clusters", ())):
                if entry.get("name"):
                    name = str(entry["name"])
                    yield "weighted cluster ", name, f"{path}.weighted_clusters.clusters[{k}].name"
            for k, mirror in enumerate(action.get("request_mirror_policies", ())):
                if mirror.get("cluster"):
                    mpath = f"{path}.request_mirror_policies[{k}].cluster"
                    yield "shadow cluster ", str(mirror["cluster"]), mpath
        for k, mirror in enumerate(vhost.get("request_mirror_policies", ())):
            if mirror.get("cluster"):
                mpath = f"{vpath}.request_mirror_policies[{k}].cluster"
                yield "shadow cluster ", str(mirror["cluster"]), mpath
