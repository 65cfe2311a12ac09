"""The listener manager: which listeners run, and how one replaces another.

Theory of operation
-------------------
Static listeners come from the bootstrap and never change. Dynamic ones come from LDS and go
through Envoy's states:

- **warming**: built and validated, waiting for what it needs before it may take traffic (its
  route configuration from RDS, up to ``initial_fetch_timeout``). The listener it replaces, if
  any, keeps serving meanwhile — make before break.
- **active**: accepting. A listener whose config did not change is left alone, sockets and
  connections included.
- **draining**: replaced or removed. It stops accepting; idle keep-alive connections close,
  busy ones finish their request (HTTP/1.1 answers ``Connection: close``, HTTP/2 sends GOAWAY)
  for at most the drain time, then are cancelled. A replacement on the same address takes over
  the old listening socket, so no connection attempt is refused during an update.

Every listener runs as a task in the manager's nursery under its own cancel scope.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
import trio

from trioproxy.errors import ConfigError
from trioproxy.listener.config import ListenerConfig
from trioproxy.listener.parking import PARK_AFTER
from trioproxy.listener.tcp import Listener, bind_socket
from trioproxy.listener.udp import UdpListener
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.store import NEVER_IMPORT, ImportMode

log = logging.getLogger(__name__)

Warm = Callable[[], Awaitable[None]]
AnyListener = Listener | UdpListener


class ListenerManagerStats(StatBlock):
    """``listener_manager.*``."""

    import_mode: ClassVar[ImportMode] = NEVER_IMPORT  # every worker has the same listeners

    listener_added: Counter
    listener_modified: Counter
    listener_removed: Counter
    listener_stopped: Counter
    listener_create_success: Counter
    listener_create_failure: Counter
    listener_in_place_updated: Counter
    total_listeners_active: Gauge
    total_listeners_warming: Gauge
    total_listeners_draining: Gauge
    workers_started: Gauge


@attrs.define(eq=False)
class Entry:
    config: ListenerConfig
    version_info: str = ""
    last_updated: float = attrs.field(factory=time.time)
    static: bool = False
    listener: AnyListener | None = None
    scope: trio.CancelScope | None = None


class ListenerManager:
    """``reuse_port``: bind with ``SO_REUSEPORT``, so that the worker processes of
    ``--concurrency N`` each hold their own socket on every listening address."""

    def __init__(
        self,
        store: Store,
        drain_time: float = 5.0,
        *,
        reuse_port: bool = False,
        park_after: float = PARK_AFTER,
    ) -> None:
        self.stats = ListenerManagerStats(store.scope("listener_manager."))
        self.drain_time = drain_time
        self.reuse_port = reuse_port
        self.park_after = park_after
        self.active: dict[str, Entry] = {}
        self.warming: dict[str, Entry] = {}
        self.draining: list[Entry] = []
        self._nursery: trio.Nursery | None = None
        self._swap = trio.Lock()  # one swap at a time: a socket has one accepting owner

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def listeners(self) -> list[AnyListener]:
        """The accepting listeners, in the order they were added."""
        return [e.listener for e in self.active.values() if e.listener is not None]

    async def add_static(
        self, configs: Sequence[ListenerConfig], ports: Sequence[int] = ()
    ) -> list[int]:
        """Bind and start the bootstrap's listeners; their bound ports, in order.

        ``ports[i]``, when given and not 0, is the port to bind for ``configs[i]`` instead of
        its configured port 0 (the main process of ``--concurrency N`` picks one port for
        every worker)."""
        bound = []
        for i, config in enumerate(configs):
            entry = Entry(config, static=True)
            port = ports[i] if i < len(ports) else 0
            bound.append(await self._start(entry, sock=None, port=port or None))
            self.active[config.name] = entry
            self.stats.listener_added.value += 1
        self._gauges()
        return bound

    def find(self, address: tuple[str, int]) -> Listener | None:
        """The active TCP listener for an original destination (``use_original_dst``): the one
        bound to exactly that address, else one on a wildcard address with that port."""
        wildcard = None
        for entry in self.active.values():
            listener = entry.listener
            if not isinstance(listener, Listener):
                continue
            host, port = entry.config.address
            if port != address[1]:
                continue
            if host == address[0]:
                return listener
            if wildcard is None and host in ("0.0.0.0", "::"):
                wildcard = listener
        return wildcard

    async def _start(self, entry: Entry, sock: Any, port: int | None = None) -> int:
        assert self._nursery is not None, "ListenerManager.run is not running"
        config = entry.config
        if sock is None and config.bind_to_port:
            try:
                sock = bind_socket(
                    config.address[0],
                    config.address[1] if port is None else port,
                    reuse_port=self.reuse_port,
                    udp=config.protocol == "UDP",
                    ipv4_compat=config.ipv4_compat,
                )
            except OSError as exc:
                self.stats.listener_create_failure.value += 1
                raise ConfigError(
                    f"cannot bind '{config.address[0]}:{config.address[1]}': {exc.strerror}",
                    path=f"listener {config.name}",
                ) from exc
        listener: AnyListener
        if config.protocol == "UDP":
            listener = UdpListener(config, sock)
        else:
            listener = Listener(config, sock, self.find, park_after=self.park_after)
        entry.listener = listener
        bound: int = await self._nursery.start(self._serve, entry)
        self.stats.listener_create_success.value += 1
        return bound

    async def _serve(self, entry: Entry, *, task_status: trio.TaskStatus[int]) -> None:
        assert entry.listener is not None
        with trio.CancelScope() as scope:
            entry.scope = scope
            await entry.listener.serve(task_status=task_status)
        if entry in self.draining:
            self.draining.remove(entry)
            self._gauges()

    # ------------------------------------------------------------------ LDS

    def is_static(self, name: str) -> bool:
        entry = self.active.get(name)
        return entry is not None and entry.static

    def unchanged(self, config: ListenerConfig) -> bool:
        entry = self.warming.get(config.name) or self.active.get(config.name)
        return entry is not None and entry.config.canonical == config.canonical

    async def add_or_update(self, config: ListenerConfig, version_info: str, warm: Warm) -> None:
        """Warm ``config`` up, then put it in place of the listener of the same name.

        Runs until the listener is active (or was superseded while warming); the caller
        starts it as a task so that an xDS stream is never blocked by warming."""
        name = config.name
        entry = Entry(config, version_info)
        old_warming = self.warming.pop(name, None)
        if old_warming is not None and old_warming.scope is not None:
            old_warming.scope.cancel()
        self.warming[name] = entry
        self._gauges()
        with trio.CancelScope() as scope:
            entry.scope = scope
            await warm()
        if scope.cancelled_caught or self.warming.get(name) is not entry:
            return
        async with self._swap:
            if self.warming.get(name) is not entry:
                return  # superseded while waiting for the previous swap
            await self._swap_in(entry)

    async def _swap_in(self, entry: Entry) -> None:
        config = entry.config
        name = config.name
        del self.warming[name]
        old = self.active.get(name)
        sock = None
        if old is not None and old.listener is not None:
            if old.config.address == config.address and config.address[1] != 0:
                sock = await old.listener.hand_off()
            self._drain(old)
            self.stats.listener_modified.value += 1
        else:
            self.stats.listener_added.value += 1
        try:
            await self._start(entry, sock)
        except ConfigError:
            log.exception("listener %s could not start", name)
            self.active.pop(name, None)
            self._gauges()
            return
        entry.last_updated = time.time()
        self.active[name] = entry
        self._gauges()

    def remove(self, name: str) -> bool:
        """Stop and drain a dynamic listener; ``False`` if there is none by that name."""
        warming = self.warming.pop(name, None)
        if warming is not None and warming.scope is not None:
            warming.scope.cancel()
        entry = self.active.get(name)
        if entry is None or entry.static:
            self._gauges()
            return warming is not None
        del self.active[name]
        self._drain(entry)
        self.stats.listener_removed.value += 1
        self._gauges()
        return True

    def _drain(self, entry: Entry) -> None:
        listener = entry.listener
        if listener is None:
            return
        listener.drain.start(close_idle=False)
        self.draining.append(entry)
        assert self._nursery is not None
        self._nursery.start_soon(self._finish_drain, entry)

    async def _finish_drain(self, entry: Entry) -> None:
        """Cancel what is left of a draining listener after the drain time."""
        assert entry.listener is not None
        with trio.move_on_after(self.drain_time):
            await entry.listener.wait_drained()
        if entry.scope is not None:
            entry.scope.cancel()

    def _gauges(self) -> None:
        s = self.stats
        s.total_listeners_active.value = len(self.active)
        s.total_listeners_warming.value = len(self.warming)
        s.total_listeners_draining.value = len(self.draining)

    # ------------------------------------------------------------------ shutdown

    async def drain_all(self, drain_time: float) -> None:
        """Server shutdown: every listener stops accepting; wait for connections to finish."""
        for entry in self.warming.values():
            if entry.scope is not None:
                entry.scope.cancel()
        listeners = [e.listener for e in [*self.active.values(), *self.draining] if e.listener]
        for listener in listeners:
            listener.drain.start()
        with trio.move_on_after(drain_time):
            for listener in listeners:
                await listener.wait_drained()
