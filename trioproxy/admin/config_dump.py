"""``/config_dump`` as Envoy 1.40 builds it, from plain canonical dicts.

Theory of operation: ``build_config_dump`` turns a ``ConfigDumpSources`` into the list of
``envoy.admin.v3.*ConfigDump`` messages in Envoy's order (bootstrap, clusters, [endpoints with
``include_eds``], listeners, scoped routes, routes, secrets), each with its ``@type``, resources
packed as ``Any`` (``@type`` first), timestamps as RFC 3339 with milliseconds and ``Z``, and empty
repeated fields omitted as proto3 JSON does. ``resource=`` flattens one repeated field into
``configs`` with each element's own ``@type``; ``mask=`` keeps only the listed field paths (per
dump, or per element with ``resource``). Pure functions over dicts; the server serialises.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trioproxy.admin.backend import Canonical, ConfigDumpSources

_ADMIN = "type.googleapis.com/envoy.admin.v3."
_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_BOOTSTRAP = "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap"

# resource name → the @type of each element (the nested message of its dump).
RESOURCE_TYPES: dict[str, str] = {
    "static_clusters": _ADMIN + "ClustersConfigDump.StaticCluster",
    "dynamic_active_clusters": _ADMIN + "ClustersConfigDump.DynamicCluster",
    "dynamic_warming_clusters": _ADMIN + "ClustersConfigDump.DynamicCluster",
    "static_endpoint_configs": _ADMIN + "EndpointsConfigDump.StaticEndpointConfig",
    "dynamic_endpoint_configs": _ADMIN + "EndpointsConfigDump.DynamicEndpointConfig",
    "static_listeners": _ADMIN + "ListenersConfigDump.StaticListener",
    "dynamic_listeners": _ADMIN + "ListenersConfigDump.DynamicListener",
    "static_route_configs": _ADMIN + "RoutesConfigDump.StaticRouteConfig",
    "dynamic_route_configs": _ADMIN + "RoutesConfigDump.DynamicRouteConfig",
    "static_secrets": _ADMIN + "SecretsConfigDump.StaticSecret",
    "dynamic_active_secrets": _ADMIN + "SecretsConfigDump.DynamicSecret",
    "dynamic_warming_secrets": _ADMIN + "SecretsConfigDump.DynamicSecret",
}


class ConfigDumpError(LookupError):
    """``resource=`` names nothing Envoy knows; the admin answers 404 with this text."""


def rfc3339(ts: float) -> str:
    """``2026-11-24T11:31:31.780Z``."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _any(type_url: str, d: Canonical) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": type_url}
    out.update((k, v) for k, v in d.items() if k != "@type")
    return out


def _dump(name: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": _ADMIN + name}
    out.update((k, v) for k, v in fields.items() if v not in ([], {}, None, ""))
    return out


def _static(key: str, type_url: str, items: Sequence[tuple[Canonical, float]]) -> list[Any]:
    return [{key: _any(type_url, d), "last_updated": rfc3339(t)} for d, t in items]


def _dynamic(key: str, type_url: str, items: Sequence[tuple[str, Canonical, float]]) -> list[Any]:
    out = []
    for version, d, t in items:
        entry: dict[str, Any] = {}
        if version:
            entry["version_info"] = version
        entry[key] = _any(type_url, d)
        entry["last_updated"] = rfc3339(t)
        out.append(entry)
    return out


def _failure(
    type_url: str, version: str, details: str, failed: Canonical, t: float
) -> dict[str, Any]:
    """``UpdateFailureState``."""
    out: dict[str, Any] = {
        "failed_configuration": _any(type_url, failed),
        "last_update_attempt": rfc3339(t),
        "details": details,
    }
    if version:
        out["version_info"] = version
    return out


def _errors(
    key: str, type_url: str, items: Sequence[tuple[str, str, str, Canonical, float]]
) -> list[Any]:
    """Entries for resources whose last update was rejected (``error_state``)."""
    return [
        {"error_state": _failure(type_url, version, details, failed, t)}
        for _name, version, details, failed, t in items
    ]


_SENSITIVE = frozenset({"private_key", "password", "session_ticket_keys"})


def redact_sensitive(value: Any) -> Any:
    """Key material never leaves through the admin: inline private keys, passwords and ticket
    keys become ``[redacted]`` wherever they appear, as Envoy redacts its sensitive fields
    (a ``filename`` is kept: a path is not a secret)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _SENSITIVE:
                out[k] = _redact_source(v)
            else:
                out[k] = redact_sensitive(v)
        return out
    if isinstance(value, list):
        return [redact_sensitive(v) for v in value]
    return value


def _redact_source(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: ("[redacted]" if k in ("inline_string", "inline_bytes") else _redact_source(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_source(v) for v in value]
    return value


def all_dumps(src: ConfigDumpSources, *, include_eds: bool = False) -> list[dict[str, Any]]:
    """The ``configs`` list of ``GET /config_dump``."""
    dumps = [
        _dump(
            "BootstrapConfigDump",
            bootstrap=dict(src.bootstrap),
            last_updated=rfc3339(src.bootstrap_last_updated),
        ),
        _dump(
            "ClustersConfigDump",
            version_info=src.clusters_version,
            static_clusters=_static("cluster", _CLUSTER, src.static_clusters),
            dynamic_active_clusters=_dynamic("cluster", _CLUSTER, src.dynamic_active_clusters)
            + _errors("cluster", _CLUSTER, src.cluster_errors),
            dynamic_warming_clusters=_dynamic("cluster", _CLUSTER, src.dynamic_warming_clusters),
        ),
    ]
    if include_eds:
        static_eps = [
            ({**c["load_assignment"]}, t) for c, t in src.static_clusters if "load_assignment" in c
        ]
        dumps.append(
            _dump(
                "EndpointsConfigDump",
                static_endpoint_configs=_static("endpoint_config", _CLA, static_eps),
                dynamic_endpoint_configs=_dynamic("endpoint_config", _CLA, src.endpoint_configs),
            )
        )
    by_name: dict[str, dict[str, Any]] = {}
    for state, items in (
        ("active_state", src.dynamic_listeners),
        ("warming_state", src.dynamic_warming_listeners),
        ("draining_state", src.dynamic_draining_listeners),
    ):
        for v, d, t in items:
            entry = by_name.setdefault(str(d.get("name", "")), {})
            entry[state] = _dynamic("listener", _LISTENER, [(v, d, t)])[0]
    for name, version, details, failed, t in src.listener_errors:
        by_name.setdefault(name, {})["error_state"] = _failure(
            _LISTENER, version, details, failed, t
        )
    dynamic_listeners = [{"name": name, **states} for name, states in by_name.items()]
    dumps += [
        _dump(
            "ListenersConfigDump",
            version_info=src.listeners_version,
            static_listeners=_static("listener", _LISTENER, src.static_listeners),
            dynamic_listeners=dynamic_listeners,
        ),
        _dump("ScopedRoutesConfigDump"),
        _dump(
            "RoutesConfigDump",
            static_route_configs=_static("route_config", _ROUTE, src.static_route_configs),
            dynamic_route_configs=_dynamic("route_config", _ROUTE, src.dynamic_route_configs),
        ),
        _dump("SecretsConfigDump", **dict(src.secrets)),
    ]
    return [redact_sensitive(d) for d in dumps]


def apply_mask(d: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A protobuf FieldMask over a dict: keep only the listed dotted paths (and ``@type``)."""
    out: dict[str, Any] = {}
    if "@type" in d:
        out["@type"] = d["@type"]
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in d:
            continue
        value = d[head]
        if not rest:
            out[head] = value
        elif isinstance(value, Mapping):
            sub = apply_mask(value, [rest])
            prev = out.get(head)
            out[head] = {**prev, **sub} if isinstance(prev, dict) else sub
    return out


def _resource_name(element: Mapping[str, Any]) -> str | None:
    if "name" in element:
        return str(element["name"])
    for key in ("cluster", "listener", "route_config", "endpoint_config", "secret"):
        inner = element.get(key)
        if isinstance(inner, Mapping):
            return str(inner.get("name", inner.get("cluster_name", "")))
    return None


def _filter_names(dump: dict[str, Any], pattern: re.Pattern[str]) -> dict[str, Any]:
    """``name_regex=``: keep only the resources whose name matches (search semantics)."""
    out: dict[str, Any] = {}
    for key, value in dump.items():
        if key in RESOURCE_TYPES and isinstance(value, list):
            kept = [e for e in value if pattern.search(_resource_name(e) or "") is not None]
            if kept:
                out[key] = kept
        else:
            out[key] = value
    return out


def build_config_dump(
    src: ConfigDumpSources,
    *,
    resource: str | None = None,
    mask: str | None = None,
    include_eds: bool = False,
    name_regex: re.Pattern[str] | None = None,
) -> dict[str, Any]:
    """The body of ``/config_dump`` with its query parameters applied."""
    dumps = all_dumps(src, include_eds=include_eds or resource is not None)
    if name_regex is not None:
        dumps = [_filter_names(d, name_regex) for d in dumps]
    paths = [p for p in (mask or "").split(",") if p]
    if resource:
        if resource not in RESOURCE_TYPES:
            raise ConfigDumpError(f"{resource} not found in config dump")
        items: list[dict[str, Any]] = []
        for dump in dumps:
            for element in dump.get(resource, ()):
                item = {"@type": RESOURCE_TYPES[resource], **element}
                items.append(apply_mask(item, paths) if paths else item)
        return {"configs": items}
    if paths:
        dumps = [apply_mask(d, paths) for d in dumps]
    return {"configs": dumps}
