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
import time
from threading import get_ident
from typing import Protocol

import trio

TICK = 0.05

_current: trio.lowlevel.RunVar[Watchdog] = trio.lowlevel.RunVar("trioproxy_watchdog")
_perf_counter = time.perf_counter
#: (thread, offset) while a watchdog runs on trio's own clock: ``now()`` reads that clock
#: directly in that thread (trio's SystemClock is ``offset + perf_counter()``).
_fast: tuple[int, float] | None = None


def now() -> float:
    """``trio.current_time()``, without its three interpreted calls when the run's clock is
    trio's default one (about 1% of a proxied request's CPU). Any other clock (a test's
    ``MockClock``), another thread's run, or no watchdog running: trio is asked."""
    fast = _fast
    if fast is not None and fast[0] == get_ident():
        return _perf_counter() + fast[1]
    return trio.current_time()


def _system_clock_offset() -> float | None:
    """The running clock's offset if it is trio's ``offset + perf_counter()`` clock (checked
    against the clock itself, not by its private class)."""
    clock = trio.lowlevel.current_clock()
    offset = getattr(clock, "offset", None)
    if type(clock).__name__ != "SystemClock" or type(offset) is not float:
        return None
    if abs(clock.current_time() - (_perf_counter() + offset)) > 0.001:
        return None
    return offset


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
        global _fast
        _current.set(self)
        mine = None
        if _fast is None:
            offset = _system_clock_offset()
            if offset is not None:
                mine = _fast = (get_ident(), offset)
        try:
            task_status.started()
            while True:
                await trio.sleep(TICK)
                self.check(now())
                if self._watched:
                    for entry in list(self._watched):
                        entry.probe()
        finally:
            # (equality, not identity: compiled, the tuple is boxed anew at each use)
            if mine is not None and _fast == mine:
                _fast = None


def current() -> Watchdog:
    """The running watchdog of this trio run (the server starts it before any listener)."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no Watchdog is running in this trio run") from None
