"""The admin endpoint of the main process: one view of every worker.

Each admin path is answered in one of four ways (``MainAdmin.respond``):

- merged: ``/stats`` (every format), ``/stats/prometheus``, ``/clusters``, ``/listeners`` ask
  every serving worker for a snapshot (``Supervisor.refresh``: one round at a time, shared by
  concurrent requests) and render the merge of each worker's latest snapshot — a worker that
  does not answer counts as last seen, a dead one by its retired counters — so merged
  counters never go backwards (``trioproxy.stats.merge``, ``trioproxy.workers.clusters``);
- main's own: ``/``, ``/help``, ``/server_info`` (``concurrency`` is N), ``/ready`` (200 while
  LIVE and every worker serves: ``Supervisor.is_ready``), ``/quitquitquit`` (drains every
  worker);
- broadcast: ``/reset_counters``, ``/healthcheck/fail|ok``, ``/runtime_modify`` and
  ``/logging?level=`` go to every worker (and the main); all but the counter reset are
  remembered (the last value of each, ``AdminChanges``) and given to a worker that starts
  later, before it binds;
- forwarded: anything else (``/config_dump``, ``/runtime``, ``/memory``, ``/certs``) is
  answered by the first serving worker: they hold the same config, runtime and secrets.

A worker that answers ``{"error": ...}`` (its handler raised) makes the request a 500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import trio

from trioproxy.admin.backend import ClusterView, ConfigDumpSources
from trioproxy.admin.server import TEXT, Response, handle, serve_admin
from trioproxy.admin.views import MUTATING
from trioproxy.admin_backend import server_info
from trioproxy.stats import Store
from trioproxy.stats.merge import merge
from trioproxy.workers.clusters import merge_clusters, merge_listeners

if TYPE_CHECKING:
    from trioproxy.workers.supervisor import Supervisor

MERGED = frozenset({"/stats", "/stats/prometheus", "/clusters", "/listeners"})
OWN = frozenset({"/", "/help", "/server_info", "/ready", "/quitquitquit"})
BROADCAST = frozenset(
    {"/reset_counters", "/healthcheck/fail", "/healthcheck/ok", "/runtime_modify"}
)
NOT_REPLAYED = frozenset({"/reset_counters"})


@attrs.define
class AdminChanges:
    """The admin changes a worker that starts later must be given: only the last value of
    each (a health-check verdict, a log level, each runtime key), so the list never grows
    past one entry per key however often they are changed."""

    healthcheck: str | None = None  # "/healthcheck/fail" or "/healthcheck/ok"
    log_level: str | None = None
    runtime: dict[str, str] = attrs.field(factory=dict)

    def record(self, target: str) -> None:
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if path in ("/healthcheck/fail", "/healthcheck/ok"):
            self.healthcheck = path
        elif path == "/logging" and "level" in params:
            self.log_level = params["level"]
        elif path == "/runtime_modify":
            for key, value in params.items():
                if value:
                    self.runtime[key] = value
                else:
                    self.runtime.pop(key, None)  # removed: a new worker never had it

    def targets(self) -> list[str]:
        """POST targets that reproduce the changes, in a fixed order."""
        out = []
        if self.healthcheck is not None:
            out.append(self.healthcheck)
        if self.log_level is not None:
            out.append("/logging?" + urlencode({"level": self.log_level}))
        if self.runtime:
            out.append("/runtime_modify?" + urlencode(self.runtime))
        return out


class MainBackend:
    """``AdminBackend`` of the main process; ``merged`` views when built for a request."""

    def __init__(
        self,
        supervisor: Supervisor,
        merged: Store | None = None,
        clusters: Sequence[ClusterView] = (),
        listeners: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.supervisor = supervisor
        self._merged = merged
        self._clusters = clusters
        self._listeners = listeners

    @property
    def stats(self) -> Store:
        return self._merged if self._merged is not None else self.supervisor.store

    def config_dump_sources(self) -> ConfigDumpSources:
        return ConfigDumpSources(self.supervisor.loaded.canonical, self.supervisor.started_wall)

    def clusters(self) -> Sequence[ClusterView]:
        return self._clusters

    def listeners(self) -> Sequence[tuple[str, str]]:
        return self._listeners

    def server_info(self) -> dict[str, Any]:
        s = self.supervisor
        return server_info(s.state, s.options, s.built.node, s.started_wall)

    def is_ready(self) -> bool:
        return self.supervisor.is_ready()

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.supervisor.healthcheck_failed = failed

    def request_shutdown(self) -> None:
        self.supervisor.request_shutdown()

    def reset_counters(self) -> None:
        self.supervisor.store.reset_counters()


class MainAdmin:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.backend = MainBackend(supervisor)

    async def respond(self, method: str, target: str) -> Response:
        path = urlsplit(target).path.rstrip("/") or "/"
        if path in MUTATING and method != "POST":
            return handle(self.backend, method, target)  # 405, as a single process answers
        if path in MERGED:
            return handle(await self.merged(), method, target)
        if path in OWN or (path == "/logging" and "?" not in target):
            return handle(self.backend, method, target)
        if path in BROADCAST or path == "/logging":
            return await self._broadcast(method, target, path)
        return await self._forward(method, target)

    async def merged(self) -> MainBackend:
        """A backend whose stats, clusters and listeners are every worker's, merged now."""
        s = self.supervisor
        await s.refresh()
        # From here to the merge, no checkpoint: a worker's counters are either in its
        # ``last`` or, once it has died and been buried, in ``retired`` — never both.
        snaps = [w.last for w in s.workers if w.last is not None]
        store = merge(s.store, [snap["stats"] for snap in snaps], s.retired)
        clusters = merge_clusters([snap["clusters"] for snap in snaps])
        listeners = merge_listeners([snap["listeners"] for snap in snaps])
        return MainBackend(s, store, clusters, listeners)

    async def _broadcast(self, method: str, target: str, path: str) -> Response:
        s = self.supervisor
        own = handle(self.backend, method, target)
        answers = await s.ask_all({"op": "admin", "method": method, "target": target})
        if path == "/reset_counters":
            s.counters_reset()
        response = _response(answers[0][1]) if answers else own
        if path not in NOT_REPLAYED and response[0] == 200:
            s.admin_changes.record(target)
        return response

    async def _forward(self, method: str, target: str) -> Response:
        s = self.supervisor
        for worker in s.workers:
            reply = await s.ask(worker, {"op": "admin", "method": method, "target": target})
            if reply is not None:
                return _response(reply)
        return 503, TEXT, "no worker is serving\n"


def _response(reply: Mapping[str, Any]) -> Response:
    """A worker's answer to an admin request as a response (500 if its handler raised)."""
    if "error" in reply:
        return 500, TEXT, f"worker error: {reply['error']}\n"
    return int(reply["status"]), str(reply["content_type"]), str(reply["body"])


async def serve_main_admin(
    admin: MainAdmin,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The bootstrap's admin endpoint, served by the main process."""
    await serve_admin(admin.backend, host, port, respond=admin.respond, task_status=task_status)
