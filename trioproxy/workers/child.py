"""A worker process: a full ``Server`` that takes its config from the main process.

The main process starts ``python -m trioproxy.workers --fd N --main-pid P`` with its end of a
socketpair as fd N and sends one ``start`` message: the canonical bootstrap (the snapshot the
main loaded and validated), the server ``Options``, the log level, the modules of plugins the
main was given beyond the entry points (``plugins``) and the admin changes made
so far (``admin``: ``/healthcheck/fail``, ``/runtime_modify``, ``/logging`` targets, applied
before any listener is bound, so a restarted worker never serves without them). The worker
builds a ``Server`` from it — listeners bound with ``SO_REUSEPORT``, no admin endpoint of its
own — answers with its bound ports, then serves control requests until the server has drained:

- ``state``: the server state alone (the main's liveness ping, cheap);
- ``snapshot``: state, stats (``trioproxy.stats.merge.snapshot``), clusters and listeners;
- ``admin``: an admin request answered by this worker alone (``trioproxy.admin.server.handle``);
- ``shutdown``: drain and exit, as SIGTERM does.

A request that fails is answered ``{"error": ...}`` (the main answers 500) and the worker
serves on. If the main process goes away — the channel reaches end of stream, or, on Linux,
the kernel's parent-death signal (``watch_main``) — the worker drains and exits, whether or
not its xDS has initialised: a worker never outlives its main process by more than the drain
time (and is killed ``KILL_GRACE`` seconds past it if its loop is stuck).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import trio

from trioproxy import runtime
from trioproxy.admin.server import handle
from trioproxy.admin_backend import ServerAdminBackend
from trioproxy.config import Document, LoadedConfig
from trioproxy.errors import ConfigError, config_error_in
from trioproxy.registry import build_registry
from trioproxy.server import Options, Server
from trioproxy.stats.merge import snapshot
from trioproxy.workers.clusters import cluster_records
from trioproxy.workers.ipc import Channel, ChannelClosed

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(levelname)s][%(name)s][worker {index} pid {pid}] %(message)s"


def options_message(options: Options) -> dict[str, Any]:
    """``Options`` as JSON-able data (``options_from_message`` reads it back)."""
    return {
        "service_cluster": options.service_cluster,
        "service_node": options.service_node,
        "service_zone": options.service_zone,
        "concurrency": options.concurrency,
        "drain_time": options.drain_time,
        "park_after": options.park_after,
        "h1_codec": options.h1_codec,
        "command_line": list(options.command_line),
        "config_path": options.config_path,
        "worker_index": options.worker_index,
        "reuse_port": options.reuse_port,
        "serve_admin": options.serve_admin,
        "static_ports": list(options.static_ports),
    }


def options_from_message(data: Mapping[str, Any]) -> Options:
    h1_codec = data.get("h1_codec")
    return Options(
        service_cluster=str(data["service_cluster"]),
        service_node=str(data["service_node"]),
        service_zone=str(data["service_zone"]),
        concurrency=int(data["concurrency"]),
        drain_time=float(data["drain_time"]),
        park_after=float(data["park_after"]),
        h1_codec=None if h1_codec is None else str(h1_codec),
        command_line=tuple(str(a) for a in data["command_line"]),
        config_path=str(data["config_path"]),
        worker_index=int(data["worker_index"]),
        reuse_port=bool(data["reuse_port"]),
        serve_admin=bool(data["serve_admin"]),
        static_ports=tuple(int(p) for p in data["static_ports"]),
    )


KILL_GRACE = 5.0  # past the drain time, before a worker whose main is gone kills itself
_PR_SET_PDEATHSIG = 1
_PARENT_DEATH_SIGNAL = signal.SIGUSR2


def watch_main(main_pid: int, drain_time: float) -> None:
    """On Linux, ask the kernel for a signal when the main process dies (``PR_SET_PDEATHSIG``);
    elsewhere a no-op (the control channel's end of stream still tells).

    The kernel sends it when the *thread* that started this process exits — trio starts
    processes from a worker thread, which exits when idle — so the handler first checks that
    the main process really is gone (``getppid`` changed); if so it raises SIGTERM, which the
    server takes as a shutdown, and arms a timer that kills the process if it has not
    drained ``KILL_GRACE`` seconds after the drain time."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask for a signal when the main process dies: %s", exc)
        return

    def parent_died(signum: int, frame: FrameType | None) -> None:
        if os.getppid() == main_pid:
            return  # only the thread that started us exited
        timer = threading.Timer(drain_time + KILL_GRACE, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(_PARENT_DEATH_SIGNAL, parent_died)
    if os.getppid() != main_pid:
        parent_died(int(_PARENT_DEATH_SIGNAL), None)  # gone before we asked


async def run_worker(channel: Channel) -> int:
    """Serve as a worker until drained; the process's exit status."""
    start = await channel.receive()
    options = options_from_message(start["options"])
    logging.basicConfig(
        level=int(start.get("log_level", logging.INFO)),
        format=LOG_FORMAT.format(index=options.worker_index, pid=os.getpid()),
        stream=sys.stderr,
        force=True,
    )
    canonical = start["canonical"]
    source = str(start.get("source", ""))
    loaded = LoadedConfig(canonical, Document(canonical, None, source), source)
    try:
        plugins = [importlib.import_module(str(name)) for name in start.get("plugins", ())]
        server = Server(loaded, options, build_registry(extra=plugins))
    except (ConfigError, OSError, ImportError) as exc:
        await channel.send({"error": str(exc)})
        return 1
    _apply_admin_changes(server, [str(t) for t in start.get("admin", ())])
    async with trio.open_nursery() as nursery:
        try:
            ports = await nursery.start(_serve, server, nursery.cancel_scope)
        except Exception as exc:
            error = config_error_in(exc)  # a listener that cannot bind, within a group
            if error is None:
                raise
            await channel.send({"error": str(error)})
            return 1
        await channel.send({"ports": list(ports), "pid": os.getpid(), "state": server.state})
        nursery.start_soon(_control, server, channel)
    return 0


async def _serve(
    server: Server, done: trio.CancelScope, *, task_status: trio.TaskStatus[Sequence[int]]
) -> None:
    await server.run(task_status=task_status)
    done.cancel()  # drained: stop answering the main process too


def _apply_admin_changes(server: Server, targets: Sequence[str]) -> None:
    """The admin changes the main process was asked for before this worker started, applied
    before any listener is bound (``runtime_modify`` acts on the installed runtime, which
    ``Server.run`` would install next)."""
    if not targets:
        return
    runtime.install(server.built.runtime)
    backend = ServerAdminBackend(server)
    for target in targets:
        status, _, body = handle(backend, "POST", target)
        if status != 200:
            log.warning("admin change %s not applied: %d %s", target, status, body.strip())


async def _control(server: Server, channel: Channel) -> None:
    backend = ServerAdminBackend(server)
    try:
        while True:
            message = await channel.receive()
            try:
                reply = answer(server, backend, message)
            except Exception as exc:
                log.exception("control request %r failed", message.get("op"))
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            await channel.send(reply)
    except ChannelClosed:
        if server.state != "DRAINING":
            log.warning("the main process is gone: draining")
        server.request_shutdown()


def answer(server: Server, backend: ServerAdminBackend, message: Mapping[str, Any]) -> Any:
    op = message.get("op")
    if op == "state":
        return {"state": server.state}
    if op == "snapshot":
        return {
            "state": server.state,
            "stats": snapshot(server.store),
            "clusters": cluster_records(server.cluster_manager.clusters.values()),
            "listeners": [list(pair) for pair in backend.listeners()],
        }
    if op == "admin":
        status, content_type, body = handle(backend, message["method"], message["target"])
        return {"status": status, "content_type": content_type, "body": body}
    if op == "shutdown":
        server.request_shutdown()
        return {"ok": True}
    return {"error": f"unknown operation {op!r}"}
