"""The RBAC filters' configs: ``envoy.extensions.filters.http.rbac.v3.RBAC`` (and its
``RBACPerRoute``) and ``envoy.extensions.filters.network.rbac.v3.RBAC``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.stats import Scope

from .policy import Attributes, Engine

_REFUSED = ("matcher", "shadow_matcher", "track_per_rule_stats", "delay_deny")


def _engine(d: Mapping[str, Any], key: str) -> Engine | None:
    if d.get(key) is None:
        return None
    try:
        return Engine.from_proto(d[key])
    except ConfigError as exc:
        raise exc.at(key) from None


@attrs.frozen
class RbacConfig:
    """``rules`` (``None``: everything passes), ``shadow_rules`` (only counted)."""

    rules: Engine | None = None
    shadow: Engine | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""
    stat_prefix: str = ""  # the network filter's

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> RbacConfig:
        for key in _REFUSED:
            if d.get(key):
                raise ConfigError("not supported yet", path=key)
        if d.get("enforcement_type", "ONE_TIME_ON_FIRST_BYTE") != "ONE_TIME_ON_FIRST_BYTE":
            raise ConfigError(
                "only ONE_TIME_ON_FIRST_BYTE is supported yet", path="enforcement_type"
            )
        return cls(
            rules=_engine(d, "rules"),
            shadow=_engine(d, "shadow_rules"),
            rules_stat_prefix=str(d.get("rules_stat_prefix", "")),
            shadow_rules_stat_prefix=str(d.get("shadow_rules_stat_prefix", "")),
            stat_prefix=str(d.get("stat_prefix", "")),
        )

    @classmethod
    def per_route(cls, d: Mapping[str, Any]) -> RbacConfig:
        """``RBACPerRoute``: its ``rbac`` replaces the filter's; without one, no rules."""
        try:
            return cls.from_proto(d.get("rbac") or {})
        except ConfigError as exc:
            raise exc.at("rbac") from None


def _prefix(value: str) -> str:
    return f"{value}." if value else ""


class Counted:
    """Evaluates a config's shadow rules (counted only) and rules (counted and enforced),
    under ``scope`` with the filter's own stat prefixes — a per-route config's decisions
    count under the filter's names too, as in Envoy."""

    def __init__(self, scope: Scope, config: RbacConfig) -> None:
        self.scope = scope
        self.rules_prefix = _prefix(config.rules_stat_prefix)
        self.shadow_prefix = _prefix(config.shadow_rules_stat_prefix)

    def decide(self, c: RbacConfig, a: Attributes) -> tuple[bool, str | None]:
        """(allowed, the policy that decided); no rules allow."""
        if c.shadow is not None:
            ok, _ = c.shadow.evaluate(a)
            name = "shadow_allowed" if ok else "shadow_denied"
            self.scope.counter(self.shadow_prefix + name).value += 1
        if c.rules is None:
            return True, None
        ok, policy = c.rules.evaluate(a)
        self.scope.counter(self.rules_prefix + ("allowed" if ok else "denied")).value += 1
        return ok, policy
