"""The main process of ``--concurrency N``: starts, watches, restarts and drains the workers.

Theory of operation: ``Supervisor.run`` loads nothing itself — the CLI hands it the config it
loaded and validated (``build`` runs here too, so a bad config exits 1 before any worker
starts). It picks one port for every static listener configured on port 0 (a TCP port is held
by a bound, non-listening ``SO_REUSEPORT`` socket, which takes no connections, for the life of
the main process; a UDP port is probed and released, since a bound UDP socket would take its
share of datagrams), then starts N workers at once, each a task (``_keep``) that:

1. spawns ``python -m trioproxy.workers --fd N`` with one end of a socketpair and sends it the
   config snapshot and its ``Options`` (``worker_index``, ``reuse_port``, the chosen ports);
2. waits for the worker's bound ports (a first start that fails fails the whole server, as a
   single process's bind error does);
3. waits for the process to exit; unless the server is draining, counts
   ``server.worker_restarts``, keeps the dead worker's last counters (``stats.merge.retire``)
   and starts a new one after a back-off (0.1 s after a life of 10 s or more, else doubling
   up to 10 s), replaying the admin changes the workers were given
   (``/healthcheck/*``, ``/runtime_modify``, ``/logging``).

The server is LIVE once every worker has been LIVE. SIGTERM, SIGINT or ``POST /quitquitquit``
asks every worker to shut down (SIGTERM if it does not answer) — each drains as a single
process does — and ``run`` returns once all have exited (those still running after the drain
time and 5 s more are killed).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from trioproxy.config import LoadedConfig
from trioproxy.errors import ConfigError
from trioproxy.registry import Registry
from trioproxy.server import Options, ServerStats, build
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.merge import Snapshot, retire
from trioproxy.workers.admin import MainAdmin, serve_main_admin
from trioproxy.workers.child import options_message
from trioproxy.workers.ipc import Channel, ChannelClosed

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # for a worker to bind its listeners
REQUEST_TIMEOUT = 10.0  # for a worker to answer a control request
KILL_GRACE = 5.0  # past the drain time, before a draining worker is killed
STEADY_LIFE = 10.0  # a worker that lived this long is restarted without back-off
MIN_BACKOFF, MAX_BACKOFF = 0.1, 10.0


class WorkerStartError(ConfigError):
    """A worker could not start (its config failed to build or a listener failed to bind)."""


class SupervisorStats(StatBlock):
    """``server.*`` stats of the main process alone."""

    worker_restarts: Counter
    workers_serving: Gauge  # workers whose listeners are bound


@attrs.define(eq=False)
class Worker:
    """One worker slot; ``process`` and ``channel`` are replaced on each restart."""

    index: int
    process: trio.Process | None = None
    channel: Channel | None = None
    started_at: float = 0.0
    serving: bool = False  # started: its listeners are bound
    #: The last snapshot it answered (state, stats, clusters, listeners).
    last: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"<Worker {self.index} pid={pid} running={self.running}>"


def _backoff(previous: float, lived: float) -> float:
    """Seconds before a restart: 0.1 after a steady life (time for a SIGINT that reached
    the whole process group to reach the main too), else doubling up to ``MAX_BACKOFF``."""
    if lived >= STEADY_LIFE:
        return MIN_BACKOFF
    return min(max(MIN_BACKOFF, previous * 2), MAX_BACKOFF)


class Supervisor:
    def __init__(
        self,
        loaded: LoadedConfig,
        options: Options,
        registry: Registry | None = None,
        log_level: int = logging.INFO,
    ) -> None:
        self.loaded = loaded
        self.options = options
        self.log_level = log_level
        self.built = build(loaded, options, registry=registry)  # a bad config fails here
        self.store = Store()
        self.stats = ServerStats(self.store.scope("server."))
        self.supervisor_stats = SupervisorStats(self.store.scope("server."))
        self.workers = [Worker(i) for i in range(options.concurrency)]
        self.state = "PRE_INITIALIZING"
        self.started_wall = time.time()
        self.admin_port: int | None = None
        self.healthcheck_failed = False
        self.retired: Snapshot = {}
        self.replay: list[tuple[str, str]] = []  # admin changes a new worker is given
        self._static_ports: tuple[int, ...] = ()
        self._reserved: list[socket.socket] = []
        self._shutdown = trio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    # ------------------------------------------------------------------ running

    async def run(
        self, *, task_status: trio.TaskStatus[Sequence[int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.stats.concurrency.set(self.options.concurrency)
        self.stats.version.set(0)
        self.stats.hot_restart_epoch.set(0)
        self._static_ports = self._reserve_ports()
        try:
            async with trio.open_nursery() as root:
                self.state = "INITIALIZING"
                self.stats.state.set(2)
                ports = await self._start_all(root)
                if self.built.admin_address is not None:
                    host, port = self.built.admin_address
                    self.admin_port = await root.start(
                        serve_main_admin, MainAdmin(self), host, port
                    )
                root.start_soon(self._signals)
                root.start_soon(self._housekeeping)
                root.start_soon(self._wait_live)
                task_status.started(ports)
                await self._shutdown.wait()
                await self._drain()
                root.cancel_scope.cancel()
        finally:
            for sock in self._reserved:
                sock.close()

    async def _start_all(self, root: trio.Nursery) -> Sequence[int]:
        """Start every worker at once; the first that fails to start fails them all."""
        ports: list[Sequence[int]] = []
        errors: list[WorkerStartError] = []

        async def start(worker: Worker, starting: trio.CancelScope) -> None:
            try:
                ports.append(await root.start(self._keep, worker))
            except WorkerStartError as exc:
                errors.append(exc)
                starting.cancel()

        async with trio.open_nursery() as starting:
            for worker in self.workers:
                starting.start_soon(start, worker, starting.cancel_scope)
        if errors:
            raise errors[0]
        return ports[0]

    def _reserve_ports(self) -> tuple[int, ...]:
        """A port for each static listener on port 0, the same in every worker."""
        chosen = []
        for config in self.built.listeners:
            host, port = config.address
            if port != 0 or not config.bind_to_port:
                chosen.append(0)
                continue
            udp = config.protocol == "UDP"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            try:
                if not udp:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, 0))
            except OSError as exc:
                sock.close()
                raise ConfigError(f"cannot bind '{host}:0': {exc.strerror}") from exc
            chosen.append(sock.getsockname()[1])
            if udp:
                sock.close()  # a bound UDP socket would be served datagrams: probe only
            else:
                self._reserved.append(sock)  # bound, never listening: holds the port
        return tuple(chosen)

    async def _keep(self, worker: Worker, *, task_status: trio.TaskStatus[Sequence[int]]) -> None:
        """Run ``worker`` and restart it whenever it dies, until the server drains."""
        first = True
        delay = 0.0
        try:
            while True:
                try:
                    ports = await self._spawn(worker)
                except WorkerStartError as exc:
                    if first:
                        raise
                    log.error("worker %d failed to start: %s", worker.index, exc)
                else:
                    if first:
                        task_status.started(ports)
                        first = False
                    else:
                        await self._replay(worker)
                    assert worker.process is not None
                    await worker.process.wait()
                await self._bury(worker)
                if self._shutdown.is_set():
                    return
                lived = time.monotonic() - worker.started_at
                delay = _backoff(delay, lived)
                self.supervisor_stats.worker_restarts.inc()
                log.warning(
                    "worker %d exited (%s) after %.1f s; restarting in %.1f s",
                    worker.index,
                    _exit_reason(worker),
                    lived,
                    delay,
                )
                await trio.sleep(delay)
                if self._shutdown.is_set():
                    return
        finally:
            with trio.CancelScope(shield=True):
                if worker.running:
                    assert worker.process is not None
                    worker.process.kill()
                    await worker.process.wait()
                await self._bury(worker)

    async def _spawn(self, worker: Worker) -> Sequence[int]:
        mine, theirs = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioproxy.workers", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(mine)))
        worker.process, worker.channel = process, channel
        worker.started_at = time.monotonic()
        options = attrs.evolve(
            self.options,
            worker_index=worker.index,
            reuse_port=True,
            serve_admin=False,
            static_ports=self._static_ports,
        )
        start = {
            "op": "start",
            "canonical": self.loaded.canonical,
            "source": self.loaded.source,
            "options": options_message(options),
            "log_level": self.log_level,
        }
        try:
            with trio.fail_after(START_TIMEOUT):
                reply = await channel.request(start)
        except (ChannelClosed, trio.TooSlowError) as exc:
            process.kill()
            await process.wait()
            raise WorkerStartError(
                f"worker {worker.index} did not start ({_exit_reason(worker)}): {exc}"
            ) from None
        if "error" in reply:
            await process.wait()
            raise WorkerStartError(str(reply["error"]))
        worker.serving = True
        self._count_serving()
        log.info("worker %d started (pid %d)", worker.index, process.pid)
        if self._shutdown.is_set():
            await self.ask(worker, {"op": "shutdown"})  # started while the server drains
        return [int(p) for p in reply["ports"]]

    async def _bury(self, worker: Worker) -> None:
        """Forget a dead worker's channel; keep its last counters in ``retired``."""
        worker.serving = False
        self._count_serving()
        if worker.last is not None:
            self.retired = retire(self.retired, worker.last["stats"])
            worker.last = None
        if worker.channel is not None:
            await worker.channel.aclose()
            worker.channel = None

    def _count_serving(self) -> None:
        self.supervisor_stats.workers_serving.set(sum(w.serving for w in self.workers))

    async def _replay(self, worker: Worker) -> None:
        for method, target in self.replay:
            await self.ask(worker, {"op": "admin", "method": method, "target": target})

    # ------------------------------------------------------------------ asking workers

    async def ask(self, worker: Worker, message: dict[str, Any]) -> dict[str, Any] | None:
        """A worker's answer, or None if it is not running or does not answer in time (a
        worker that does not is cut off: it drains, exits and is restarted)."""
        channel = worker.channel
        if channel is None or not worker.running:
            return None
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                return await channel.request(message)
        except ChannelClosed:
            return None
        except trio.TooSlowError:
            log.error("worker %d did not answer %s: cutting it off", worker.index, message["op"])
            await channel.aclose()
            return None

    async def ask_all(self, message: dict[str, Any]) -> list[tuple[Worker, dict[str, Any]]]:
        """The answers of every running worker, in worker order."""
        answers: dict[int, dict[str, Any]] = {}

        async def one(worker: Worker) -> None:
            reply = await self.ask(worker, message)
            if reply is not None:
                answers[worker.index] = reply

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        return [(w, answers[w.index]) for w in self.workers if w.index in answers]

    async def snapshots(self) -> list[dict[str, Any]]:
        """Every running worker's snapshot (remembered for when it dies)."""
        out = []
        for worker, reply in await self.ask_all({"op": "snapshot"}):
            worker.last = reply
            out.append(reply)
        return out

    # ------------------------------------------------------------------ life cycle

    async def _wait_live(self) -> None:
        """LIVE once every worker is (its xDS initialised), unless draining by then."""
        while self.state == "INITIALIZING":
            states = [reply.get("state") for reply in await self.snapshots()]
            if len(states) == len(self.workers) and all(s == "LIVE" for s in states):
                break
            await trio.sleep(0.05)
        if self.state != "INITIALIZING":
            return
        self.state = "LIVE"
        self.stats.state.set(0)
        self.stats.live.set(1)

    async def _drain(self) -> None:
        self.state = "DRAINING"
        self.stats.state.set(1)
        self.stats.live.set(0)
        log.info("draining %d workers for up to %.1f s", len(self.workers), self.options.drain_time)
        # Asked over the channel rather than by SIGTERM: a worker that already caught a
        # terminal's SIGINT would die of a second signal instead of finishing its drain.
        asked = {w.index for w, reply in await self.ask_all({"op": "shutdown"}) if reply}
        for worker in self.workers:
            if worker.running and worker.index not in asked:
                assert worker.process is not None
                worker.process.terminate()
        with trio.move_on_after(self.options.drain_time + KILL_GRACE):
            for worker in self.workers:
                while worker.running:
                    assert worker.process is not None
                    await worker.process.wait()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                self.request_shutdown()
                return

    async def _housekeeping(self) -> None:
        """Uptime every second; a stats snapshot every flush
        interval, so that a worker that dies loses at most that much of its counters."""
        interval = max(1.0, self.built.stats_flusher.interval)
        next_poll = trio.current_time() + interval
        while True:
            self.stats.uptime.set(int(time.time() - self.started_wall))
            if trio.current_time() >= next_poll:
                await self.snapshots()
                next_poll = trio.current_time() + interval
            await trio.sleep(1.0)


def _exit_reason(worker: Worker) -> str:
    code = worker.process.returncode if worker.process is not None else None
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
