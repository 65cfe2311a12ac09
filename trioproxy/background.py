"""Long-lived helper tasks of config objects (span reporters, stats sinks).

They are built with the config, before the server's nursery exists, and again on every xDS
update. ``Background.start_soon`` queues a task until ``run`` (in the server's root nursery)
starts, then starts tasks directly. When the server stops, the nursery is cancelled; a
helper that must flush does it in a ``finally`` under a shielded, short deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import trio


class Background:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._pending: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
        #: Objects shared by everything built for this server, by a key of the builder's
        #: choosing (a tracer per tracing config: one reporter, however many listeners use
        #: it). They live as long as the server, not the process.
        self.shared: dict[Hashable, Any] = {}

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)
        else:
            self._pending.append((fn, args))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            pending, self._pending = self._pending, []
            for fn, args in pending:
                nursery.start_soon(fn, *args)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
