"""Request hashing for RING_HASH and MAGLEV: ``hash_policy`` on routes, ``hash_policies`` on
udp_proxy.

``compile_http(policies)`` turns a route's ``hash_policy`` list into a function of the stream
that returns a 64-bit hash or ``None`` (no policy produced one: the balancer then picks at
random, as Envoy does). Envoy's combination rule: every policy that yields a value is mixed
in as ``rotl(h, 1) ^ value``; a ``terminal`` policy ends the list once there is a hash, its own
or an earlier policy's.

Policies: ``header`` (with ``regex_rewrite``), ``cookie`` (an existing cookie; generating one
with ``ttl`` is not built and is refused), ``connection_properties.source_ip``,
``query_parameter``, ``filter_state``. Values are hashed as Envoy hashes them, with xxHash64
(seed 0) over the bytes on the wire, so with the same hosts a key reaches the host Envoy would
pick. ``xxhash64`` is the ``xxhash`` package's; ``murmur2_64`` (the ring's ``MURMUR_HASH_2``,
hashed only when a ring is built) is written here in plain Python from its published
definition. Both are checked against known values in the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xxhash

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers

MASK = (1 << 64) - 1
StreamHash = Callable[[Any], "int | None"]

# -- xxHash64 and MurmurHash2-64 ------------------------------------------------------------

_U64 = struct.Struct("<Q")


def xxhash64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` with ``seed`` (Envoy's ``HashUtil::xxHash64``), by the ``xxhash``
    package: a request's hash is on the hot path of a hash-policy route (a few hundred ns in
    C, where plain Python took 2-8 µs)."""
    return xxhash.xxh64_intdigest(data, seed)


_MURMUR_MUL = 0xC6A4A7935BD1E995
#: The seed Envoy's ring uses with ``MURMUR_HASH_2`` (libstdc++'s ``std::hash`` seed).
MURMUR_STD_SEED = 0xC70F6907


def murmur2_64(data: bytes, seed: int = MURMUR_STD_SEED) -> int:
    """64-bit MurmurHash2 as libstdc++'s ``_Hash_bytes`` computes it on 64-bit platforms (Envoy's
    ``MurmurHash::murmurHash2``): 8-byte little-endian words, then the tail, then two mixes."""
    n = len(data)
    aligned = n & ~7
    h = (seed ^ (n * _MURMUR_MUL)) & MASK
    for i in range(0, aligned, 8):
        k = (_U64.unpack_from(data, i)[0] * _MURMUR_MUL) & MASK
        k = ((k ^ (k >> 47)) * _MURMUR_MUL) & MASK
        h = ((h ^ k) * _MURMUR_MUL) & MASK
    if n & 7:
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * _MURMUR_MUL) & MASK
    h = ((h ^ (h >> 47)) * _MURMUR_MUL) & MASK
    return h ^ (h >> 47)


def _wire(value: str) -> bytes:
    """A value's bytes as they came off the wire: header values are decoded as Latin-1; a
    value that cannot have come from there (a filter-state object's text) is UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def hash64(value: str | bytes, seed: int = 0) -> int:
    """The hash Envoy gives one request value: xxHash64 of its wire bytes."""
    return xxhash64(_wire(value) if isinstance(value, str) else value, seed)


def _cookie(headers: Headers, name: str) -> str | None:
    """The first cookie ``name`` (its double quotes taken off, as Envoy does), or ``None``."""
    raw: str
    for raw in headers.get_all("cookie"):
        for part in raw.split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k == name:
                if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                    v = v[1:-1]
                return v
    return None


def _query_value(path: str, name: str) -> str | None:
    """The first value of query parameter ``name`` in ``path``, as written (Envoy's
    ``parseQueryString`` does not percent-decode): ``""`` for a bare ``name``."""
    _, sep, query = path.partition("?")
    if not sep:
        return None
    for param in query.split("&"):
        k, _, v = param.partition("=")
        if k == name:
            return v
    return None


def _values_hash(values: list[str]) -> int:
    """Envoy's hash of a header's values: xxHash64 of the one value, or for several, of each
    in sorted order, each hash the next one's seed (the order they came in does not count)."""
    if len(values) == 1:
        return hash64(values[0])
    h = 0
    for v in sorted(values):
        h = hash64(v, h)
    return h


StreamValueHash = Callable[[Any], "int | None"]


def _one(d: Mapping[str, Any]) -> StreamValueHash:
    """One ``hash_policy`` entry as a function of the stream: its hash, or ``None``."""
    if "header" in d:
        h = d["header"]
        name = str(h.get("header_name", "")).lower()
        if not name:
            raise ConfigError(
                "value length must be at least 1 characters", path="header.header_name"
            )
        if h.get("regex_rewrite"):
            from trioproxy.http.matchers import compile_regex

            rr = h["regex_rewrite"]
            rx = compile_regex(rr.get("pattern", {}), "header.regex_rewrite.pattern")
            sub = str(rr.get("substitution", ""))
            return lambda s: (
                _values_hash([rx.sub(sub, v) for v in values])
                if (values := s.request_headers.get_all(name))
                else None
            )
        return lambda s: (
            _values_hash(values) if (values := s.request_headers.get_all(name)) else None
        )
    if "cookie" in d:
        c = d["cookie"]
        if c.get("ttl") is not None:
            raise ConfigError("generating cookies (ttl) is not supported yet", path="cookie.ttl")
        name = str(c.get("name", ""))
        # an empty cookie is no cookie (Envoy would generate one here, with a ttl)
        return lambda s: hash64(v) if (v := _cookie(s.request_headers, name)) else None
    if "connection_properties" in d:
        if not d["connection_properties"].get("source_ip"):
            return lambda s: None
        return lambda s: hash64(s.connection.remote_address[0])
    if "query_parameter" in d:
        qname = str(d["query_parameter"].get("name", ""))
        return lambda s: (
            hash64(v)
            if (v := _query_value(s.request_headers.get(":path") or "", qname)) is not None
            else None
        )
    if "filter_state" in d:
        key = str(d["filter_state"].get("key", ""))
        return lambda s: hash64(str(v)) if (v := s.filter_state.get(key)) is not None else None
    raise ConfigError(
        "a hash policy needs header, cookie, connection_properties, query_parameter or filter_state"
    )


def compile_http(policies: Sequence[Mapping[str, Any]]) -> StreamHash | None:
    """The route's hash function, or ``None`` when it has no hash policy."""
    if not policies:
        return None
    parts: list[tuple[StreamValueHash, bool]] = []
    for i, p in enumerate(policies):
        try:
            parts.append((_one(p), bool(p.get("terminal", False))))
        except ConfigError as exc:
            raise exc.at(f"hash_policy[{i}]") from None

    def stream_hash(stream: Any) -> int | None:
        result: int | None = None
        for get, terminal in parts:
            h = get(stream)
            if h is not None:
                result = h if result is None else ((((result << 1) | (result >> 63)) & MASK) ^ h)
            # a terminal policy ends the list once there is a hash, its own or an earlier one's
            if terminal and result is not None:
                break
        return result

    return stream_hash
