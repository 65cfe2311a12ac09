"""Header blocks for ``h2`` to send, built in one pass, and the ``h2`` configuration that
trusts them.

``h2`` normalises and validates every block it sends through a chain of generators (names to
lower case, whitespace stripped, connection-specific fields dropped, credentials kept out of
the HPACK table, then pseudo-header checks): about a tenth of the CPU of a proxied HTTP/2
request. The blocks trioproxy sends are built here already in that form, so both HTTP/2
connections turn ``h2``'s outbound steps off; what a peer sends is still validated by ``h2``
(RFC 9113 §8.2, tests/h2spec).

Every block made here has: names in lower case, values latin-1 bytes without surrounding
whitespace; no connection-specific field (RFC 9113 §8.2.2), and ``te`` only as ``trailers``
in requests; pseudo-headers first and only those of its kind (none in trailers);
``authorization``, ``proxy-authorization`` and short ``cookie`` values never indexed
(RFC 7541 §7.1.3, the rule ``h2`` applies).
"""

from __future__ import annotations

from collections.abc import Iterable

import h2.config
from hpack import NeverIndexedHeaderTuple

from trioproxy.http.headers import Headers
from trioproxy.http.request_headers import HOP_BY_HOP

Block = list[tuple[bytes, bytes]]

#: Not sent upstream: connection-specific fields (RFC 9113 §8.2.2; a request's ``te:
#: trailers`` is the exception) and ``host``, which ``:authority`` carries.
_REQUEST_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "http2-settings",
        "host",
    }
)
_SENSITIVE = frozenset({"authorization", "proxy-authorization"})
_REQUEST_PSEUDO = (":authority", ":path", ":scheme")


def config(*, client_side: bool) -> h2.config.H2Configuration:
    """``h2``'s configuration for trioproxy: bytes headers, inbound blocks validated, outbound
    blocks taken as built here."""
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_outbound_headers=False,
        validate_outbound_headers=False,
    )


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    raw = value.encode("latin-1").strip()
    if name in _SENSITIVE or (name == "cookie" and len(raw) < 20):
        return NeverIndexedHeaderTuple(name.encode("latin-1"), raw)
    return (name.encode("latin-1"), raw)


def response_block(headers: Headers) -> Block:
    """``:status`` and the regular fields of a response, without hop-by-hop ones."""
    out: Block = [(b":status", (headers.get(":status") or "502").encode("latin-1"))]
    for name, value in headers.items():
        if name[0] != ":":
            name = name.lower()
            if name not in HOP_BY_HOP:
                out.append(_field(name, value))
    return out


def request_block(method: str, headers: Headers) -> Block:
    """A request's block for an upstream: ``:method``, ``:scheme`` (``http`` when absent),
    ``:authority`` and ``:path`` from the map, then the forwardable regular fields. A request
    without ``:authority`` or with an empty ``:path`` cannot be sent: ``ValueError``."""
    pseudo: dict[str, str] = {}
    regular: Block = []
    for name, value in headers.items():
        if name[0] == ":":
            if name in _REQUEST_PSEUDO and name not in pseudo:
                pseudo[name] = value
            continue
        name = name.lower()
        if name not in _REQUEST_DROPPED:
            regular.append(_field(name, value))
        elif name == "te" and value.strip().lower() == "trailers":
            regular.append((b"te", b"trailers"))
    authority = pseudo.get(":authority")
    path = pseudo.get(":path")
    if not authority or not path:
        raise ValueError("a request needs :authority and a non-empty :path")
    return [
        (b":method", method.encode("latin-1")),
        (b":scheme", pseudo.get(":scheme", "http").encode("latin-1")),
        (b":authority", authority.encode("latin-1")),
        (b":path", path.encode("latin-1")),
        *regular,
    ]


def trailers_block(fields: Iterable[tuple[str, str]]) -> Block:
    """Trailers: regular fields only, without connection-specific ones."""
    out: Block = []
    for name, value in fields:
        if name[0] != ":":
            name = name.lower()
            if name not in _REQUEST_DROPPED:
                out.append(_field(name, value))
    return out
