"""Sans-IO renderers of the admin endpoints other than stats and config dumps.

Theory of operation: each function takes what the backend returns and produces the body Envoy
1.40 produces for the same state (``/clusters`` text and JSON, ``/listeners``, ``/help`` and the
HTML index), so the HTTP shell in ``server`` only routes and frames. ``ENDPOINTS`` is the single
table of paths, help texts and whether a path mutates (POST only).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from typing import Any

from trioproxy.admin.backend import ClusterView
from trioproxy.netutil import address_string

# (path, help text, mutates, [(param, help)])
ENDPOINTS: tuple[tuple[str, str, bool, tuple[tuple[str, str], ...]], ...] = (
    ("/", "Admin home page", False, ()),
    ("/certs", "print certs on machine", False, ()),
    (
        "/clusters",
        "upstream cluster status",
        False,
        (("format", "File format to use; One of (text, json)"),),
    ),
    (
        "/config_dump",
        "dump current Envoy configs",
        False,
        (
            ("resource", "The resource to dump"),
            ("mask", "The mask to apply (a Protobuf::FieldMask)"),
            ("include_eds", "Dump currently loaded configuration including EDS"),
        ),
    ),
    ("/healthcheck/fail", "cause the server to fail health checks", True, ()),
    ("/healthcheck/ok", "cause the server to pass health checks", True, ()),
    ("/help", "print out list of admin commands", False, ()),
    (
        "/listeners",
        "print listener info",
        False,
        (("format", "File format to use; One of (text, json)"),),
    ),
    ("/logging", "query/change logging levels", True, (("level", "desired logging level"),)),
    ("/memory", "print current allocation/heap usage", False, ()),
    ("/quitquitquit", "exit the server", True, ()),
    ("/ready", "print server state, return 200 if LIVE, otherwise return 503", False, ()),
    ("/reset_counters", "reset all counters to zero", True, ()),
    ("/runtime", "Print runtime values", False, ()),
    ("/runtime_modify", "Adds or modifies runtime values as passed in query parameters.", True, ()),
    ("/server_info", "print server version/status information", False, ()),
    (
        "/stats",
        "print server stats",
        False,
        (
            ("usedonly", "Only include stats that have been written by system since restart"),
            ("filter", "Regular expression (Google re2) for filtering stats"),
            ("format", "Format to use; One of (html, active-html, text, json)"),
            ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges)"),
            (
                "histogram_buckets",
                "Histogram bucket display mode; One of (cumulative, disjoint, detailed, "
                "summary, none)",
            ),
        ),
    ),
    (
        "/stats/prometheus",
        "print server stats in prometheus format",
        False,
        (
            ("usedonly", "Only include stats that have been written by system since restart"),
            ("filter", "Regular expression (Google re2) for filtering stats"),
        ),
    ),
)
MUTATING = frozenset(p for p, _, m, _ in ENDPOINTS if m)


def help_text() -> str:
    lines = ["admin commands are:"]
    for path, text, mutates, params in ENDPOINTS:
        lines.append(f"  {path}{' (POST)' if mutates else ''}: {text}")
        lines.extend(f"      {name}: {ptext}" for name, ptext in params)
    return "\n".join(lines) + "\n"


def index_html() -> str:
    rows = []
    for path, text, mutates, _ in ENDPOINTS:
        if path == "/":
            continue
        p = html.escape(path)
        if mutates:
            link = (
                f"<form action='{p}' method='post' class='home-form'>"
                f"<button class='button-as-link'>{p[1:]}</button></form>"
            )
        else:
            link = f"<a href='{p}'>{p[1:]}</a>"
        rows.append(
            f"<tr class='home-row'><td class='home-data'>{link}</td>"
            f"<td class='home-data'>{html.escape(text)}</td></tr>"
        )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n  <title>Envoy Admin</title>\n</head>\n"
        "<body>\n<table class='home-table'>\n<thead><th class='home-data'>Command</th>"
        "<th class='home-data'>Description</th></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )


_HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
_HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
_TEXT_ORDER = (
    "cx_active",
    "cx_connect_fail",
    "cx_total",
    "rq_active",
    "rq_error",
    "rq_pending_active",
    "rq_success",
    "rq_timeout",
    "rq_total",
)
_LIMITS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
_DEFAULT_LIMITS = {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
                   "max_retries": 3}  # fmt: skip


def _locality(host: Any) -> tuple[str, str, str]:
    loc = getattr(host, "locality", None)
    if loc is None:
        return "", "", ""
    if isinstance(loc, dict):
        return loc.get("region", ""), loc.get("zone", ""), loc.get("sub_zone", "")
    return (
        getattr(loc, "region", ""),
        getattr(loc, "zone", ""),
        getattr(loc, "sub_zone", ""),
    )


def _limits(cluster: ClusterView) -> dict[str, int]:
    cb = getattr(cluster.info, "circuit_breakers", None)
    return {k: int(getattr(cb, k, _DEFAULT_LIMITS[k])) for k in _LIMITS}


def _keep(cluster: ClusterView, pattern: re.Pattern[str] | None) -> bool:
    return pattern is None or pattern.search(cluster.name) is not None


def _observed(cluster: ClusterView) -> str:
    return str(getattr(cluster.info, "observability_name", "") or cluster.name)


def clusters_text(clusters: Sequence[ClusterView], pattern: re.Pattern[str] | None = None) -> str:
    out: list[str] = []
    for c in clusters:
        if not _keep(c, pattern):
            continue
        n = c.name
        out.append(f"{n}::observability_name::{_observed(c)}")
        limits = _limits(c)
        for prio, lim in (("default_priority", limits), ("high_priority", _DEFAULT_LIMITS)):
            out.extend(f"{n}::{prio}::{k}::{lim[k]}" for k in _LIMITS)
        out.append(f"{n}::added_via_api::{str(bool(c.info.added_via_api)).lower()}")
        for h in c.hosts:
            a = f"{n}::{address_string(h.address)}"
            out.extend(f"{a}::{k}::{int(getattr(h, k, 0))}" for k in _TEXT_ORDER)
            region, zone, sub_zone = _locality(h)
            out += [
                f"{a}::hostname::{h.hostname}",
                f"{a}::health_flags::{_health_flags(h)}",
                f"{a}::weight::{h.weight}",
                f"{a}::region::{region}",
                f"{a}::zone::{zone}",
                f"{a}::sub_zone::{sub_zone}",
                f"{a}::canary::false",
                f"{a}::priority::{getattr(h, 'priority', 0)}",
                f"{a}::success_rate::-1",
                f"{a}::local_origin_success_rate::-1",
            ]
    return "".join(line + "\n" for line in out)


def _health_flags(h: Any) -> str:
    """Envoy's ``health_flags``: ``healthy``, or the reasons a host is out of service."""
    flags = ""
    if getattr(h, "hc_failed", False):
        flags += "/failed_active_hc"
    if getattr(h, "ejected", False):
        flags += "/failed_outlier_check"
    if not h.healthy:
        flags += "/failed_eds_health"
    return flags or "healthy"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def clusters_json(clusters: Sequence[ClusterView], pattern: re.Pattern[str] | None = None) -> str:
    statuses = []
    for c in clusters:
        if not _keep(c, pattern):
            continue
        hosts = []
        for h in c.hosts:
            stats: list[dict[str, Any]] = []
            for k in _HOST_COUNTERS:
                v = int(getattr(h, k, 0))
                stats.append({"value": str(v), "name": k} if v else {"name": k})
            for k in _HOST_GAUGES:
                v = int(getattr(h, k, 0))
                g: dict[str, Any] = {"type": "GAUGE"}
                if v:
                    g["value"] = str(v)
                g["name"] = k
                stats.append(g)
            region, zone, sub_zone = _locality(h)
            loc = {
                k: v for k, v in (("region", region), ("zone", zone), ("sub_zone", sub_zone)) if v
            }
            entry: dict[str, Any] = {"address": _socket_address(*h.address), "stats": stats}
            health: dict[str, Any] = {}
            if getattr(h, "hc_failed", False):
                health["failed_active_health_check"] = True
            if getattr(h, "ejected", False):
                health["failed_outlier_check"] = True
            health["eds_health_status"] = "HEALTHY" if h.healthy else "UNHEALTHY"
            entry["health_status"] = health
            entry["weight"] = h.weight
            if h.hostname:
                entry["hostname"] = h.hostname
            entry["locality"] = loc
            hosts.append(entry)
        status: dict[str, Any] = {"name": c.name}
        if c.info.added_via_api:
            status["added_via_api"] = True
        if hosts:
            status["host_statuses"] = hosts
        status["circuit_breakers"] = {
            "thresholds": [_limits(c), {"priority": "HIGH", **_DEFAULT_LIMITS}]
        }
        status["observability_name"] = _observed(c)
        statuses.append(status)
    return json.dumps({"cluster_statuses": statuses}, indent=1) + "\n"


def listeners_text(listeners: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{name}::{addr}\n" for name, addr in listeners)


def listeners_json(listeners: Sequence[tuple[str, str]]) -> str:
    statuses = []
    for name, addr in listeners:
        host, _, port = addr.rpartition(":")
        statuses.append(
            {"name": name, "local_address": _socket_address(host.strip("[]"), int(port))}
        )
    return json.dumps({"listener_statuses": statuses}, indent=1) + "\n"
