"""The network (L4) filter API.

A listener's filter chain is a list of network filters. Non-terminal filters see each new
connection first and may refuse it (network RBAC, connection rate limits); the terminal filter
— ``http_connection_manager`` or ``tcp_proxy`` — then owns the connection's byte stream until it
ends. Like HTTP filters, a network filter object is built once per filter chain by its factory
and shared by every connection on it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from trioproxy.http.filter import ConnectionInfo
from trioproxy.io import FastSocketStream

if TYPE_CHECKING:
    from trioproxy.stats import Scope


@attrs.define(eq=False)
class Drain:
    """A listener's (or the server's) drain signal, shared by its connections.

    ``draining`` flips once; connection managers check it between requests (HTTP/1.1 answers
    with ``Connection: close``, HTTP/2 sends GOAWAY) and ``wait_draining()`` wakes idle ones.
    """

    _event: trio.Event = attrs.field(factory=trio.Event)
    #: Connections idle between requests (anything with ``expire()``); a drain closes them.
    idle: set[Any] = attrs.field(factory=set)
    #: Whether idle keep-alive connections close at once (shutdown) or at their next
    #: response (a listener update), see ``start``.
    close_idle: bool = True

    @property
    def draining(self) -> bool:
        return self._event.is_set()

    def start(self, *, close_idle: bool = True) -> None:
        """Start draining. ``close_idle=False`` (a listener replaced by an update) leaves idle
        keep-alive connections open so that a client's next request is answered — with
        ``Connection: close`` — instead of racing a close; the drain time ends them."""
        self.close_idle = close_idle
        self._event.set()
        if close_idle:
            for conn in list(self.idle):
                conn.expire()

    async def wait_draining(self) -> None:
        await self._event.wait()


class Parking(Protocol):
    """The listener's side of parking (``trioproxy.listener.parking``), as a terminal filter
    sees it."""

    #: Seconds a connection waits for its next request in its own task before it may park.
    after: float

    def wake(self, sock: socket.socket) -> None:
        """Resume the connection parked on ``sock`` now, in a new task: the filter is about
        to close it (an idle timeout, a drain) and its resumed task finishes it."""


@runtime_checkable
class Parked(Protocol):
    """An idle connection its terminal filter put aside: returned by ``handle_connection``
    instead of waiting for the client's next bytes in a task.

    Only when ``DownstreamConnection.parking`` is set, and with nothing buffered above the
    socket (``stream is transport``), since the listener waits on the socket itself. The
    listener calls ``resume()`` in a new task when the socket turns readable (or on
    ``Parking.wake``); it returns as ``handle_connection`` does. ``abandon()`` is called
    instead, without a task, when the listener stops: count the connection as ended (the
    listener closes the socket)."""

    async def resume(self) -> Parked | None: ...

    def abandon(self) -> None: ...


@attrs.define(eq=False)
class DownstreamConnection:
    """One accepted connection, after its transport (TLS) handshake."""

    stream: trio.abc.HalfCloseableStream | trio.abc.Stream
    info: ConnectionInfo
    #: The socket under ``stream`` (under TLS too); closing it wakes any task waiting on it.
    transport: FastSocketStream
    listener_stats: Scope
    drain: Drain
    buffer_limit: int = 32 * 1024
    filter_state: dict[str, Any] = attrs.field(factory=dict)
    #: Where an idle connection may park (see ``Parked``); ``None``: it keeps its task.
    parking: Parking | None = None


class NetworkFilter:
    """Base class of non-terminal network filters."""

    async def on_new_connection(self, conn: DownstreamConnection) -> bool:
        """Return False to close the connection (the filter counts its own stats)."""
        return True


class TerminalNetworkFilter:
    """Owns a connection until it ends (or, idle, parks it: ``Parked``)."""

    async def handle_connection(self, conn: DownstreamConnection) -> Parked | None:
        raise NotImplementedError
