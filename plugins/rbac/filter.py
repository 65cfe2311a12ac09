"""The HTTP RBAC filter: allow or deny each request by the policies of ``policy.py``.

On request headers it evaluates the shadow rules (counted only: ``rbac.shadow_allowed`` /
``shadow_denied``) and the rules: a denied request gets ``403 RBAC: access denied`` with
details ``rbac_access_denied_matched_policy[<policy or none>]``; stats ``rbac.allowed`` /
``rbac.denied`` under the connection manager's scope (``rbac.<rules_stat_prefix>.allowed``
with a prefix). A route's ``RBACPerRoute`` replaces the filter's rules for that route; its
stats still go under the filter's prefixes, as in Envoy.
"""

from __future__ import annotations

from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.stats import Scope

from .config import Counted, RbacConfig
from .policy import Attributes

NAME = "envoy.filters.http.rbac"
DENIED_BODY = b"RBAC: access denied"


def ip_of(address: str) -> str:
    """``"ip:port"`` or ``"[v6]:port"`` → the IP."""
    if address.startswith("["):
        return address[1 : address.find("]")]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def attributes(stream: HttpStream, headers: Headers) -> Attributes:
    info, conn = stream.info, stream.connection
    path = headers.get(":path")
    return Attributes(
        headers=headers,
        path=path.split("?", 1)[0] if path is not None else None,
        remote_address=ip_of(info.downstream_remote_address),
        direct_remote_address=conn.remote_address[0],
        local_address=conn.local_address,
        sni=conn.sni,
        peer_certificate=conn.peer_certificate,
    )


class RbacFilter(HttpFilter):
    def __init__(self, config: RbacConfig, scope: Scope) -> None:
        self.config = config
        self.counted = Counted(scope.scope("rbac."), config)

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        c = stream.per_filter_config(NAME)
        if not isinstance(c, RbacConfig):
            c = self.config
        if c.rules is None and c.shadow is None:
            return None
        ok, policy = self.counted.decide(c, attributes(stream, headers))
        if ok:
            return None
        return LocalReply(
            403,
            DENIED_BODY,
            details=f"rbac_access_denied_matched_policy[{policy or 'none'}]",
        )
