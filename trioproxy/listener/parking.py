"""Idle connections without a task: a listener's parking lot.

An HTTP/1.1 keep-alive connection waiting for its next request is otherwise a suspended task:
trio's task, its cancel status and the wait's chain of coroutines, and the frames of every
coroutine from the listener down to the read — about 5 KiB, most of what an idle connection
costs (docs/benchmarks.md). A terminal filter whose connection has been idle for
``ParkingLot.after`` seconds may instead return a ``Parked`` from ``handle_connection`` (see
``trioproxy.network.filter``): its task ends, and the listener leaves the socket here.

The lot is one ``epoll`` set, its descriptor waited on by one task. The task starts when the
first connection parks and stays while the listener serves (restarting it for each parking
would cost a cancellation and a task); it goes once the listener stops and nothing is parked.
When a parked socket turns readable — the next request's bytes, the client's FIN or a reset —
the lot starts a task again in the listener's handler nursery, which ``resume()``s the
connection where it stopped. The owner can also ask for that at once (``wake``: an idle
timeout or a drain closes the socket and lets the resumed task count it as it would have
counted it before). If the listener's nursery is cancelled (a hard stop), the lot tells each
parked connection it is ``abandon()``ed, without a task, and closes its socket.

A parked connection keeps everything else: it is still counted active, it still has its idle
timeout and is still closed by a drain. Linux only (``select.epoll``); elsewhere connections
keep their tasks, as they do everywhere with ``trioproxy serve --park-idle-after-s 0``.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

#: How long a connection waits for its next request in its own task before it may park
#: (``trioproxy serve --park-idle-after-s``). A parked connection's next request costs a task
#: and a scheduler pass more: tens of µs warm, about 0.2 ms on the development machine after a
#: second of idleness, when that code is out of the CPU's caches (``bench_resume.py``,
#: docs/benchmarks.md). A busy keep-alive connection never parks.
PARK_AFTER = 1.0

T = TypeVar("T")

#: Readable: bytes, or the client's FIN (errors and hang-ups are always reported too).
_EVENTS: int = getattr(select, "EPOLLIN", 1)


def available() -> bool:
    """Whether this platform can park connections (Linux's epoll)."""
    return hasattr(select, "epoll")


class ParkingLot(Generic[T]):
    """Parked connections of one listener, by socket descriptor.

    ``resume(item)`` starts the item's task again (the listener's handler nursery); the lot
    calls it once per parking, when the socket turns readable or on ``wake``.
    ``abandon(item)`` ends an item without a task when the lot's task is cancelled."""

    def __init__(
        self,
        resume: Callable[[T], None],
        abandon: Callable[[T], None],
        *,
        after: float = PARK_AFTER,
    ) -> None:
        #: seconds a connection waits for its next request in its own task before it parks
        self.after = after
        self._resume = resume
        self._abandon = abandon
        self._items: dict[int, T] = {}
        self._epoll: select.epoll | None = None
        #: the watcher task's cancel scope while it runs
        self._scope: trio.CancelScope | None = None
        self._stopping = False

    def park(self, sock: socket.socket, item: T, nursery: trio.Nursery) -> bool:
        """Watch ``sock`` for ``item``; ``False`` if it cannot be watched (closed meanwhile),
        and the caller keeps it."""
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
        fd = sock.fileno()
        try:
            epoll.register(fd, _EVENTS)
        except (OSError, ValueError):
            return False
        self._items[fd] = item
        if self._scope is None:
            self._scope = trio.CancelScope()
            nursery.start_soon(self._watch, self._scope)
        return True

    def wake(self, sock: socket.socket) -> None:
        """Resume the item parked on ``sock`` now (before its owner closes the socket)."""
        item = self._take(sock.fileno())
        if item is not None:
            self._resume(item)

    def stop(self) -> None:
        """The listener stops accepting: the watcher task goes as soon as nothing is parked
        (it would keep the listener's nursery open)."""
        self._stopping = True
        self._stop_watcher_if_idle()

    def close(self) -> None:
        """Release the epoll set (the listener stopped; nothing is parked any more)."""
        epoll = self._epoll
        if epoll is not None:
            self._epoll = None
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    def _take(self, fd: int) -> T | None:
        item = self._items.pop(fd, None)
        if item is None:
            return None
        assert self._epoll is not None
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        self._stop_watcher_if_idle()
        return item

    def _stop_watcher_if_idle(self) -> None:
        if self._stopping and not self._items and self._scope is not None:
            # Nothing left to watch, and nothing will park but a draining connection (which
            # starts a watcher again).
            self._scope.cancel()
            self._scope = None

    async def _watch(self, scope: trio.CancelScope) -> None:
        epoll = self._epoll
        assert epoll is not None
        try:
            with scope:
                while True:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                    for fd, _ in epoll.poll(0):
                        item = self._take(fd)
                        if item is not None:
                            self._resume(item)
        finally:
            if self._scope is scope:
                # Cancelled from outside (the listener stops): no task will take these.
                self._scope = None
                items = list(self._items.values())
                self._items.clear()
                for item in items:
                    self._abandon(item)
