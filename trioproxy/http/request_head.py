"""From a parsed HTTP/1.1 request head to the header map filters see (sans-IO).

The request line becomes pseudo-headers (``Host`` becomes ``:authority``; an absolute-form
target gives both; a CONNECT's authority-form target is its ``:authority`` and it has no
``:path``), requests Envoy refuses get their local reply (no Host, HTTP/1.0 when not accepted,
underscores when configured), then Envoy's header mutations and path normalisation apply.
Whether an upgrade (or CONNECT) may go on is decided once the route is known:
``refuse_upgrade``.
"""

from __future__ import annotations

import re
from typing import Any

from trioproxy.http import h1, xfcc
from trioproxy.http.conn_manager_config import HcmConfig
from trioproxy.http.filter import ConnectionInfo, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.http.path import Outcome, normalize
from trioproxy.http.request_headers import mutate_request_headers
from trioproxy.netutil import local_ipv4

# Only these can change under normalisation: %-escapes, dot segments, // and backslashes.
_NEEDS_NORMALIZING = re.compile(r"%|/\.|//|\\")


_XFCC = xfcc.HEADER


#: Connection options that name no header (Envoy's ``ConnectionValues``).
_OPTIONS = frozenset({"close", "keep-alive", "upgrade", "http2-settings"})
#: A request naming one of these in ``Connection`` is refused: dropping them would hide where
#: it came from.
_NEVER_NOMINATED = frozenset({"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})


def _sanitize_connection(headers: Headers) -> bool:
    """Envoy's ``sanitizeConnectionHeader`` for an HTTP/1.1 request that is not an upgrade:
    the headers ``Connection`` names are removed (``te`` stays as ``te: trailers`` if it
    asks for trailers); False (answered 400) for ten or more tokens, a nominated
    ``x-forwarded-*`` or pseudo-header, or a ``te`` of 256 bytes or more."""
    value = ",".join(headers.get_all("connection"))
    tokens = [t.strip().lower() for t in value.split(",") if t.strip()]
    if len(tokens) >= 10:
        return False
    for token in tokens:
        if token in _OPTIONS or token == "connection":
            continue
        if token in _NEVER_NOMINATED or token[:1] == ":":
            return False
        if token == "te":
            te = headers.get("te")
            if te is None:
                continue
            if len(te) >= 256:
                return False
            if "trailers" in [t.strip().lower() for t in te.split(",")]:
                headers.set("te", "trailers")
                continue
        headers.remove(token)
    return True


def request_headers(
    head: h1.RequestHead, cfg: HcmConfig, conn: ConnectionInfo, scheme: str
) -> tuple[Headers, LocalReply | None]:
    """The request's header map; a LocalReply when the request must be refused."""
    stats = cfg.stats
    target = head.target
    authority = ""
    has_host = False  # (an empty Host is a host: Envoy 1.40 routes it, measured)
    reject: LocalReply | None = None
    items: list[tuple[str, str]] = []
    for name, value in head.headers:
        if name == "host":
            if has_host:
                reject = LocalReply(400, b"", details="http1.multiple_host_headers")
            authority = value
            has_host = True
        else:
            items.append((name, value))
    connect = head.method == "CONNECT"
    if connect:
        # authority-form (checked by the codec): the target is the authority, whatever
        # Host says, and there is no path (Envoy's codec)
        authority = target
        items = [(n, v) for n, v in items if n != "content-length"]  # (only ever 0)
    elif target[:1] != "/":
        # (``OPTIONS *`` too: Envoy 1.40 answers it 404 absolute_path_rejected, measured)
        if "://" in target:
            # absolute-form: the authority in the target wins (RFC 9112 §3.2.2).
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            authority = rest if slash < 0 else rest[:slash]
            target = "/" if slash < 0 else rest[slash:]
        else:
            stats.downstream_rq_non_relative_path.value += 1
            reject = LocalReply(404, b"", details="absolute_path_rejected")
    if not authority:
        if head.version == "1.0" and cfg.default_host_for_http_10:
            authority = cfg.default_host_for_http_10
        elif reject is None and not (has_host and not connect):
            reject = LocalReply(400, b"", details="missing_host_header")
    if connect:
        headers = Headers([(":authority", authority), (":method", "CONNECT"), (":scheme", scheme)])
    else:
        headers = Headers(
            [
                (":authority", authority),
                (":path", target),
                (":method", head.method),
                (":scheme", scheme),
            ]
        )
    headers.items().extend(items)
    if reject is not None:
        return headers, reject
    if head.version == "1.0" and not cfg.accept_http_10:
        return headers, LocalReply(426, b"Upgrade Required", details="low_version")
    if cfg.headers_with_underscores_action == "REJECT_REQUEST" and any("_" in n for n, _ in items):
        return headers, LocalReply(400, b"", details="unexpected_underscore")
    if cfg.headers_with_underscores_action == "DROP_HEADER":
        headers.items()[:] = [(n, v) for n, v in headers.items() if "_" not in n]
    upgrade = head.upgrade
    if not upgrade and "connection" in headers and not _sanitize_connection(headers):
        return headers, LocalReply(400, b"Bad Request", details="http1.connection_header_rejected")
    routes = cfg.routes.current
    mutate_request_headers(
        headers,
        remote_ip=conn.remote_address[0],
        tls=conn.tls,
        use_remote_address=cfg.use_remote_address,
        skip_xff_append=cfg.skip_xff_append,
        xff_num_trusted_hops=cfg.xff_num_trusted_hops,
        generate_request_id=cfg.generate_request_id,
        preserve_external_request_id=cfg.preserve_external_request_id,
        via=cfg.via,
        internal_networks=cfg.internal_networks,
        local_ip=local_ipv4(),
        user_agent=cfg.user_agent,
        service_node=cfg.service_node,
        internal_only=routes.internal_only_headers if routes is not None else (),
        forwarded_port=conn.local_address[1] if cfg.append_x_forwarded_port else 0,
    )
    if cfg.xfcc_mode != "SANITIZE" or _XFCC in headers:
        xfcc.apply(headers, cfg.xfcc_mode, cfg.xfcc_details, conn.peer_certificate)
    if upgrade and not connect:  # hop-by-hop, but the point of an upgrade request: carried on
        headers.set("upgrade", upgrade)
        headers.set("connection", "upgrade")
    if (
        target[:1] == "/"
        and (cfg.normalize_path or cfg.merge_slashes)
        and _NEEDS_NORMALIZING.search(target) is not None
    ):
        outcome, new = normalize(
            target,
            normalize_path=cfg.normalize_path,
            merge_slashes=cfg.merge_slashes,
            escaped_slashes=cfg.escaped_slashes,
        )
        if outcome is Outcome.REJECT:
            return headers, LocalReply(400, b"", details="path_normalization_failed")
        if outcome is Outcome.REDIRECT:
            return headers, LocalReply(
                307, b"", headers=(("location", new),), details="path_normalization_redirect"
            )
        if new != target:
            headers.set(":path", new)
    if cfg.strip_trailing_host_dot:
        stripped = without_trailing_dot(authority)
        if stripped != authority:
            authority = stripped
            headers.set(":authority", authority)
    if cfg.strip_port_mode and ":" in authority and not authority.endswith("]") and not connect:
        # (a CONNECT keeps its port, as Envoy's strip_port_from_connect is off by default)
        host, _, port = authority.rpartition(":")
        if cfg.strip_port_mode == "any" or port == str(conn.local_address[1]):
            headers.set(":authority", host)
    return headers, None


def without_trailing_dot(authority: str) -> str:
    """``strip_trailing_host_dot``: one trailing dot off the host, before any port (Envoy's
    ``HeaderUtility::stripTrailingHostDot``)."""
    colon = authority.rfind(":")
    if colon > 0 and authority.rfind("]") < colon:
        if authority[colon - 1] == ".":
            return authority[: colon - 1] + authority[colon:]
        return authority
    return authority[:-1] if authority.endswith(".") else authority


def refuse_upgrade(cfg: HcmConfig, stream: HttpStream, upgrade: str) -> LocalReply | None:
    """Envoy's upgrade check (``createUpgradeFilterChain``), made when the stream is routed:
    an upgrade (``upgrade`` is the ``Upgrade`` value, or ``CONNECT``) goes on when the route's
    ``upgrade_configs`` enable it, or name it not and the connection manager's do; it counts
    in ``downstream_cx_upgrades_total`` then. Refused on a route, it is answered 403
    ``upgrade_failed``; refused without a route, it goes on to the router, which answers 404
    (both measured with Envoy 1.40)."""
    kind = upgrade.lower()
    route: Any = stream.route
    hcm = cfg.upgrades
    allowed = kind in hcm if route is None else route.upgrade_enabled(kind, hcm)
    stats = cfg.stats
    if allowed:
        stats.downstream_cx_upgrades_total.value += 1
        return None
    if route is None:
        return None
    stats.downstream_rq_ws_on_non_ws_route.value += 1
    info = stream.info
    info.route_name = route.name
    if route.cluster is not None:
        info.upstream_cluster = route.cluster
        info.upstream_cluster_observability = cfg.alt_stat_name(route.cluster)
    return LocalReply(403, b"", details="upgrade_failed")
