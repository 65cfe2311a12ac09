"""``envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`` → ``UdpProxyConfig``.

Routing takes either the older ``cluster`` field or a generic ``matcher``
(``xds.type.matcher.v3.Matcher``): ``matcher_list`` entries whose predicates test the
session's source or destination IP or port (``envoy.matching.inputs.*``) with a
``StringMatcher``, nested matchers, and ``on_no_match``; every action is a
``udp_proxy.v3.Route`` naming a cluster. The matcher is compiled to a function of the
session's addresses, evaluated once per new session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.http.matchers import string_matcher
from trioproxy.upstream.config import duration, uint

DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_RX_DATAGRAM_SIZE = 1500
ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
_INPUT_PREFIX = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
_NOT_YET = (
    "use_original_src_ip",
    "session_filters",
    "tunneling_config",
    "access_log",
    "proxy_access_log",
    "upstream_socket_config.prefer_gro",
)

#: (source, destination) → the session's cluster, or None.
Route = Callable[[tuple[str, int], tuple[str, int]], "str | None"]
_Pred = Callable[[tuple[str, int], tuple[str, int]], bool]

_INPUTS: dict[str, Callable[[tuple[str, int], tuple[str, int]], str]] = {
    "SourceIPInput": lambda src, dst: src[0],
    "SourcePortInput": lambda src, dst: str(src[1]),
    "DestinationIPInput": lambda src, dst: dst[0],
    "DestinationPortInput": lambda src, dst: str(dst[1]),
    "DirectSourceIPInput": lambda src, dst: src[0],
}


@attrs.frozen
class UdpProxyConfig:
    stat_prefix: str
    route: Route
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_rx_datagram_size: int = DEFAULT_MAX_RX_DATAGRAM_SIZE  # upstream sockets
    per_packet_load_balancing: bool = False
    hash_source_ip: bool = False
    hash_key: str = ""

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> UdpProxyConfig:
        prefix = str(d.get("stat_prefix", ""))
        if not prefix:
            raise ConfigError("value length must be at least 1 characters", path="stat_prefix")
        for key in _NOT_YET:
            head, _, tail = key.partition(".")
            value = d.get(head)
            if tail and isinstance(value, Mapping):
                value = value.get(tail)
            if value:
                raise ConfigError(f"{key} is not supported yet", path=key)
        if "cluster" in d and "matcher" in d:
            raise ConfigError("only one of cluster and matcher may be set", path="matcher")
        if "cluster" in d:
            name = str(d["cluster"])
            if not name:
                raise ConfigError("value length must be at least 1 characters", path="cluster")
            route: Route = lambda src, dst: name  # noqa: E731
        elif "matcher" in d:
            try:
                route = _matcher(d["matcher"])
            except ConfigError as exc:
                raise exc.at("matcher") from None
        else:
            raise ConfigError("a udp_proxy needs cluster or matcher", path="matcher")
        idle: float | None = DEFAULT_IDLE_TIMEOUT
        if "idle_timeout" in d:
            idle = duration(d["idle_timeout"], "idle_timeout") or None
        size = DEFAULT_MAX_RX_DATAGRAM_SIZE
        usc = d.get("upstream_socket_config") or {}
        if "max_rx_datagram_size" in usc:
            raw = usc["max_rx_datagram_size"]
            size = uint(
                raw.get("value") if isinstance(raw, Mapping) else raw,
                "upstream_socket_config.max_rx_datagram_size",
            )
        hash_ip, hash_key = _hash_policies(d.get("hash_policies", ()))
        return cls(
            stat_prefix=prefix,
            route=route,
            idle_timeout=idle,
            max_rx_datagram_size=size or DEFAULT_MAX_RX_DATAGRAM_SIZE,
            per_packet_load_balancing=bool(d.get("use_per_packet_load_balancing", False)),
            hash_source_ip=hash_ip,
            hash_key=hash_key,
        )


def _hash_policies(policies: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    if len(policies) > 1:
        raise ConfigError("value must contain at most 1 item(s)", path="hash_policies")
    for p in policies:
        if p.get("source_ip"):
            return True, ""
        if "key" in p:
            return False, str(p["key"])
    return False, ""


def _action(d: Mapping[str, Any]) -> str:
    action = d.get("action")
    if action is None:
        if "matcher" in d:
            raise ConfigError("use action, not a nested matcher, here", path="matcher")
        raise ConfigError("an on_match needs an action", path="action")
    typed = action.get("typed_config") or {}
    if typed.get("@type") != ROUTE_TYPE:
        raise ConfigError(
            f"the action must be a udp_proxy.v3.Route, not {typed.get('@type')!r}",
            path="action.typed_config",
        )
    cluster = str(typed.get("cluster", ""))
    if not cluster:
        raise ConfigError(
            "value length must be at least 1 characters", path="action.typed_config.cluster"
        )
    return cluster


def _on_match(d: Mapping[str, Any]) -> Route:
    if "matcher" in d:
        try:
            return _matcher(d["matcher"])
        except ConfigError as exc:
            raise exc.at("matcher") from None
    cluster = _action(d)
    return lambda src, dst: cluster


def _predicate(d: Mapping[str, Any]) -> _Pred:
    if "single_predicate" in d:
        sp = d["single_predicate"]
        typed = (sp.get("input") or {}).get("typed_config") or {}
        url = str(typed.get("@type", ""))
        get = (
            _INPUTS.get(url.removeprefix(_INPUT_PREFIX)) if url.startswith(_INPUT_PREFIX) else None
        )
        if get is None:
            raise ConfigError(
                f"input {url!r} is not supported for UDP sessions (source or destination IP or"
                " port)",
                path="single_predicate.input",
            )
        if "value_match" not in sp:
            raise ConfigError("custom_match is not supported yet", path="single_predicate")
        try:
            test = string_matcher(sp["value_match"])
        except ConfigError as exc:
            raise exc.at("single_predicate.value_match") from None
        return lambda src, dst: test(get(src, dst))
    for kind in ("or_matcher", "and_matcher"):
        if kind in d:
            preds = [
                _located(_predicate, p, f"{kind}.predicate[{i}]")
                for i, p in enumerate(d[kind].get("predicate", ()))
            ]
            if len(preds) < 2:
                raise ConfigError("value must contain at least 2 item(s)", path=f"{kind}.predicate")
            if kind == "or_matcher":
                return lambda src, dst: any(p(src, dst) for p in preds)
            return lambda src, dst: all(p(src, dst) for p in preds)
    if "not_matcher" in d:
        inner = _located(_predicate, d["not_matcher"], "not_matcher")
        return lambda src, dst: not inner(src, dst)
    raise ConfigError("a predicate needs single_predicate, or_matcher, and_matcher or not_matcher")


def _located(fn: Callable[[Mapping[str, Any]], Any], d: Mapping[str, Any], path: str) -> Any:
    try:
        return fn(d)
    except ConfigError as exc:
        raise exc.at(path) from None


def _matcher(d: Mapping[str, Any]) -> Route:
    if "matcher_tree" in d:
        raise ConfigError("matcher_tree is not supported yet", path="matcher_tree")
    entries: list[tuple[_Pred, Route]] = []
    for i, m in enumerate((d.get("matcher_list") or {}).get("matchers", ())):
        pred = _located(
            _predicate, m.get("predicate") or {}, f"matcher_list.matchers[{i}].predicate"
        )
        then = _located(_on_match, m.get("on_match") or {}, f"matcher_list.matchers[{i}].on_match")
        entries.append((pred, then))
    fallback: Route | None = None
    if "on_no_match" in d:
        fallback = _located(_on_match, d["on_no_match"], "on_no_match")

    def route(src: tuple[str, int], dst: tuple[str, int]) -> str | None:
        for pred, then in entries:
            if pred(src, dst):
                return then(src, dst)
        return fallback(src, dst) if fallback is not None else None

    return route
