"""``envoy.filters.listener.original_dst``: recover the destination a connection was headed to
before an iptables ``REDIRECT`` (or TPROXY) sent it to this listener.

Linux keeps it in conntrack and answers ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (IPv4) or
``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (IPv6). When there is none — the connection
was not redirected and conntrack does not track it — the local address stays as it was and is
not marked restored, as in Envoy, so an ORIGINAL_DST cluster finds no host for it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from typing import Any

from trioproxy.hookspecs import hookimpl
from trioproxy.listener.filter import AcceptedSocket, ListenerFilter
from trioproxy.registry import ListenerFilterFactory

NAME = "envoy.filters.listener.original_dst"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of an accepted TCP connection, or ``None``."""
    try:
        if sock.family == socket.AF_INET6:
            local = sock.getsockname()[0]
            if not local.startswith("::ffff:"):
                raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
                port = struct.unpack_from("!H", raw, 2)[0]
                return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class OriginalDstFilter(ListenerFilter):
    async def on_accept(self, sock: AcceptedSocket) -> bool:
        dst = original_destination(sock.socket)
        if dst is not None:
            sock.restore_local_address(dst)
        return True


def _create(config: Mapping[str, Any], context: Any) -> OriginalDstFilter:
    return OriginalDstFilter()


@hookimpl
def trioproxy_listener_filters() -> list[ListenerFilterFactory]:
    return [ListenerFilterFactory(NAME, (TYPE_URL,), create=_create)]
