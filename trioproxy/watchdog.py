"""Coarse timers for the hot path.

A trio cancel scope with a deadline costs about 6 µs to enter and leave; a proxied request
needs several timeouts (connection idle, route timeout) that almost never fire. Instead, the
objects that need one set a plain ``deadline`` attribute (seconds on trio's clock) and register
with the ``Watchdog``, whose single task wakes every ``TICK`` seconds and calls ``expire()`` on
the entries whose deadline has passed. An expiry acts by closing a socket, which wakes whatever
was waiting on it; the owner then sees why from its own state.

Precision is ``TICK`` (50 ms), which is fine for timeouts configured in seconds; timeouts that
are not on the hot path (connect, request headers) keep exact cancel scopes.

The same tick ``probe()``s the *watched* entries: an HTTP/1.1 connection waiting on the
upstream reads nothing from its client, so it cannot see the client go away; its probe peeks
at the socket (one non-blocking syscall) and cancels the stream when the client closed, as
Envoy notices a downstream close at once and resets the upstream request.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

TICK = 0.05

_current: trio.lowlevel.RunVar[Watchdog] = trio.lowlevel.RunVar("trioproxy_watchdog")


class Timed(Protocol):
    deadline: float

    def expire(self) -> None: ...


class Probed(Protocol):
    def probe(self) -> None: ...


class Watchdog:
    def __init__(self) -> None:
        self._entries: set[Timed] = set()
        self._watched: set[Probed] = set()

    def watch(self, entry: Probed) -> None:
        self._watched.add(entry)

    def unwatch(self, entry: Probed) -> None:
        self._watched.discard(entry)

    def add(self, entry: Timed) -> None:
        self._entries.add(entry)

    def discard(self, entry: Timed) -> None:
        self._entries.discard(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, now: float) -> None:
        """Expire every entry whose deadline is at or before ``now``."""
        expired = [e for e in self._entries if e.deadline <= now]
        for entry in expired:
            self._entries.discard(entry)
            entry.deadline = math.inf
            entry.expire()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        _current.set(self)
        task_status.started()
        while True:
            await trio.sleep(TICK)
            self.check(trio.current_time())
            if self._watched:
                for entry in list(self._watched):
                    entry.probe()


def current() -> Watchdog:
    """The running watchdog of this trio run (the server starts it before any listener)."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no Watchdog is running in this trio run") from None
