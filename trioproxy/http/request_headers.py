"""What the connection manager does to request and response headers (Envoy's
``ConnectionManagerUtility``), as plain functions over ``Headers``.

Request: hop-by-hop headers go, ``x-forwarded-for``/``x-forwarded-proto`` are set according to
``use_remote_address``, ``x-envoy-*`` control headers from an external client are stripped,
``x-request-id`` is generated. Response: hop-by-hop headers go, ``server`` is set.
"""

from __future__ import annotations

import ipaddress
import random
from functools import lru_cache

from trioproxy.http.headers import Headers

#: Connection-specific headers never forwarded in either direction (RFC 9110 §7.6.1 plus the
#: ones Envoy also removes).
HOP_BY_HOP = frozenset(
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


@lru_cache(maxsize=4096)
def is_internal_address(ip: str) -> bool:
    """RFC 1918, loopback, link-local and unique-local addresses count as internal."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_private or addr.is_loopback


def new_request_id() -> str:
    """A version-4 UUID string, as Envoy generates for ``x-request-id``.

    Request ids need to be unique, not secret: Python's Mersenne Twister (seeded from the OS)
    avoids a getrandom() syscall per request, as Envoy's own random generator does."""
    n = (_getrandbits(128) & _UUID_CLEAR) | _UUID_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_getrandbits = random.getrandbits
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_SET = (0x4 << 76) | (0x2 << 62)


def strip_hop_by_hop(headers: Headers, *, keep_te_trailers: bool = True) -> None:
    """Remove connection-specific headers, and those named in ``Connection``."""
    items = headers.items()
    if HOP_BY_HOP.isdisjoint([name for name, _ in items]):
        return  # the common case, decided in C
    extra: set[str] = set()
    te_trailers = False
    for name, value in items:
        if name in HOP_BY_HOP:
            if name == "connection":
                extra.update(t.strip().lower() for t in value.split(","))
            elif name == "te" and keep_te_trailers:
                te_trailers = any(t.strip().lower() == "trailers" for t in value.split(","))
    extra.discard("")
    # Envoy keeps the end-to-end headers a Connection header names except these control ones.
    drop = HOP_BY_HOP | (extra & {"keep-alive", "upgrade", "proxy-connection", "te"})
    items[:] = [item for item in items if item[0] not in drop]
    if te_trailers:
        items.append(("te", "trailers"))


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
) -> str:
    """Apply Envoy's request header mutations; return the trusted client address."""
    strip_hop_by_hop(headers)
    scheme = "https" if tls else "http"
    trusted = remote_ip
    edge_request = False
    if use_remote_address:
        internal = is_internal_address(remote_ip)
        edge_request = not internal
        if not skip_xff_append:
            xff = headers.get("x-forwarded-for")
            headers.set("x-forwarded-for", f"{xff}, {remote_ip}" if xff else remote_ip)
        headers.set("x-forwarded-proto", scheme)
        if edge_request:
            headers.remove_prefix("x-envoy-")
        else:
            headers.set("x-envoy-internal", "true")
    else:
        xff = headers.get("x-forwarded-for")
        if xff:
            hops = [h.strip() for h in xff.split(",")]
            idx = len(hops) - 1 - xff_num_trusted_hops
            if 0 <= idx < len(hops):
                trusted = hops[idx]
        if "x-forwarded-proto" not in headers:
            headers.set("x-forwarded-proto", scheme)
    if via:
        v = headers.get("via")
        headers.set("via", f"{v}, {via}" if v else via)
    if generate_request_id:
        rid = headers.get("x-request-id")
        if rid is None or (edge_request and not preserve_external_request_id):
            headers.set("x-request-id", new_request_id())
    return trusted


def mutate_response_headers(headers: Headers, *, server_name: str, transformation: str) -> None:
    strip_hop_by_hop(headers, keep_te_trailers=False)
    if transformation == "OVERWRITE":
        headers.set("server", server_name)
    elif transformation == "APPEND_IF_ABSENT" and "server" not in headers:
        headers.add("server", server_name)
