"""RBAC policies compiled into predicates (``envoy.config.rbac.v3.RBAC``), shared by the
HTTP and the network filter.

A ``Permission`` looks at what is asked (headers, path, destination, SNI), a ``Principal`` at
who asks (addresses, client certificate, headers); a ``Policy`` matches when one of its
permissions and one of its principals do. An engine with action ALLOW lets a request through
when some policy matches, DENY when none does, LOG always. Where a field needs an HTTP request
(headers, path) and there is none (the network filter), it does not match, as in Envoy.

Refused by name (not built): ``condition``/``checked_condition`` (CEL), ``metadata``,
``filter_state``, ``matcher``, ``uri_template``, ``source_ip``'s deprecated forms aside,
``sourced_metadata``, ``custom``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.matchers import header_matcher, string_matcher

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.define(slots=True)
class Attributes:
    """What a policy can look at, for one request or connection."""

    headers: Headers | None
    path: str | None  # the request path without its query, after normalisation
    remote_address: str  # the original client (x-forwarded-for aware)
    direct_remote_address: str  # the peer of the connection
    local_address: tuple[str, int]
    sni: str = ""
    peer_certificate: Mapping[str, Any] | None = None


Predicate = Callable[[Attributes], bool]
_REFUSED_PERMISSION = ("metadata", "matcher", "uri_template", "sourced_metadata")
_REFUSED_PRINCIPAL = ("metadata", "filter_state", "custom", "sourced_metadata")


def _cidr(d: Mapping[str, Any]) -> Network:
    try:
        return ipaddress.ip_network(
            f"{d.get('address_prefix', '')}/{int(d.get('prefix_len', 0) or 0)}", strict=False
        )
    except ValueError as exc:
        raise ConfigError(f"invalid CIDR range: {exc}") from None


def _in(network: Network, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def _one_of(d: Mapping[str, Any], what: str) -> tuple[str, Any]:
    keys = [k for k in d if k != "@type"]
    if len(keys) != 1:
        raise ConfigError(f"a {what} needs exactly one rule, got {keys or 'none'}")
    return keys[0], d[keys[0]]


def _compile_list(
    items: Sequence[Mapping[str, Any]], fn: Callable[[Mapping[str, Any]], Predicate], path: str
) -> list[Predicate]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(fn(item))
        except ConfigError as exc:
            raise exc.at(f"{path}[{i}]") from None
    return out


def _path_matcher(d: Mapping[str, Any]) -> Predicate:
    if "path" not in d:
        raise ConfigError("a path matcher needs path", path="path")
    match = string_matcher(d["path"])
    return lambda a: a.path is not None and match(a.path)


def _header(d: Mapping[str, Any]) -> Predicate:
    match = header_matcher(d)
    return lambda a: a.headers is not None and match(a.headers)


def compile_permission(d: Mapping[str, Any]) -> Predicate:
    kind, v = _one_of(d, "permission")
    if kind in _REFUSED_PERMISSION:
        raise ConfigError("not supported yet", path=kind)
    if kind == "any":
        return lambda a: True
    if kind in ("and_rules", "or_rules"):
        parts = _compile_list(v.get("rules", ()), compile_permission, f"{kind}.rules")
        return _all(parts) if kind == "and_rules" else _any(parts)
    if kind == "not_rule":
        inner = compile_permission(v)
        return lambda a: not inner(a)
    if kind == "header":
        return _header(v)
    if kind == "url_path":
        return _path_matcher(v)
    if kind == "destination_ip":
        net = _cidr(v)
        return lambda a: _in(net, a.local_address[0])
    if kind == "destination_port":
        port = int(v)
        return lambda a: a.local_address[1] == port
    if kind == "destination_port_range":
        start, end = int(v.get("start", 0)), int(v.get("end", 0))
        return lambda a: start <= a.local_address[1] < end
    if kind == "requested_server_name":
        match = string_matcher(v)
        return lambda a: match(a.sni)
    raise ConfigError("not supported yet", path=kind)


def _principal_name(cert: Mapping[str, Any]) -> list[str]:
    """URI SANs, else DNS SANs, else the subject (Envoy's ``authenticated`` order)."""
    for key in ("uri_sans", "dns_sans"):
        if cert.get(key):
            return list(cert[key])
    return [str(cert.get("subject", ""))]


def compile_principal(d: Mapping[str, Any]) -> Predicate:
    kind, v = _one_of(d, "principal")
    if kind in _REFUSED_PRINCIPAL:
        raise ConfigError("not supported yet", path=kind)
    if kind == "any":
        return lambda a: True
    if kind in ("and_ids", "or_ids"):
        parts = _compile_list(v.get("ids", ()), compile_principal, f"{kind}.ids")
        return _all(parts) if kind == "and_ids" else _any(parts)
    if kind == "not_id":
        inner = compile_principal(v)
        return lambda a: not inner(a)
    if kind == "authenticated":
        if not v.get("principal_name"):
            return lambda a: a.peer_certificate is not None
        match = string_matcher(v["principal_name"])
        return lambda a: (
            a.peer_certificate is not None
            and any(match(n) for n in _principal_name(a.peer_certificate))
        )
    if kind in ("source_ip", "direct_remote_ip"):
        net = _cidr(v)
        return lambda a: _in(net, a.direct_remote_address)
    if kind == "remote_ip":
        net = _cidr(v)
        return lambda a: _in(net, a.remote_address)
    if kind == "header":
        return _header(v)
    if kind == "url_path":
        return _path_matcher(v)
    raise ConfigError("not supported yet", path=kind)


def _all(parts: list[Predicate]) -> Predicate:
    return lambda a: all(p(a) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    return lambda a: any(p(a) for p in parts)


@attrs.frozen
class Policy:
    name: str
    permission: Predicate
    principal: Predicate

    def matches(self, a: Attributes) -> bool:
        return self.permission(a) and self.principal(a)


@attrs.frozen
class Engine:
    """A compiled ``RBAC`` (``rules`` or ``shadow_rules``)."""

    action: str  # ALLOW, DENY or LOG
    policies: tuple[Policy, ...]

    def evaluate(self, a: Attributes) -> tuple[bool, str | None]:
        """(allowed, the matching policy's name). Policies are tried in name order."""
        matched = next((p.name for p in self.policies if p.matches(a)), None)
        if self.action == "ALLOW":
            return matched is not None, matched
        if self.action == "DENY":
            return matched is None, matched
        return True, matched

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> Engine:
        action = d.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY", "LOG"):
            raise ConfigError(f"unknown action {action!r}", path="action")
        policies = []
        for name in sorted(d.get("policies", {})):
            pd = d["policies"][name]
            path = f"policies.{name}"
            for key in ("condition", "checked_condition", "cel_config"):
                if key in pd:
                    raise ConfigError("CEL conditions are not supported yet", path=f"{path}.{key}")
            perms = _compile_list(
                pd.get("permissions", ()), compile_permission, f"{path}.permissions"
            )
            princ = _compile_list(pd.get("principals", ()), compile_principal, f"{path}.principals")
            policies.append(Policy(name, _any(perms), _any(princ)))
        return cls(action, tuple(policies))
