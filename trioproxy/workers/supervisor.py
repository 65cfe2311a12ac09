"""The main process of ``--concurrency N``: starts, watches, restarts and drains the workers.

Theory of operation: ``Supervisor.run`` loads nothing itself — the CLI hands it the config it
loaded and validated (``build`` runs here too, so a bad config exits 1 before any worker
starts). It picks one port for every static listener configured on port 0 (a TCP port is held
by a bound, non-listening ``SO_REUSEPORT`` socket, which takes no connections, for the life of
the main process; a UDP port is probed and released, since a bound UDP socket would take its
share of datagrams); a static listener on a fixed port is probed, bound without
``SO_REUSEPORT``, so that a port another process already listens on fails the start instead
of being quietly shared with it. Then it starts N workers at once, each a task (``_keep``) that:

1. spawns ``python -m trioproxy.workers --fd N`` with one end of a socketpair and sends it the
   config snapshot, its ``Options`` (``worker_index``, ``reuse_port``, the chosen ports) and
   the admin changes made so far (``/healthcheck/*``, ``/runtime_modify``, ``/logging``: the
   last value of each, ``AdminChanges``), which it applies before binding;
2. waits for the worker's bound ports (a first start that fails fails the whole server, as a
   single process's bind error does); only then does the worker's channel become visible to
   admin requests, so none of them can cut off a worker still starting;
3. watches the process: a ``state`` ping every second (every 0.1 s until it is LIVE). A
   worker that does not answer a request within ``REQUEST_TIMEOUT`` — ping or admin — or
   whose channel breaks is *cut off*: its channel closed, SIGTERM, and SIGKILL
   ``KILL_GRACE`` seconds later (a SIGSTOPped or wedged worker would otherwise keep its
   listening socket and the connections the kernel queues on it);
4. once the process has exited, unless the server is draining, counts
   ``server.worker_restarts``, keeps the dead worker's last counters (``stats.merge.retire``)
   and starts a new one after a back-off (0.1 s after a life of 10 s or more, else doubling
   up to 10 s). A restart that fails in any way (a start error, no file descriptors left,
   a process that cannot be spawned) is logged and retried after the next back-off; it never
   takes the other workers down.

The server is LIVE once every worker has been LIVE. ``/ready`` answers 200 only while the
server is LIVE *and* every worker is serving: started, LIVE itself, and answering its pings
(none in the last ``READY_STALE`` seconds means not ready, well before it is cut off). A
worker that died, hangs or is restarting makes ``/ready`` 503 until it serves again.

SIGTERM, SIGINT or ``POST /quitquitquit`` asks every worker to shut down (SIGTERM if it does
not answer) — each drains as a single process does — and ``run`` returns once all have exited
(those still running after the drain time and 5 s more are killed).
"""

from __future__ import annotations

import logging
import os
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
from trioproxy.listener.tcp import bind_socket
from trioproxy.registry import Registry, extra_plugin_modules
from trioproxy.server import Options, ServerStats, build, shutdown_on_signal
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.merge import Snapshot, reset, retire
from trioproxy.workers.admin import AdminChanges, MainAdmin, serve_main_admin
from trioproxy.workers.child import options_message
from trioproxy.workers.ipc import Channel, ChannelClosed

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # for a worker to bind its listeners
REQUEST_TIMEOUT = 10.0  # for a worker to answer a control request, pings included
KILL_GRACE = 5.0  # after SIGTERM (past the drain time when draining), before SIGKILL
PING_INTERVAL = 1.0  # liveness pings of a LIVE worker
PING_INTERVAL_STARTING = 0.1  # … of one whose xDS is still initialising
READY_STALE = 3.0  # a worker silent this long makes /ready 503
STEADY_LIFE = 10.0  # a worker that lived this long is restarted without back-off
MIN_BACKOFF, MAX_BACKOFF = 0.1, 10.0


class WorkerStartError(ConfigError):
    """A worker could not start (its config failed to build or a listener failed to bind)."""


class SupervisorStats(StatBlock):
    """``server.*`` stats of the main process alone."""

    worker_restarts: Counter
    workers_serving: Gauge  # workers whose listeners are bound and who answer


@attrs.define(eq=False)
class Worker:
    """One worker slot; ``process``, ``channel`` and ``cut_off`` are replaced on each start.

    ``channel`` is None until the worker has answered its start (it is serving) and again
    once it is cut off or dead: only a serving worker is asked anything."""

    index: int
    process: trio.Process | None = None
    channel: Channel | None = None
    started_at: float = 0.0
    serving: bool = False  # started and not cut off: its listeners are bound
    state: str = ""  # its server state, as last answered
    answered_at: float = 0.0  # trio time of its last answer
    cut_off: trio.Event = attrs.field(factory=trio.Event)
    #: The last snapshot it answered (state, stats, clusters, listeners).
    last: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return (
            f"<Worker {self.index} pid={pid} running={self.running} serving={self.serving} "
            f"state={self.state or None}>"
        )


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
        # Workers build their own registry: the same entry points, plus these modules.
        self.plugins = extra_plugin_modules(registry) if registry is not None else ()
        self.store = Store()
        self.stats = ServerStats(self.store.scope("server."))
        self.supervisor_stats = SupervisorStats(self.store.scope("server."))
        self.workers = [Worker(i) for i in range(options.concurrency)]
        self.state = "PRE_INITIALIZING"
        self.started_wall = time.time()
        self.admin_port: int | None = None
        self.healthcheck_failed = False
        self.retired: Snapshot = {}
        self.admin_changes = AdminChanges()  # what a new worker is given
        self._static_ports: tuple[int, ...] = ()
        self._reserved: list[socket.socket] = []
        self._shutdown = trio.Event()
        # Snapshot rounds (``refresh``): one at a time, shared by whoever waits for it.
        self._rounds_started = 0
        self._rounds_done = 0
        self._round_over: trio.Event | None = None
        self._resets = 0  # /reset_counters so far: a round that spans one is dropped

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def is_ready(self) -> bool:
        """``/ready``: LIVE, and every worker serving, LIVE and lately heard from."""
        now = trio.current_time()
        return self.state == "LIVE" and all(
            w.serving and w.state == "LIVE" and now - w.answered_at < READY_STALE
            for w in self.workers
        )

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
                # (before the workers accept: a SIGTERM from then on drains them)
                await root.start(shutdown_on_signal, self.request_shutdown)
                ports = await self._start_all(root)
                if self.built.admin_address is not None:
                    host, port = self.built.admin_address
                    self.admin_port = await root.start(
                        serve_main_admin, MainAdmin(self), host, port
                    )
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
        """A port for each static listener on port 0, the same in every worker.

        A static listener on a given port is probed first, bound without ``SO_REUSEPORT``:
        the workers bind with it, and would otherwise quietly share the port with any
        process of the same user already listening there."""
        chosen = []
        for config in self.built.listeners:
            host, port = config.address
            udp = config.protocol == "UDP"
            if not config.bind_to_port:
                chosen.append(0)
                continue
            if port != 0:
                try:
                    probe = bind_socket(
                        host, port, udp=udp, ipv4_compat=config.ipv4_compat, listen=False
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot bind '{host}:{port}': {exc.strerror}",
                        path=f"listener {config.name}",
                    ) from exc
                probe.close()
                chosen.append(0)
                continue
            try:
                # TCP: bound with SO_REUSEPORT, never listening — it holds the port and
                # takes no connections. UDP: probed only, a bound socket would take datagrams.
                sock = bind_socket(
                    host,
                    0,
                    reuse_port=not udp,
                    udp=udp,
                    ipv4_compat=config.ipv4_compat,
                    listen=False,
                )
            except OSError as exc:
                raise ConfigError(f"cannot bind '{host}:0': {exc.strerror}") from exc
            chosen.append(sock.getsockname()[1])
            if udp:
                sock.close()
            else:
                self._reserved.append(sock)
        return tuple(chosen)

    async def _keep(self, worker: Worker, *, task_status: trio.TaskStatus[Sequence[int]]) -> None:
        """Run ``worker`` and restart it whenever it dies, until the server drains."""
        first = True
        delay = 0.0
        try:
            while True:
                try:
                    ports = await self._spawn(worker)
                    if first:
                        task_status.started(ports)
                        first = False
                    await self._watch(worker)
                except Exception as exc:
                    if first:
                        if isinstance(exc, WorkerStartError):
                            raise
                        raise WorkerStartError(f"worker {worker.index}: {exc}") from exc
                    log.error("worker %d failed: %s", worker.index, exc, exc_info=exc)
                await self._reap(worker)
                self._bury(worker)
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
                await self._reap(worker)
                self._bury(worker)

    async def _spawn(self, worker: Worker) -> Sequence[int]:
        worker.cut_off = trio.Event()
        worker.started_at = time.monotonic()
        worker.process = None
        mine, theirs = socket.socketpair()
        try:
            worker.process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "trioproxy.workers",
                    "--fd",
                    str(theirs.fileno()),
                    "--main-pid",
                    str(os.getpid()),
                    "--drain-time",
                    str(self.options.drain_time),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        process = worker.process
        channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(mine)))
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
            "admin": self.admin_changes.targets(),
            "plugins": list(self.plugins),
        }
        try:
            with trio.fail_after(START_TIMEOUT):
                reply = await channel.request(start)
            if "error" in reply:
                raise WorkerStartError(str(reply["error"]))
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                channel.close()
                if isinstance(exc, WorkerStartError):
                    with trio.move_on_after(KILL_GRACE):
                        await process.wait()  # it exits 1 after saying why
                await self._reap(worker)
            if isinstance(exc, (ChannelClosed, trio.TooSlowError)):
                raise WorkerStartError(
                    f"worker {worker.index} did not start ({_exit_reason(worker)}): {exc}"
                ) from None
            raise
        # Serving: from now on admin requests and pings may ask it.
        worker.channel = channel
        worker.serving = True
        worker.state = str(reply.get("state", ""))
        worker.answered_at = trio.current_time()
        self._count_serving()
        log.info("worker %d started (pid %d)", worker.index, process.pid)
        if self._shutdown.is_set():
            await self.ask(worker, {"op": "shutdown"})  # started while the server drains
        return [int(p) for p in reply["ports"]]

    async def _watch(self, worker: Worker) -> None:
        """Until the worker's process exits: ping it, and stop it if it is cut off."""
        assert worker.process is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping, worker)
            nursery.start_soon(self._stop_when_cut_off, worker, worker.process)
            await worker.process.wait()
            nursery.cancel_scope.cancel()

    async def _ping(self, worker: Worker) -> None:
        """The liveness check, independent of admin traffic (``ask`` cuts off a silent one)."""
        while True:
            reply = await self.ask(worker, {"op": "state"})
            if reply is None:
                return
            await trio.sleep(PING_INTERVAL if worker.state == "LIVE" else PING_INTERVAL_STARTING)

    async def _stop_when_cut_off(self, worker: Worker, process: trio.Process) -> None:
        await worker.cut_off.wait()
        if self._shutdown.is_set():
            return  # draining: ``_drain`` gives it the drain time, then kills it
        process.terminate()
        await trio.sleep(KILL_GRACE)
        log.error(
            "worker %d still running %.0f s after SIGTERM: killing it", worker.index, KILL_GRACE
        )
        process.kill()

    async def _reap(self, worker: Worker) -> None:
        """Make sure the worker's process is gone (killed if need be) and reaped."""
        process = worker.process
        if process is None:
            return
        if process.returncode is None:
            process.kill()
        await process.wait()

    def _bury(self, worker: Worker) -> None:
        """Forget a dead worker's channel; keep its last counters in ``retired`` (at once,
        with no checkpoint: a merge sees them either in ``last`` or in ``retired``)."""
        self._cut_off(worker)
        worker.state = ""
        if worker.last is not None:
            self.retired = retire(self.retired, worker.last["stats"])
            worker.last = None

    def _cut_off(self, worker: Worker) -> None:
        """Ask nothing more of this worker (its channel, if any, is closed by ``ipc`` or
        ``ask``); ``_watch`` stops its process."""
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        worker.serving = False
        worker.cut_off.set()
        self._count_serving()

    def _count_serving(self) -> None:
        self.supervisor_stats.workers_serving.set(sum(w.serving for w in self.workers))

    # ------------------------------------------------------------------ asking workers

    async def ask(self, worker: Worker, message: dict[str, Any]) -> dict[str, Any] | None:
        """A worker's answer, or None if it is not serving or does not answer in time (a
        worker that does not, or whose channel breaks, is cut off: stopped and restarted).

        The request is shielded from the caller's cancellation (an admin client that hangs
        up) and bounded by its own deadline: cancelled half way, it would cost the channel."""
        channel = worker.channel
        if channel is None or not worker.running:
            return None
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    reply = await channel.request(message)
            except ChannelClosed as exc:
                if worker.channel is channel:
                    log.warning("worker %d: control channel closed (%s)", worker.index, exc)
                    self._cut_off(worker)
                return None
            except trio.TooSlowError:
                log.error(
                    "worker %d did not answer %s within %.0f s: stopping it",
                    worker.index,
                    message["op"],
                    REQUEST_TIMEOUT,
                )
                channel.close()
                if worker.channel is channel:
                    self._cut_off(worker)
                return None
        worker.answered_at = trio.current_time()
        if "state" in reply:
            worker.state = str(reply["state"])
        return reply

    async def ask_all(self, message: dict[str, Any]) -> list[tuple[Worker, dict[str, Any]]]:
        """The answers of every serving worker, in worker order."""
        answers: dict[int, dict[str, Any]] = {}

        async def one(worker: Worker) -> None:
            reply = await self.ask(worker, message)
            if reply is not None:
                answers[worker.index] = reply

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        return [(w, answers[w.index]) for w in self.workers if w.index in answers]

    async def refresh(self) -> None:
        """Bring every serving worker's ``last`` snapshot up to date: a snapshot round that
        starts after this call. Rounds run one at a time; callers that arrive during one
        share the next (a snapshot serialises a worker's whole store in its event loop)."""
        ticket = self._rounds_started + 1
        while self._rounds_done < ticket:
            if self._round_over is not None:
                await self._round_over.wait()
                continue
            self._rounds_started += 1
            number = self._rounds_started
            self._round_over = over = trio.Event()
            try:
                resets = self._resets
                for worker, reply in await self.ask_all({"op": "snapshot"}):
                    if "error" in reply:
                        log.error("worker %d: snapshot failed: %s", worker.index, reply["error"])
                    elif resets == self._resets:  # else it may predate a counter reset
                        worker.last = reply
                self._rounds_done = number
            finally:
                self._round_over = None
                over.set()

    def counters_reset(self) -> None:
        """``/reset_counters`` reached the workers: what the main remembers of them too."""
        self._resets += 1
        self.retired = {}
        for worker in self.workers:
            if worker.last is not None:
                worker.last = {**worker.last, "stats": reset(worker.last["stats"])}

    # ------------------------------------------------------------------ life cycle

    async def _wait_live(self) -> None:
        """LIVE once every worker is (its xDS initialised, as its pings say), unless
        draining by then."""
        while self.state == "INITIALIZING":
            if all(w.serving and w.state == "LIVE" for w in self.workers):
                self.state = "LIVE"
                self.stats.state.set(0)
                self.stats.live.set(1)
                return
            await trio.sleep(PING_INTERVAL_STARTING)

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

    async def _housekeeping(self) -> None:
        """Uptime every second; a stats snapshot every flush
        interval, so that a worker that dies loses at most that much of its counters."""
        interval = max(1.0, self.built.stats_flusher.interval)
        next_poll = trio.current_time() + interval
        while True:
            self.stats.uptime.set(int(time.time() - self.started_wall))
            if trio.current_time() >= next_poll:
                await self.refresh()
                next_poll = trio.current_time() + interval
            await trio.sleep(1.0)


def _exit_reason(worker: Worker) -> str:
    code = worker.process.returncode if worker.process is not None else None
    if code is None:
        return "still running" if worker.process is not None else "not started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-code}"
    return f"exit status {code}"
