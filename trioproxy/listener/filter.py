"""The listener filter API: what runs between ``accept`` and the filter-chain match.

A listener filter sees an ``AcceptedSocket`` — the raw socket and what is known about the
connection so far — and may add to it: ``original_dst`` restores the destination the client
connected to before an iptables REDIRECT, ``tls_inspector`` would read SNI and ALPN from the
ClientHello. The filter chain is then matched on the result (``trioproxy.listener.match``).
A filter returns ``False`` to close the connection. Listener filters run under the listener's
``listener_filters_timeout``.

A UDP listener's filter (``envoy.filters.udp_listener.udp_proxy``) is a different shape: it
owns the listener's datagrams (``UdpListenerFilter``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

if TYPE_CHECKING:
    from trioproxy.stats import Scope

T = TypeVar("T")


@attrs.define(eq=False)
class AcceptedSocket:
    """A TCP connection between accept and filter-chain match."""

    socket: socket.socket
    remote_address: tuple[str, int]
    local_address: tuple[str, int]
    #: ``local_address`` is the original destination (set by ``original_dst``).
    local_address_restored: bool = False
    #: ``"tls"`` or ``"raw_buffer"`` once a listener filter decided; ``""`` when none did.
    transport_protocol: str = ""
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()
    #: Whether the connection was handed over from another listener (``use_original_dst``).
    handed_off: bool = False
    filter_state: dict[str, Any] = attrs.field(factory=dict)

    def restore_local_address(self, address: tuple[str, int]) -> None:
        self.local_address = address
        self.local_address_restored = True


class ListenerFilter:
    """Base class of TCP listener filters; built once per listener by its factory."""

    async def on_accept(self, sock: AcceptedSocket) -> bool:
        """Inspect or amend ``sock``; return ``False`` to close the connection."""
        return True


class UdpListenerFilter:
    """Owns a UDP listener's datagrams: ``serve`` runs for the listener's life, reading the
    bound non-blocking ``sock`` (``scope`` is the listener's ``listener.<address>.``), and
    reports readiness through ``task_status.started()``."""

    async def serve(
        self,
        sock: socket.socket,
        scope: Scope,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        raise NotImplementedError


async def peek_until(
    sock: socket.socket, max_bytes: int, decide: Callable[[bytes], T | None]
) -> T | None:
    """Peek (``MSG_PEEK``: the bytes stay for the filter chain) at a new connection's first
    bytes until ``decide`` returns a verdict; ``None`` when the peer closed or failed first.
    An inspector's size limit is its own ``decide``'s business (``max_bytes`` + 1 are read)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(max_bytes + 1, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not data:
            return None
        verdict = decide(data)
        if verdict is not None:
            return verdict
        await trio.sleep(0.001)  # the rest is on its way
