"""Header blocks in one pass: those ``h2`` sends, and those it received, checked here instead
of by ``h2``.

``h2`` normalises and validates every block it sends and receives through chains of
generators (names to lower case, whitespace stripped, connection-specific fields dropped,
credentials kept out of the HPACK table, cookies joined, then character, pseudo-header and
``:authority``/``host`` checks): about a fifth of the CPU of a proxied HTTP/2 request. The
blocks trioproxy sends are built here already in that form, and the blocks a peer sends are
checked here with a few C-speed operations per block, so ``config()`` turns those steps of
``h2`` off in both directions.

Inbound (``request_fields``, ``response_fields``, ``trailer_fields``), the rules of RFC 9113
§8.2 and §8.3 that ``h2`` applied: field names without upper case, controls, DEL, non-ASCII or
a colon past the first character; values without NUL, CR or LF and without surrounding space
or tab; no connection-specific field, ``te`` only ``trailers``; pseudo-headers known, once
each, before the regular fields — for a request ``:method`` always, and ``:scheme`` and a
non-empty ``:path`` unless it is a CONNECT, an ``:authority`` or one ``host`` (equal when both
are there); for a response one ``:status``; none in trailers. A block that breaks one raises
``MalformedHeaders``, which the connection treats as ``h2`` did: a connection error (Envoy's
default for invalid HTTP/2 messaging). tests/h2spec and tests/http/test_h2_headers.py (against
``h2``'s own verdicts) cover each rule.

Outbound, every block made here has: names in lower case, values latin-1 bytes without
surrounding whitespace; no connection-specific field (RFC 9113 §8.2.2), and ``te`` only as
``trailers`` in requests; pseudo-headers first and only those of its kind (none in trailers);
``authorization``, ``proxy-authorization`` and short ``cookie`` values never indexed
(RFC 7541 §7.1.3, the rule ``h2`` applies), nor the per-request ids (``x-request-id``, trace
ids), which would only churn the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import h2.config
from hpack import NeverIndexedHeaderTuple

from trioproxy.http.headers import Headers
from trioproxy.http.request_headers import HOP_BY_HOP

#: A field to send: a ``(name, value)`` pair, or hpack's ``NeverIndexedHeaderTuple`` (a
#: subclass of it) for values kept out of the HPACK table. Typed ``Any`` on purpose: compiled
#: by mypyc, a value typed ``tuple[bytes, bytes]`` is unboxed and boxed again as a plain tuple,
#: which loses the never-indexed mark (the compiled test suite caught it), and hpack's class
#: is declared a subtype of that tuple, so no union keeps it apart.
Field = Any
Block = list[Field]

#: Not sent upstream: connection-specific fields (RFC 9113 §8.2.2; a request's ``te:
#: trailers`` is the exception) and ``host``, which ``:authority`` carries: the hop-by-hop
#: set but ``trailer``, which HTTP/2 carries end to end.
_REQUEST_DROPPED = (HOP_BY_HOP - {"trailer"}) | {"host"}
_SENSITIVE = frozenset({"authorization", "proxy-authorization"})
#: Fields whose value is new on every request: kept out of the HPACK table, where each would
#: evict an entry worth keeping and make every later block longer and slower to encode.
_UNIQUE = frozenset(
    {"x-request-id", "x-client-trace-id", "traceparent", "x-b3-traceid", "x-b3-spanid"}
)
_REQUEST_PSEUDO = (":authority", ":path", ":scheme")

#: A field name: one or more of 0x21-0x7e except upper case and the colon, a pseudo-header's
#: leading colon apart.
_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")
#: Field values joined by LF: each without NUL, CR or LF, and without space or tab at
#: either end.
_VALUE = rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?"
_VALUES = re.compile(_VALUE + rb"(?:\n" + _VALUE + rb")*")
#: Names already checked, as text: a peer's blocks repeat a few names, and a name found here
#: costs one lookup. Bounded in entries and length, so a peer inventing names cannot grow it.
_KNOWN_NAMES: dict[bytes, str] = {}
_KNOWN_NAMES_MAX = 1024
_KNOWN_NAME_LENGTH = 64
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"}
)
_REQUEST_PSEUDO_IN = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})


class MalformedHeaders(ValueError):
    """A received header block breaks RFC 9113 §8.2 or §8.3."""


def config(*, client_side: bool) -> h2.config.H2Configuration:
    """``h2``'s configuration for trioproxy: bytes headers, outbound blocks taken as built
    here, inbound ones checked here."""
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
        validate_outbound_headers=False,
    )


def _checked_name(raw: bytes) -> str:
    """A received field name as text, once checked (characters, not connection-specific);
    remembered while ``_KNOWN_NAMES`` has room."""
    if _NAME.fullmatch(raw) is None:
        raise MalformedHeaders("invalid header field name")
    name = raw.decode("latin-1")
    if name in _CONNECTION_SPECIFIC:
        raise MalformedHeaders("connection-specific header field")
    if len(raw) <= _KNOWN_NAME_LENGTH and len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
        _KNOWN_NAMES[raw] = name
    return name


def _fields(block: Sequence[tuple[bytes, bytes]]) -> tuple[list[str], list[str]]:
    """The names and the values, as latin-1 text, after the checks that apply to every block:
    characters, connection-specific fields and ``te``."""
    known = _KNOWN_NAMES
    names: list[str] = []
    raw_values: list[bytes] = []
    for raw, raw_value in block:
        name = known.get(raw)
        names.append(_checked_name(raw) if name is None else name)
        raw_values.append(raw_value)
    if not names:
        return names, []
    # One scan of all the values: LF only as the separator (so no LF inside a value), and
    # each value passes _VALUES' rules.
    values = b"\n".join(raw_values)
    if values.count(b"\n") != len(names) - 1 or _VALUES.fullmatch(values) is None:
        raise MalformedHeaders("invalid header field value")
    value_list = values.decode("latin-1").split("\n")
    if "te" in names:
        for name, value in zip(names, value_list, strict=True):
            if name == "te" and value.lower() != "trailers":
                raise MalformedHeaders("te other than trailers")
    return names, value_list


def request_fields(
    block: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A received request block as its pseudo-headers and its regular fields (cookies joined
    into one, RFC 9113 §8.2.3), once checked; ``MalformedHeaders`` otherwise."""
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    cookies: list[str] = []
    host: str | None = None
    names, values = _fields(block)
    for name, value in zip(names, values, strict=True):
        if name[0] == ":":
            if regular or cookies:
                raise MalformedHeaders(f"pseudo-header {name} after a regular field")
            if name not in _REQUEST_PSEUDO_IN or name in pseudo:
                raise MalformedHeaders(f"unexpected or repeated pseudo-header {name}")
            pseudo[name] = value
        elif name == "cookie":
            cookies.append(value)
        else:
            if name == "host":
                if host is not None:
                    raise MalformedHeaders("more than one host")
                host = value
            regular.append((name, value))
    method = pseudo.get(":method")
    if method is None:
        raise MalformedHeaders("no :method")
    if method == "CONNECT" and ":protocol" not in pseudo:
        if ":scheme" in pseudo or ":path" in pseudo:
            raise MalformedHeaders("CONNECT with :scheme or :path")
    elif ":scheme" not in pseudo or not pseudo.get(":path"):
        raise MalformedHeaders("no :scheme or no (or an empty) :path")
    if ":protocol" in pseudo and method != "CONNECT":
        raise MalformedHeaders(":protocol without CONNECT")
    authority = pseudo.get(":authority")
    if authority is None and host is None:
        raise MalformedHeaders("neither :authority nor host")
    if authority is not None and host is not None and authority != host:
        raise MalformedHeaders(":authority and host differ")
    if cookies:
        regular.append(("cookie", "; ".join(cookies)))
    return pseudo, regular


def response_fields(block: Sequence[tuple[bytes, bytes]]) -> tuple[int, list[tuple[str, str]]]:
    """A received response block as its status and its regular fields, once checked (one
    three-digit ``:status`` before the regular fields, no other pseudo-header);
    ``MalformedHeaders`` otherwise."""
    names, values = _fields(block)
    if not names or names[0] != ":status" or len(values[0]) != 3 or not values[0].isdecimal():
        raise MalformedHeaders("no (or an invalid) :status first")
    if any(name[0] == ":" for name in names[1:]):
        raise MalformedHeaders("unexpected pseudo-header in a response")
    return int(values[0]), list(zip(names[1:], values[1:], strict=True))


def trailer_fields(block: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Received trailers, once checked (no pseudo-header); ``MalformedHeaders`` otherwise."""
    names, values = _fields(block)
    if any(name[0] == ":" for name in names):
        raise MalformedHeaders("pseudo-header in trailers")
    return list(zip(names, values, strict=True))


def _field(name: str, value: str) -> Field:
    raw = value.encode("latin-1").strip()
    if name in _SENSITIVE or name in _UNIQUE or (name == "cookie" and len(raw) < 20):
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
    block: Block = [
        (b":method", method.encode("latin-1")),
        (b":scheme", pseudo.get(":scheme", "http").encode("latin-1")),
        (b":authority", authority.encode("latin-1")),
        (b":path", path.encode("latin-1")),
    ]
    block += regular
    return block


def trailers_block(fields: Iterable[tuple[str, str]]) -> Block:
    """Trailers: regular fields only, without connection-specific ones."""
    out: Block = []
    for name, value in fields:
        if name[0] != ":":
            name = name.lower()
            if name not in _REQUEST_DROPPED:
                out.append(_field(name, value))
    return out
