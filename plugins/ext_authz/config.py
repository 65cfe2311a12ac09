"""The ext_authz filter's config (``envoy.extensions.filters.http.ext_authz.v3.ExtAuthz``) and
its per-route form (``ExtAuthzPerRoute``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError
from trioproxy.http.matchers import string_matcher
from trioproxy.runtime import ALWAYS, RuntimeFraction

Match = Callable[[str], bool]
_REFUSED = (
    "with_request_body",
    "metadata_context_namespaces",
    "typed_metadata_context_namespaces",
    "route_metadata_context_namespaces",
    "route_typed_metadata_context_namespaces",
    "filter_enabled_metadata",
    "decoder_header_mutation_rules",
    "enable_dynamic_metadata_ingestion",
    "emit_filter_state_stats",
    "encode_raw_headers",
    "validate_mutations",
    "allowed_headers",
    "disallowed_headers",
    "charge_cluster_response_stats",
    "include_tls_session",
)


def _patterns(d: Mapping[str, Any] | None, path: str) -> tuple[Match, ...] | None:
    """A ``ListStringMatcher``'s patterns; ``None`` when the list is not set."""
    if d is None:
        return None
    out = []
    for i, m in enumerate(d.get("patterns", ())):
        try:
            out.append(string_matcher(m))
        except ConfigError as exc:
            raise exc.at(f"{path}.patterns[{i}]") from None
    return tuple(out)


@attrs.frozen
class ExtAuthzConfig:
    kind: str  # "http" or "grpc"
    cluster: str
    timeout: float
    # http
    path_prefix: str = ""
    request_headers: tuple[Match, ...] = ()
    headers_to_add: tuple[tuple[str, str], ...] = ()
    upstream_headers: tuple[Match, ...] = ()
    upstream_headers_to_append: tuple[Match, ...] = ()
    client_headers: tuple[Match, ...] | None = None
    client_headers_on_success: tuple[Match, ...] = ()
    # grpc
    authority: str = ""
    include_peer_certificate: bool = False
    # both
    failure_mode_allow: bool = False
    failure_mode_allow_header_add: bool = False
    status_on_error: int = 403
    stat_prefix: str = ""
    clear_route_cache: bool = False
    enabled: RuntimeFraction = ALWAYS
    deny_at_disable: bool = False

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> ExtAuthzConfig:
        for key in _REFUSED:
            if d.get(key):
                raise ConfigError("not supported yet", path=key)
        kw: dict[str, Any] = {}
        if "http_service" in d:
            kw.update(_http_service(d["http_service"] or {}))
        elif "grpc_service" in d:
            kw.update(_grpc_service(d["grpc_service"] or {}))
        else:
            raise ConfigError("one of grpc_service or http_service is required", path="services")
        kw["include_peer_certificate"] = bool(d.get("include_peer_certificate", False))
        kw["failure_mode_allow"] = bool(d.get("failure_mode_allow", False))
        kw["failure_mode_allow_header_add"] = bool(d.get("failure_mode_allow_header_add", False))
        code = (d.get("status_on_error") or {}).get("code")
        if code is not None:
            kw["status_on_error"] = int(code) if str(code).isdigit() else _code(str(code))
        kw["stat_prefix"] = str(d.get("stat_prefix", ""))
        kw["clear_route_cache"] = bool(d.get("clear_route_cache", False))
        kw["enabled"] = RuntimeFraction.from_proto(d.get("filter_enabled"), 100)
        deny = d.get("deny_at_disable")
        if deny is not None:
            default = deny.get("default_value", False)
            kw["deny_at_disable"] = bool(
                default.get("value", False) if isinstance(default, Mapping) else default
            )
        return cls(**kw)


_CODES = {"Forbidden": 403, "ServiceUnavailable": 503, "Unauthorized": 401}


def _code(name: str) -> int:
    code = _CODES.get(name)
    if code is None:
        raise ConfigError(f"status {name} is not supported yet", path="status_on_error.code")
    return code


def _http_service(d: Mapping[str, Any]) -> dict[str, Any]:
    p = "http_service"
    for key in ("retry_policy",):
        if d.get(key):
            raise ConfigError("not supported yet", path=f"{p}.{key}")
    uri = d.get("server_uri") or {}
    if not uri.get("cluster"):
        raise ConfigError("value is required", path=f"{p}.server_uri.cluster")
    try:
        timeout = duration(uri.get("timeout"), None)
    except ConfigError as exc:
        raise exc.at(f"{p}.server_uri.timeout") from None
    if timeout is None:
        raise ConfigError("value is required", path=f"{p}.server_uri.timeout")
    request = d.get("authorization_request") or {}
    response = d.get("authorization_response") or {}
    for key in ("dynamic_metadata_from_headers",):
        if response.get(key):
            raise ConfigError("not supported yet", path=f"{p}.authorization_response.{key}")
    adds = tuple(
        (str(h.get("key", "")).lower(), str(h.get("value", "")))
        for h in request.get("headers_to_add", ())
    )
    rp = f"{p}.authorization_response"
    return {
        "kind": "http",
        "cluster": str(uri["cluster"]),
        "timeout": timeout,
        "path_prefix": str(d.get("path_prefix", "")),
        "request_headers": _patterns(
            request.get("allowed_headers"), f"{p}.authorization_request.allowed_headers"
        )
        or (),
        "headers_to_add": adds,
        "upstream_headers": _patterns(
            response.get("allowed_upstream_headers"), f"{rp}.allowed_upstream_headers"
        )
        or (),
        "upstream_headers_to_append": _patterns(
            response.get("allowed_upstream_headers_to_append"),
            f"{rp}.allowed_upstream_headers_to_append",
        )
        or (),
        "client_headers": _patterns(
            response.get("allowed_client_headers"), f"{rp}.allowed_client_headers"
        ),
        "client_headers_on_success": _patterns(
            response.get("allowed_client_headers_on_success"),
            f"{rp}.allowed_client_headers_on_success",
        )
        or (),
    }


def _grpc_service(d: Mapping[str, Any]) -> dict[str, Any]:
    p = "grpc_service"
    envoy_grpc = d.get("envoy_grpc")
    if envoy_grpc is None:
        raise ConfigError("only envoy_grpc is supported yet", path=f"{p}.google_grpc")
    if d.get("initial_metadata") or d.get("retry_policy"):
        raise ConfigError("not supported yet", path=f"{p}.initial_metadata")
    try:
        timeout = duration(d.get("timeout"), 0.2)  # Envoy's default: 200 ms
    except ConfigError as exc:
        raise exc.at(f"{p}.timeout") from None
    cluster = str(envoy_grpc.get("cluster_name", ""))
    return {
        "kind": "grpc",
        "cluster": cluster,
        "timeout": timeout,
        "authority": str(envoy_grpc.get("authority") or cluster),
    }


@attrs.frozen
class PerRoute:
    """``ExtAuthzPerRoute``: ``disabled``, or ``check_settings.context_extensions`` (gRPC)."""

    disabled: bool = False
    context_extensions: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> PerRoute:
        if d.get("disabled"):
            return cls(disabled=True)
        settings = d.get("check_settings") or {}
        unbuilt = ("disable_request_body_buffering", "with_request_body", "grpc_service")
        for key in (*unbuilt, "http_service"):
            if settings.get(key):
                raise ConfigError("not supported yet", path=f"check_settings.{key}")
        return cls(context_extensions=dict(settings.get("context_extensions") or {}))
