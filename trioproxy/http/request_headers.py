"""What the connection manager does to request and response headers (Envoy's
``ConnectionManagerUtility``), as plain functions over ``Headers``.

Request: hop-by-hop headers go, ``x-forwarded-for``/``x-forwarded-proto`` are set according to
``use_remote_address``, Envoy's control headers are stripped from requests that are not
internal (``internal_address_config``), ``x-request-id`` is generated. Response: hop-by-hop
headers go, ``server`` is set.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from typing import Final

from trioproxy.http.headers import Headers

#: Connection-specific headers never forwarded in either direction (RFC 9110 §7.6.1 plus the
#: ones Envoy also removes).
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "http2-settings",
        "trailer",
    }
)


def new_request_id() -> str:
    """A version-4 UUID string, as Envoy generates for ``x-request-id``.

    Request ids need to be unique, not secret: Python's Mersenne Twister (seeded from the OS)
    avoids a getrandom() syscall per request, as Envoy's own random generator does."""
    h = ((_getrandbits(128) & _UUID_CLEAR) | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_getrandbits: Final = random.getrandbits
_UUID_CLEAR: Final = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_SET: Final = (0x4 << 76) | (0x2 << 62)


def strip_hop_by_hop(headers: Headers, *, keep_te_trailers: bool = True) -> None:
    """Remove connection-specific headers; keep ``te: trailers`` if asked.

    The headers a ``Connection`` header names are not touched here: an HTTP/1.1 request's
    were removed when it was read (``request_head``, Envoy's codec does it), and a
    response's are kept, as Envoy keeps them."""
    items = headers.items()
    if HOP_BY_HOP.isdisjoint([name for name, _ in items]):
        return  # the common case, decided in C
    te_trailers = False
    if keep_te_trailers:
        for name, value in items:
            if name == "te" and "trailers" in [t.strip().lower() for t in value.split(",")]:
                te_trailers = True
    items[:] = [item for item in items if item[0] not in HOP_BY_HOP]
    if te_trailers:
        items.append(("te", "trailers"))


#: Stripped from every request that is not internal (Envoy's ``cleanInternalHeaders``) …
_EXTERNAL_STRIP: Final = (
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
)
#: … and also from edge requests (``use_remote_address`` and not internal).
_EDGE_STRIP: Final = (
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
)
_EXTERNAL_STRIP_SET: Final = frozenset(_EXTERNAL_STRIP)
_EDGE_STRIP_SET: Final = frozenset(_EDGE_STRIP)
#: Every request header ``mutate_request_headers`` reads, replaces or removes.
_ACTED_ON: Final = (
    HOP_BY_HOP
    | _EXTERNAL_STRIP_SET
    | _EDGE_STRIP_SET
    | {
        "x-envoy-internal",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-envoy-external-address",
        "via",
        "x-request-id",
    }
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# (Final, as the other per-request globals here: compiled, it is read without a dict lookup)
_is_loopback: Final = functools.lru_cache(maxsize=1024)(_loopback)


def _in(ip: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in networks)


def _last_xff(xff: str | None, trusted_hops: int) -> tuple[str | None, bool]:
    """Envoy's ``getLastAddressFromXFF``: the address ``trusted_hops`` from the right, and
    whether the header held a single address (only then may it make a request internal)."""
    if not xff:
        return None, False
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    idx = len(hops) - 1 - trusted_hops
    if not 0 <= idx < len(hops):
        return None, False
    try:
        ipaddress.ip_address(hops[idx])
    except ValueError:
        return None, False
    return hops[idx], len(hops) == 1


def mutate_request_headers(
    headers: Headers,
    *,
    remote_ip: str,
    tls: bool,
    use_remote_address: bool,
    skip_xff_append: bool,
    xff_num_trusted_hops: int,
    generate_request_id: bool,
    preserve_external_request_id: bool,
    via: str,
    internal_networks: tuple[Network, ...] = (),
    local_ip: str = "127.0.0.1",
    user_agent: str | None = None,
    service_node: str = "",
    internal_only: tuple[str, ...] = (),
    forwarded_port: int = 0,
) -> str:
    """Apply Envoy 1.40's request header mutations; return the trusted client address.

    A request is internal only when its trusted client address falls in
    ``internal_address_config`` (nothing does by default, as in Envoy 1.40) and it came with
    a single address in ``x-forwarded-for``; it then carries ``x-envoy-internal: true``.
    Other requests lose Envoy's control headers (``x-envoy-retry-on``,
    ``x-envoy-force-trace`` …); edge requests (``use_remote_address``) also lose
    ``x-envoy-decorator-operation`` and the downstream service headers, get
    ``x-envoy-external-address`` and, unless ``preserve_external_request_id``, a new
    ``x-request-id``. A loopback peer is recorded in ``x-forwarded-for`` as this host's own
    address, as Envoy does. ``x-forwarded-proto`` (and with ``forwarded_port``, the local
    port, ``x-forwarded-port``) is added when absent, and replaced at the edge unless
    ``xff_num_trusted_hops`` says a trusted proxy set it. Non-internal requests lose the
    route configuration's ``internal_only`` headers. ``user_agent`` (``add_user_agent``: the
    service cluster) names the downstream service cluster and node, and the user agent if
    the request has none."""
    items = headers.items()
    # One pass in C over the names: most requests carry none of the headers acted on, and
    # each check below is then a set lookup instead of a scan of the map.
    present = _ACTED_ON.intersection([name for name, _ in items])
    if present:
        if not HOP_BY_HOP.isdisjoint(present):
            strip_hop_by_hop(headers)
        if "x-envoy-internal" in present:
            headers.remove("x-envoy-internal")
    scheme = "https" if tls else "http"
    xff = headers.get("x-forwarded-for") if "x-forwarded-for" in present else None
    if use_remote_address:
        final: str | None = remote_ip
        single = xff is None
        if xff_num_trusted_hops > 0 and xff:
            hop, _ = _last_xff(xff, xff_num_trusted_hops - 1)
            final = hop or remote_ip
        if not skip_xff_append:
            appended = local_ip if _is_loopback(remote_ip) else remote_ip
            if xff is None:
                items.append(("x-forwarded-for", appended))
            else:
                headers.set("x-forwarded-for", f"{xff},{appended}" if xff else appended)
        if "x-forwarded-proto" not in present:
            items.append(("x-forwarded-proto", scheme))
        elif xff_num_trusted_hops == 0:  # (else a trusted proxy set it: kept, as Envoy)
            headers.set("x-forwarded-proto", scheme)
        if forwarded_port:
            if "x-forwarded-port" not in present:
                items.append(("x-forwarded-port", str(forwarded_port)))
            elif xff_num_trusted_hops == 0:
                headers.set("x-forwarded-port", str(forwarded_port))
    else:
        final, single = _last_xff(xff, xff_num_trusted_hops)
        if "x-forwarded-proto" not in present:
            items.append(("x-forwarded-proto", scheme))
        if forwarded_port and "x-forwarded-port" not in present:
            items.append(("x-forwarded-port", str(forwarded_port)))
    internal = single and final is not None and _in(final, internal_networks)
    edge = not internal and use_remote_address
    if internal:
        headers.set("x-envoy-internal", "true")
    elif present:
        for name in _EXTERNAL_STRIP_SET.intersection(present):
            headers.remove(name)
        if edge:
            for name in _EDGE_STRIP_SET.intersection(present):
                headers.remove(name)
    if internal_only and not internal:
        for name in internal_only:
            headers.remove(name)
    if user_agent is not None:
        headers.set("x-envoy-downstream-service-cluster", user_agent)
        if not headers.get("user-agent"):
            headers.set("user-agent", user_agent)
        if service_node:
            headers.set("x-envoy-downstream-service-node", service_node)
    if edge and final is not None:
        if "x-envoy-external-address" in present:
            headers.set("x-envoy-external-address", final)
        else:
            items.append(("x-envoy-external-address", final))
    if via:
        v = headers.get("via") if "via" in present else None
        headers.set("via", f"{v}, {via}" if v else via)
    if generate_request_id:
        if "x-request-id" not in present:
            items.append(("x-request-id", new_request_id()))
        elif edge and not preserve_external_request_id:
            headers.set("x-request-id", new_request_id())
    return final or remote_ip


def mutate_response_headers(
    headers: Headers, *, server_name: str, transformation: str, date: str
) -> None:
    """Envoy's response header mutations: ``date`` added unless the upstream sent one (Envoy
    keeps it), then ``server`` by ``server_header_transformation``, and the connection-specific
    headers removed."""
    if "date" not in headers:
        headers.add("date", date)
    strip_hop_by_hop(headers, keep_te_trailers=False)
    if transformation == "OVERWRITE":
        headers.set("server", server_name)
    elif transformation == "APPEND_IF_ABSENT" and "server" not in headers:
        headers.add("server", server_name)
