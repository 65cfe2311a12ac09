"""Route ``rate_limits``: the actions that turn a request into rate-limit descriptors.

A ``RateLimit`` (on a route's action or a virtual host) has a ``stage`` and a list of actions;
each action yields one descriptor entry (key, value) for a request, or none — then the whole
descriptor is not produced (Envoy's rule), except a ``request_headers`` action with
``skip_if_absent``, which only leaves its entry out. Rate-limit filters (the local one now)
match the descriptors against their own.

Actions built: ``request_headers``, ``remote_address``, ``generic_key``,
``header_value_match``, ``destination_cluster``; others are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.http.matchers import header_matcher

if TYPE_CHECKING:
    from trioproxy.http.filter import HttpStream

#: ``None``: no descriptor; ``()``: this entry left out; else the (key, value) entry.
Entry = tuple[str, str] | tuple[()] | None
Action = Callable[["HttpStream"], Entry]
_SKIP: tuple[()] = ()


def _request_headers(d: Mapping[str, Any]) -> Action:
    name = str(d.get("header_name", "")).lower()
    key = str(d.get("descriptor_key", ""))
    if not name or not key:
        raise ConfigError("header_name and descriptor_key are required")
    skip = bool(d.get("skip_if_absent", False))

    def action(stream: HttpStream) -> Entry:
        value = stream.request_headers.get(name)
        if value is None:
            return _SKIP if skip else None
        return (key, value)

    return action


def _remote_address(stream: HttpStream) -> Entry:
    address = stream.info.downstream_remote_address
    if address.startswith("["):
        ip = address[1 : address.find("]")]
    else:
        ip = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    return ("remote_address", ip) if ip else None


def _generic_key(d: Mapping[str, Any]) -> Action:
    entry = (str(d.get("descriptor_key") or "generic_key"), str(d.get("descriptor_value", "")))
    return lambda stream: entry


def _header_value_match(d: Mapping[str, Any]) -> Action:
    matchers = [header_matcher(m) for m in d.get("headers", ())]
    expect = d.get("expect_match", True)
    expect = expect.get("value", True) if isinstance(expect, Mapping) else bool(expect)
    entry = (str(d.get("descriptor_key") or "header_match"), str(d.get("descriptor_value", "")))

    def action(stream: HttpStream) -> Entry:
        matched = all(m(stream.request_headers) for m in matchers)
        return entry if matched == expect else None

    return action


def _destination_cluster(stream: HttpStream) -> Entry:
    route = stream.route
    name = route.cluster_name(stream.request_headers) if route is not None else None
    return ("destination_cluster", name) if name else None


def _action(d: Mapping[str, Any]) -> Action:
    kinds = [k for k in d if k != "@type"]
    if len(kinds) != 1:
        raise ConfigError("an action needs exactly one kind")
    kind = kinds[0]
    v = d[kind] or {}
    try:
        if kind == "request_headers":
            return _request_headers(v)
        if kind == "remote_address":
            return _remote_address
        if kind == "generic_key":
            return _generic_key(v)
        if kind == "header_value_match":
            return _header_value_match(v)
        if kind == "destination_cluster":
            return _destination_cluster
    except ConfigError as exc:
        raise exc.at(kind) from None
    raise ConfigError("not supported yet", path=kind)


@attrs.frozen
class RateLimit:
    stage: int
    actions: tuple[Action, ...]

    def descriptor(self, stream: HttpStream) -> tuple[tuple[str, str], ...] | None:
        entries = []
        for action in self.actions:
            entry = action(stream)
            if entry is None:
                return None
            if entry:
                entries.append(entry)
        return tuple(entries) if entries else None


def compile_rate_limits(items: Sequence[Mapping[str, Any]]) -> tuple[RateLimit, ...]:
    out = []
    for i, d in enumerate(items):
        for key in ("limit", "hits_addend", "apply_on_stream_done"):
            if key in d:
                raise ConfigError("not supported yet", path=f"rate_limits[{i}].{key}")
        actions = []
        for j, a in enumerate(d.get("actions", ())):
            try:
                actions.append(_action(a))
            except ConfigError as exc:
                raise exc.at(f"rate_limits[{i}].actions[{j}]") from None
        out.append(RateLimit(int(d.get("stage", 0) or 0), tuple(actions)))
    return tuple(out)


def descriptors(
    stream: HttpStream, limits: Sequence[RateLimit], stage: int
) -> list[tuple[tuple[str, str], ...]]:
    """The descriptors ``limits`` of ``stage`` produce for this request."""
    out = []
    for limit in limits:
        if limit.stage == stage:
            d = limit.descriptor(stream)
            if d is not None:
                out.append(d)
    return out
