"""A request body that can be sent again (retries, request mirroring).

Its own module because ``attempt`` is an async generator, which mypyc does not compile: the
router (compiled in a mypyc build, see setup.py) keeps the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio


class Replay:
    """A request body that can be sent again: chunks are kept as they go out, up to
    ``limit`` bytes (``per_request_buffer_limit_bytes``); past it, no retry is possible."""

    __slots__ = ("_source", "_chunks", "_size", "_limit", "_done", "_finished", "replayable")

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._done = False
        self._finished = trio.Event()  # the source was read to its end
        self.replayable = True

    async def whole(self) -> bytes | None:
        """The whole body once it has been read (``None`` if it was too large to keep)."""
        await self._finished.wait()
        return b"".join(self._chunks) if self.replayable else None

    async def attempt(self) -> AsyncIterator[bytes]:
        for chunk in list(self._chunks):
            yield chunk
        if self._done:
            return
        async for chunk in self._source:
            if self.replayable:
                self._size += len(chunk)
                if self._size > self._limit:
                    self.replayable = False
                    self._chunks.clear()
                else:
                    self._chunks.append(chunk)
            yield chunk
        self._done = True
        self._finished.set()
