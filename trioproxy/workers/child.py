"""A worker process: a full ``Server`` that takes its config from the main process.

The main process starts ``python -m trioproxy.workers --fd N`` with its end of a socketpair
as fd N and sends one ``start`` message: the canonical bootstrap (the snapshot the main
loaded and validated), the server ``Options`` and the log level. The worker builds a
``Server`` from it — listeners bound with ``SO_REUSEPORT``, no admin endpoint of its own —
answers with its bound ports, then serves control requests until the server has drained:

- ``snapshot``: state, stats (``trioproxy.stats.merge.snapshot``), clusters and listeners;
- ``admin``: an admin request answered by this worker alone (``trioproxy.admin.server.handle``);
- ``shutdown``: drain and exit, as SIGTERM does.

If the main process goes away (the channel reaches end of stream), the worker drains and
exits: a worker never outlives its main process by more than the drain time.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from trioproxy.admin.server import handle
from trioproxy.admin_backend import ServerAdminBackend
from trioproxy.config import Document, LoadedConfig
from trioproxy.errors import ConfigError, config_error_in
from trioproxy.server import Options, Server
from trioproxy.stats.merge import snapshot
from trioproxy.workers.clusters import cluster_records
from trioproxy.workers.ipc import Channel, ChannelClosed

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(levelname)s][%(name)s][worker {index} pid {pid}] %(message)s"


def options_message(options: Options) -> dict[str, Any]:
    """``Options`` as JSON-able data (``options_from_message`` reads it back)."""
    return attrs.asdict(options)


def options_from_message(data: Mapping[str, Any]) -> Options:
    fields = dict(data)
    for name in ("command_line", "static_ports"):
        fields[name] = tuple(fields.get(name, ()))
    return Options(**fields)


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
        server = Server(loaded, options)
    except (ConfigError, OSError) as exc:
        await channel.send({"error": str(exc)})
        return 1
    async with trio.open_nursery() as nursery:
        try:
            ports = await nursery.start(_serve, server, nursery.cancel_scope)
        except Exception as exc:
            error = config_error_in(exc)  # a listener that cannot bind, within a group
            if error is None:
                raise
            await channel.send({"error": str(error)})
            return 1
        await channel.send({"ports": list(ports), "pid": os.getpid()})
        nursery.start_soon(_control, server, channel)
    return 0


async def _serve(
    server: Server, done: trio.CancelScope, *, task_status: trio.TaskStatus[Sequence[int]]
) -> None:
    await server.run(task_status=task_status)
    done.cancel()  # drained: stop answering the main process too


async def _control(server: Server, channel: Channel) -> None:
    backend = ServerAdminBackend(server)
    try:
        while True:
            message = await channel.receive()
            await channel.send(answer(server, backend, message))
    except ChannelClosed:
        if server.state != "DRAINING":
            log.warning("the main process is gone: draining")
        server.request_shutdown()


def answer(server: Server, backend: ServerAdminBackend, message: Mapping[str, Any]) -> Any:
    op = message.get("op")
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
