"""The control channel between the main process and one worker: JSON messages over a socket.

Each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON. The main
process asks and the worker answers, one request at a time (``Channel.request`` holds a lock),
so no message needs an id. The channel carries config snapshots, stats snapshots and admin
requests: nothing on it is on a request's path.

Because replies are matched to requests by order alone, a channel on which anything went
wrong mid-message — a send or receive cancelled half way, a cancelled request whose reply is
still to come, an oversize or undecodable message — can never be trusted again: it is closed,
and every later use raises ``ChannelClosed``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import trio

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 256 * 1024 * 1024


class ChannelClosed(Exception):
    """The other process closed its end (it exited, or closed the channel)."""


class Channel:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<Channel fd={self.stream.socket.fileno()} buffered={len(self._buffer)}>"

    async def send(self, message: Mapping[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()  # before: nothing sent yet
        try:
            await self.stream.send_all(_HEADER.pack(len(body)) + body)
        except BaseException as exc:
            await self._abort()
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise ChannelClosed(str(exc)) from exc
            raise

    async def receive(self) -> dict[str, Any]:
        try:
            (size,) = _HEADER.unpack(await self._read(_HEADER.size))
            if size > MAX_MESSAGE:
                raise ChannelClosed(f"message of {size} bytes is over the limit")
            message = json.loads(await self._read(size))
            if not isinstance(message, dict):
                raise ChannelClosed("a message must be a JSON object")
        except ValueError as exc:  # JSON or UTF-8 that does not decode
            await self._abort()
            raise ChannelClosed(f"undecodable message: {exc}") from exc
        except BaseException:
            await self._abort()
            raise
        return message

    async def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``message`` and wait for its answer. Cancelled after the send, the channel is
        closed: the answer would otherwise be taken as the next request's."""
        async with self._lock:
            try:
                await self.send(message)
                return await self.receive()
            except BaseException:
                await self._abort()
                raise

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once; a task waiting on the channel gets ``ChannelClosed``."""
        self._buffer.clear()
        self.stream.socket.close()

    async def _abort(self) -> None:
        self._buffer.clear()
        await trio.aclose_forcefully(self.stream)

    async def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                data = await self.stream.receive_some(max(65536, n - len(self._buffer)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelClosed(str(exc)) from exc
            if not data:
                raise ChannelClosed("end of stream")
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out
