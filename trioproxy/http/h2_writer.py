"""The writer of an HTTP/2 connection: the frames of all its streams go out in one send.

Theory of operation
-------------------
The framer (``h2_server.H2Server`` downstream, ``h2_client_proto.H2Client`` upstream) keeps
one outbound buffer per connection, to which every frame it builds is appended (HEADERS,
DATA, WINDOW_UPDATE, acknowledgements, resets). The tasks of a connection — its reader and its
streams — only *queue*: they call the framer and then ``wake()``, which reschedules the
parked writer task. Trio runs a task rescheduled now in its next batch, after every task that
is runnable in this one, so the writer finds the frames of all the streams that ran meanwhile
and sends them with one ``send_all``: one system call and no lock per scheduler tick, instead
of one of each per stream event.

Back-pressure (DEFAULTS.md: a slow reader must not make the proxy buffer without bound):

- a task about to queue DATA calls ``wait_room()`` first, and notes the bytes with
  ``queued()``; once ``high_water`` bytes are queued and not yet taken by the writer, it waits
  until the writer has taken them and sent them. What is held is at most the batch being sent
  and the next one, each about ``high_water`` plus a frame per stream;
- the reader calls ``wait_sent()`` after each read: while the writer is stuck sending (the peer
  does not read), the reader stops reading, so what the peer makes us queue (acknowledgements,
  resets) stays within what one read asks for — the flood limits count per read.

A send that fails (the peer went away) calls ``on_broken`` once and releases every waiter; so
does the writer's end (cancelled with its connection). ``close_when_sent()`` sends what is left
and then calls ``close``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio


class Wakeup:
    """One task waits, others wake it: a re-armed event without an allocation per use. A
    ``wake()`` with nobody waiting is a no-op, so the waiter checks its condition in a loop."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    def wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        assert self._task is None, "one waiter at a time"
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Framer(Protocol):
    def data_to_send(self) -> bytes: ...


class FrameWriter:
    __slots__ = (
        "_close",
        "_closing",
        "_framer",
        "_on_broken",
        "_progress",
        "_queued",
        "_stream",
        "_wakeup",
        "done",
        "high_water",
        "sending",
    )

    def __init__(
        self,
        framer: _Framer,
        stream: trio.abc.SendStream,
        *,
        high_water: int,
        close: Callable[[], None],
        on_broken: Callable[[], None] | None = None,
    ) -> None:
        self._framer = framer
        self._stream = stream
        self.high_water = high_water
        self._close = close
        self._on_broken = on_broken
        self._queued = 0  # DATA bytes queued and not yet taken
        self._wakeup = Wakeup()
        self._progress = trio.lowlevel.ParkingLot()
        self._closing = False
        #: the writer is inside a send (which waits only when the peer does not read)
        self.sending = False
        #: the writer has ended (sent its last bytes, failed, or was cancelled)
        self.done = False

    # -- what the connection's tasks call -----------------------------------------------------
    def wake(self) -> None:
        """Frames were queued: have them sent in the next scheduler batch."""
        self._wakeup.wake()

    def queued(self, nbytes: int) -> None:
        """``nbytes`` of DATA were queued (counted against ``high_water``)."""
        self._queued += nbytes
        self.wake()

    def close_when_sent(self) -> None:
        """Send what is queued, then close (and take nothing more)."""
        self._closing = True
        self.wake()

    async def wait_room(self) -> None:
        """Return when more DATA may be queued (at once, unless ``high_water`` is reached)."""
        while self._queued >= self.high_water and not self.done:
            await self._progress.park()

    async def wait_sent(self) -> None:
        """Return once the send in progress, if any, is over."""
        if self.sending and not self.done:
            await self._progress.park()

    # -- the writer task ------------------------------------------------------------------------
    def _take(self) -> bytes:
        data = self._framer.data_to_send()
        self._queued = 0
        return data

    async def run(self) -> None:
        try:
            while True:
                data = self._take()
                if data:
                    self.sending = True
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.done = True
                        if self._on_broken is not None:
                            self._on_broken()
                        return
                    finally:
                        self.sending = False
                    self._progress.unpark_all()
                elif self._closing:
                    self._close()
                    return
                else:
                    await self._wakeup.wait()
        finally:
            self.done = True
            self._progress.unpark_all()
