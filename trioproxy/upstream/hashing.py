"""Request hashing for RING_HASH and MAGLEV: ``hash_policy`` on routes, ``hash_policies`` on
udp_proxy.

``compile_http(policies)`` turns a route's ``hash_policy`` list into a function of the stream
that returns a 64-bit hash or ``None`` (no policy produced one: the balancer then picks at
random, as Envoy does). Envoy's combination rule: every policy that yields a value is mixed
in as ``rotl(h, 1) ^ value``; a ``terminal`` policy that yielded one ends the list.

Policies: ``header`` (with ``regex_rewrite``), ``cookie`` (an existing cookie; generating one
with ``ttl`` is not built and is refused), ``connection_properties.source_ip``,
``query_parameter``, ``filter_state``. Values are hashed with 64-bit BLAKE2b rather than
Envoy's xxHash64: the same key always reaches the same host, but not the host Envoy would
choose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers

MASK = (1 << 64) - 1
StreamHash = Callable[[Any], "int | None"]


def hash64(value: str | bytes) -> int:
    data = value.encode() if isinstance(value, str) else value
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _cookie(headers: Headers, name: str) -> str | None:
    raw: str
    for raw in headers.get_all("cookie"):
        for part in raw.split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k == name:
                return v
    return None


def _one(d: Mapping[str, Any]) -> Callable[[Any], str | None]:
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
                rx.sub(sub, v) if (v := s.request_headers.get(name)) is not None else None
            )
        return lambda s: s.request_headers.get(name)
    if "cookie" in d:
        c = d["cookie"]
        if c.get("ttl") is not None:
            raise ConfigError("generating cookies (ttl) is not supported yet", path="cookie.ttl")
        name = str(c.get("name", ""))
        return lambda s: _cookie(s.request_headers, name)
    if "connection_properties" in d:
        if not d["connection_properties"].get("source_ip"):
            return lambda s: None
        return lambda s: s.connection.remote_address[0]
    if "query_parameter" in d:
        qname = str(d["query_parameter"].get("name", ""))

        def query(s: Any) -> str | None:
            path: str = s.request_headers.get(":path") or ""
            _, _, q = path.partition("?")
            for k, v in parse_qsl(q, keep_blank_values=True):
                if k == qname:
                    return v
            return None

        return query
    if "filter_state" in d:
        key = str(d["filter_state"].get("key", ""))
        return lambda s: str(v) if (v := s.filter_state.get(key)) is not None else None
    raise ConfigError(
        "a hash policy needs header, cookie, connection_properties, query_parameter or filter_state"
    )


def compile_http(policies: Sequence[Mapping[str, Any]]) -> StreamHash | None:
    """The route's hash function, or ``None`` when it has no hash policy."""
    if not policies:
        return None
    parts: list[tuple[Callable[[Any], str | None], bool]] = []
    for i, p in enumerate(policies):
        try:
            parts.append((_one(p), bool(p.get("terminal", False))))
        except ConfigError as exc:
            raise exc.at(f"hash_policy[{i}]") from None

    def stream_hash(stream: Any) -> int | None:
        result: int | None = None
        for get, terminal in parts:
            value = get(stream)
            if value is None:
                continue
            h = hash64(value)
            result = h if result is None else ((((result << 1) | (result >> 63)) & MASK) ^ h)
            if terminal:
                break
        return result

    return stream_hash
