"""The admin HTTP server: h11 over trio, one task per connection.

Theory of operation: ``serve_admin`` binds the address it is given, reports the bound port via
``task_status.started`` and serves until cancelled. Each request is parsed by h11, routed by path
through ``handle`` (a plain function of backend, method, path and query parameters returning
status, content type and body, so it is testable without sockets) and answered with Envoy's
admin headers. Mutating endpoints require POST and answer 405 to anything else, as Envoy does.
Not a hot path: clarity over speed.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from trioproxy import runtime
from trioproxy.admin.backend import AdminBackend
from trioproxy.admin.config_dump import ConfigDumpError, build_config_dump
from trioproxy.admin.views import (
    MUTATING,
    clusters_json,
    clusters_text,
    help_text,
    index_html,
    listeners_json,
    listeners_text,
)
from trioproxy.stats import Counter, Gauge, StatBlock
from trioproxy.stats.render import (
    QueryError,
    StatsQuery,
    render_json,
    render_prometheus,
    render_text,
)

log = logging.getLogger("trioproxy.admin")

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"
PROMETHEUS = "text/plain; charset=UTF-8"  # what Envoy 1.40 sends

Response = tuple[int, str, str]
#: Answers (method, target); by default ``handle`` over the backend. The main process of
#: ``--concurrency N`` gives its own, which merges or forwards to the workers.
Respond = Callable[[str, str], Awaitable[Response]]
_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
_PY_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50,
              "off": 100}  # fmt: skip
_MAX_REQUEST = 64 * 1024


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def _stats(backend: AdminBackend, params: Mapping[str, str], prometheus: bool) -> Response:
    try:
        q = StatsQuery.from_params(params)
    except QueryError as exc:
        return 400, TEXT, str(exc)
    if prometheus or params.get("format") == "prometheus":
        return 200, PROMETHEUS, render_prometheus(backend.stats, q)
    if params.get("format") == "json":
        return 200, JSON, render_json(backend.stats, q)
    return 200, TEXT, render_text(backend.stats, q)


def _logging(params: Mapping[str, str]) -> Response:
    if params:
        level = params.get("level")
        if level is None or level.lower() not in _LEVELS:
            return 400, TEXT, "error: unknown logger level\n"
        logging.getLogger("trioproxy").setLevel(_PY_LEVELS[level.lower()])
    root = logging.getLogger("trioproxy")
    names = sorted(
        n for n in logging.root.manager.loggerDict if n == "trioproxy" or n.startswith("trioproxy.")
    )
    lines = ["active loggers:"]
    for n in names:
        lvl = logging.getLevelName(logging.getLogger(n).getEffectiveLevel()).lower()
        lines.append(f"  {n}: {lvl}")
    if not names:
        lines.append(f"  trioproxy: {logging.getLevelName(root.getEffectiveLevel()).lower()}")
    return 200, TEXT, "\n".join(lines) + "\n"


def _memory() -> Response:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss_kb if sys.platform == "darwin" else rss_kb * 1024
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        pass
    body = {
        "allocated": str(rss),
        "heap_size": str(rss),
        "pageheap_unmapped": "0",
        "pageheap_free": "0",
        "total_thread_cache": "0",
        "total_physical_bytes": str(rss),
    }
    return 200, JSON, _dumps(body)


def handle(backend: AdminBackend, method: str, target: str) -> Response:
    """Route one admin request; returns (status, content type, body)."""
    parts = urlsplit(target)
    path = parts.path.rstrip("/") or "/"
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if path in MUTATING and method != "POST":
        return 405, TEXT, f"Method {method} not allowed, POST required."
    if path == "/":
        return 200, HTML, index_html()
    if path == "/help":
        return 200, TEXT, help_text()
    if path == "/stats":
        return _stats(backend, params, prometheus=False)
    if path == "/stats/prometheus":
        return _stats(backend, params, prometheus=True)
    if path == "/config_dump":
        try:
            body = build_config_dump(
                backend.config_dump_sources(),
                resource=params.get("resource") or None,
                mask=params.get("mask") or None,
                include_eds="include_eds" in params,
                name_regex=re.compile(params["name_regex"]) if params.get("name_regex") else None,
            )
        except ConfigDumpError as exc:
            return 404, TEXT, str(exc)
        except re.error as exc:
            return 400, TEXT, f"Error while parsing name_regex: {exc}"
        return 200, JSON, _dumps(body)
    if path == "/clusters":
        pattern = re.compile(params["filter"]) if params.get("filter") else None
        if params.get("format") == "json":
            return 200, JSON, clusters_json(backend.clusters(), pattern)
        return 200, TEXT, clusters_text(backend.clusters(), pattern)
    if path == "/listeners":
        if params.get("format") == "json":
            return 200, JSON, listeners_json(backend.listeners())
        return 200, TEXT, listeners_text(backend.listeners())
    if path == "/ready":
        state = str(backend.server_info().get("state", "LIVE"))
        return (200 if backend.is_ready() else 503), TEXT, state + "\n"
    if path == "/server_info":
        return 200, JSON, _dumps(backend.server_info())
    if path == "/healthcheck/fail":
        backend.set_healthcheck_failed(True)
        return 200, TEXT, "OK\n"
    if path == "/healthcheck/ok":
        backend.set_healthcheck_failed(False)
        return 200, TEXT, "OK\n"
    if path == "/reset_counters":
        backend.reset_counters()
        return 200, TEXT, "OK\n"
    if path == "/quitquitquit":
        backend.request_shutdown()
        return 200, TEXT, "OK\n"
    if path == "/logging":
        return _logging(params)
    if path == "/runtime_modify":
        if not params:
            return 400, TEXT, "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
        if not runtime.current().modify(dict(params)):
            return 503, TEXT, "No admin layer specified\n"
        return 200, TEXT, "OK\n"
    if path == "/runtime":
        return 200, JSON, _dumps(runtime.current().dump())
    if path == "/memory":
        return _memory()
    if path == "/certs":
        return 200, JSON, _dumps({"certificates": []})
    return 404, TEXT, "invalid path. " + help_text()


def _headers(content_type: str, length: int) -> list[tuple[str, str]]:
    return [
        ("content-type", content_type),
        ("cache-control", "no-cache, max-age=0"),
        ("x-content-type-options", "nosniff"),
        ("date", formatdate(usegmt=True)),
        ("server", "envoy"),
        ("content-length", str(length)),
    ]


class AdminStats(StatBlock):
    """``http.admin.*``: the admin endpoint counts its own traffic, as Envoy's does."""

    downstream_cx_total: Counter
    downstream_cx_http1_total: Counter
    downstream_cx_active: Gauge
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_active: Gauge
    downstream_rq_completed: Counter


class AdminListenerStats(StatBlock):
    """``listener.admin.*`` and ``listener.admin.main_thread.*``."""

    downstream_cx_total: Counter
    downstream_cx_active: Gauge


async def _serve_connection(
    backend: AdminBackend, respond: Respond, stream: trio.SocketStream
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    store = backend.stats
    st = AdminStats(store.scope("http.admin."))
    listener_stats = (
        AdminListenerStats(store.scope("listener.admin.")),
        AdminListenerStats(store.scope("listener.admin.main_thread.")),
    )
    for ls in listener_stats:
        ls.downstream_cx_total.value += 1
        ls.downstream_cx_active.value += 1
    st.downstream_cx_total.value += 1
    st.downstream_cx_http1_total.value += 1
    st.downstream_cx_active.value += 1
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                while True:  # discard any request body
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif not isinstance(ev, h11.Data):
                        return
                st.downstream_rq_total.value += 1
                st.downstream_rq_http1_total.value += 1
                st.downstream_rq_active.value += 1
                method = event.method.decode("ascii", "replace")
                target = event.target.decode("latin-1")
                try:
                    status, ctype, text = await respond(method, target)
                except Exception:
                    log.exception("admin handler failed for %s %s", method, target)
                    status, ctype, text = 500, TEXT, "internal error\n"
                body = text.encode("utf-8")
                head = h11.Response(
                    status_code=status,
                    headers=_headers(ctype, len(body)),
                    reason=HTTPStatus(status).phrase,
                )
                await stream.send_all(conn.send(head) or b"")
                if method != "HEAD":
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                st.downstream_rq_active.value -= 1
                st.downstream_rq_completed.value += 1
                store.counter(f"http.admin.downstream_rq_{status // 100}xx").value += 1
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        st.downstream_cx_active.value -= 1
        for ls in listener_stats:
            ls.downstream_cx_active.value -= 1
        await stream.aclose()


async def serve_admin(
    backend: AdminBackend,
    host: str,
    port: int,
    *,
    respond: Respond | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoint on ``host:port`` (0 picks a port) until cancelled.

    The admin's own traffic is counted in ``backend.stats``; requests are answered by
    ``respond`` when given, else by ``handle(backend, …)``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("admin address: %s:%d", host, bound)

    async def answer(method: str, target: str) -> Response:
        return handle(backend, method, target)

    async def one(stream: trio.SocketStream) -> None:
        await _serve_connection(backend, respond or answer, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, one, listeners)
        task_status.started(bound)
