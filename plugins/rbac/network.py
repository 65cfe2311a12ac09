"""The network RBAC filter: allow or close each connection by the policies of ``policy.py``.

Evaluated once per connection (Envoy's ``ONE_TIME_ON_FIRST_BYTE``), on what a connection
offers: its addresses, SNI and client certificate (header and path rules never match). Stats
under the filter's ``stat_prefix``: ``<stat_prefix>.rbac.allowed``, ``denied``,
``shadow_allowed``, ``shadow_denied``.
"""

from __future__ import annotations

from trioproxy.network.filter import DownstreamConnection, NetworkFilter
from trioproxy.stats import Scope

from .config import Counted, RbacConfig
from .policy import Attributes


def _join(prefix: str, name: str) -> str:
    """Envoy's ``statPrefixJoin``: one dot between the parts."""
    if not prefix:
        return name
    return prefix + name if prefix.endswith(".") else f"{prefix}.{name}"


class NetworkRbacFilter(NetworkFilter):
    def __init__(self, config: RbacConfig, store: Scope) -> None:
        self.config = config
        self.counted = Counted(store.scope(_join(config.stat_prefix, "rbac.")), config)

    async def on_new_connection(self, conn: DownstreamConnection) -> bool:
        info = conn.info
        a = Attributes(
            headers=None,
            path=None,
            remote_address=info.remote_address[0],
            direct_remote_address=info.remote_address[0],
            local_address=info.local_address,
            sni=info.sni,
            peer_certificate=info.peer_certificate,
        )
        ok, _ = self.counted.decide(self.config, a)
        return ok
