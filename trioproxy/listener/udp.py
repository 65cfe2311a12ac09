"""A UDP listener: a bound datagram socket handed to its UDP listener filter (``udp_proxy``).

The listener manager treats it like a TCP ``Listener`` (``serve``, ``drain``, ``hand_off``,
``wait_drained``); there is no accept loop, the filter reads the socket for the listener's
life. Draining a UDP listener stops it: datagrams have no connection to finish.
"""

from __future__ import annotations

import socket

import trio

from trioproxy.listener.config import ListenerConfig
from trioproxy.network.filter import Drain


class UdpListener:
    def __init__(self, config: ListenerConfig, sock: socket.socket | None) -> None:
        if sock is None:
            raise ValueError(
                "a UDP listener needs a bound socket (bind_to_port: false is TCP only)"
            )
        self.config = config
        self.sock = sock
        self.drain = Drain()
        self.active = 0
        self._handed_off = False
        self._stopped = trio.Event()
        self.port: int = sock.getsockname()[1]

    def __repr__(self) -> str:
        return f"<UdpListener {self.config.name} port={self.port}>"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        udp = self.config.udp_filter
        assert udp is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_drain, nursery.cancel_scope)
                await nursery.start(udp.serve, self.sock, self.config.scope)
                task_status.started(self.port)
        finally:
            self._stopped.set()
            if not self._handed_off:
                trio.lowlevel.notify_closing(self.sock)
                self.sock.close()

    async def _cancel_on_drain(self, scope: trio.CancelScope) -> None:
        await self.drain.wait_draining()
        scope.cancel()

    async def hand_off(self) -> socket.socket:
        """Stop reading and leave the socket open for the listener that replaces this one."""
        self._handed_off = True
        self.drain.start()
        await self._stopped.wait()
        return self.sock

    async def wait_drained(self) -> None:
        await self._stopped.wait()
