"""Test support: a scriptable HTTP/1.1 backend, an in-process proxy, and a raw client.

These are real parts on 127.0.0.1 (real sockets, h11 as an independent HTTP implementation),
not mocks of trioproxy's own code.
"""

from __future__ import annotations

import os
import random
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import h11
import trio

from trioproxy.config import load_bootstrap
from trioproxy.registry import build_registry
from trioproxy.server import Options, Server


@attrs.define
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = attrs.field(factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@attrs.define
class Reply:
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | Sequence[bytes] = b"ok"
    delay: float = 0.0
    chunked: bool = False
    close: bool = False


Handler = Callable[[Recorded], Awaitable[Reply] | Reply]


@attrs.define(eq=False)
class Backend:
    """An HTTP/1.1 server on 127.0.0.1 that records requests and answers with a script."""

    handler: Handler | None = None
    requests: list[Recorded] = attrs.field(factory=list)
    connections: int = 0
    port: int = 0
    name: str = "backend"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await _next(conn, stream)
                if not isinstance(req, h11.Request):
                    return
                body = b""
                trailers: list[tuple[str, str]] = []
                while True:
                    ev = await _next(conn, stream)
                    if isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        trailers = [(k.decode(), v.decode()) for k, v in ev.headers]
                        break
                    else:
                        return
                rec = Recorded(
                    req.method.decode(),
                    req.target.decode(),
                    [(k.decode(), v.decode("latin-1")) for k, v in req.headers],
                    body,
                    trailers,
                )
                self.requests.append(rec)
                reply = Reply(body=f"{self.name}".encode())
                if self.handler is not None:
                    r = self.handler(rec)
                    reply = await r if not isinstance(r, Reply) else r  # type: ignore[misc]
                if reply.delay:
                    await trio.sleep(reply.delay)
                chunks = [reply.body] if isinstance(reply.body, bytes) else list(reply.body)
                headers = list(reply.headers)
                if reply.chunked:
                    headers.append(("transfer-encoding", "chunked"))
                else:
                    headers.append(("content-length", str(sum(len(c) for c in chunks))))
                if reply.close:
                    headers.append(("connection", "close"))
                await stream.send_all(
                    conn.send(h11.Response(status_code=reply.status, headers=headers))
                )
                for c in chunks if rec.method != "HEAD" else ():  # HEAD: the length only
                    await stream.send_all(conn.send(h11.Data(data=c)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE or reply.close:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return ev


@attrs.define(eq=False)
class Proxy:
    server: Server
    ports: list[int]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def admin_port(self) -> int:
        assert self.server.admin_port is not None
        return self.server.admin_port

    def stat(self, name: str) -> int:
        for c in self.server.store.counters():
            if c.name == name:
                return c.value
        for g in self.server.store.gauges():
            if g.name == name:
                return g.value
        raise KeyError(name)


async def start_proxy(
    nursery: trio.Nursery, yaml_text: str, *, plugins: Sequence[object] = (), **options: Any
) -> Proxy:
    registry = build_registry(extra=plugins)
    loaded = load_bootstrap(
        yaml_text=textwrap.dedent(yaml_text), opaque_types=registry.opaque_types()
    )
    server = Server(loaded, Options(**options), registry)
    ports = await nursery.start(server.run)
    return Proxy(server, list(ports))


HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def file_access_log(path: object, fmt: str) -> str:
    """The connection manager's ``access_log``: one file logger writing a ``fmt`` line per
    request to ``path`` (for ``simple_config(hcm_extra=...)``)."""
    return f"""
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {path}
    log_format: {{text_format_source: {{inline_string: "{fmt}\\n"}}}}
"""


def simple_config(
    upstream_ports: Sequence[int],
    *,
    routes: str = "",
    http_filters: str = "",
    hcm_extra: str = "",
    cluster_extra: str = "",
    admin: bool = True,
) -> str:
    """A one-listener, one-cluster config; ``routes`` replaces the default `/` route."""
    endpoints = "\n".join(
        f"""
            - endpoint:
                address:
                  socket_address: {{address: 127.0.0.1, port_value: {p}}}"""
        for p in upstream_ports
    )
    routes = (
        routes
        or """
              - match: {prefix: "/"}
                route: {cluster: backend}"""
    )
    admin_block = (
        """
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: 0}"""
        if admin
        else ""
    )
    return f"""
static_resources:
  listeners:
  - name: main
    address:
      socket_address: {{address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
{textwrap.indent(textwrap.dedent(hcm_extra), " " * 10)}
          http_filters:
{textwrap.indent(textwrap.dedent(http_filters), " " * 10)}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
  clusters:
  - name: backend
    type: STATIC
    lb_policy: ROUND_ROBIN
{textwrap.indent(textwrap.dedent(cluster_extra), " " * 4)}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:{endpoints}
{admin_block}
"""


async def raw_exchange(
    port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0
) -> bytes:
    """Send raw bytes, return everything received until the peer closes (or timeout)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    with trio.move_on_after(timeout):
        await stream.send_all(data)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
    await stream.aclose()
    return out


class RawRequests:
    """HTTP/1.1 requests read one at a time off a raw connection, for the tests' hand-written
    (misbehaving) upstreams: the head, and with ``body`` its content-length body."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self, *, body: bool = True) -> bytes | None:
        """The next request's head (up to its blank line), or None once the peer closed."""
        while b"\r\n\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if body:
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(self.buf) < length:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.buf += data
            self.buf = self.buf[length:]
        return head


class Client:
    """A keep-alive HTTP/1.1 client over one connection (h11, independent of our codec)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> tuple[h11.Response, bytes]:
        hdrs = [("host", "example.com"), *headers]
        if body is not None and not any(k.lower() == "content-length" for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        )
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        resp = await _next(self.conn, self.stream)
        data = b""
        while True:
            ev = await _next(self.conn, self.stream)
            if isinstance(ev, h11.Data):
                data += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return resp, data

    async def aclose(self) -> None:
        await self.stream.aclose()


def header(resp: h11.Response, name: str) -> str | None:
    for k, v in resp.headers:
        if k.decode() == name:
            return v.decode("latin-1")
    return None


async def body_chunks(parts: Sequence[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    for p in parts:
        if delay:
            await trio.sleep(delay)
        yield p


_handed_out: list[int] = []  # recent answers, not given again (the kernel may reoffer them)


async def until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll a condition with no event to wait on (stats, records, another process)."""
    with trio.fail_after(timeout):
        while not pred():  # noqa: ASYNC110
            await trio.sleep(0.01)


def _port_range() -> range:
    """Where this test process picks the ports it writes into configs: below the kernel's
    ephemeral range (so no outgoing connection, ours or another process's, can take one
    between the pick and the bind), a slice of its own per pytest-xdist worker (so parallel
    workers never pick the same one). Empty when the ephemeral range leaves no room."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    first = 20000  # (above the fixed ports the demos and examples use)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    span = (low - first) // count
    if span < 100:
        return range(0)
    return range(first + index * span, first + (index + 1) * span)


_PORTS = _port_range()


def free_ports(n: int) -> list[int]:
    """Ports that were free a moment ago (for configs and processes that need them written);
    distinct, none handed out by a recent call, and out of the way of the kernel's own
    picks and of other test workers (``_port_range``)."""
    ports: list[int] = []
    tries = 0
    while len(ports) < n:
        tries += 1
        # (no room below the ephemeral range, or no luck: the kernel picks)
        port = random.choice(_PORTS) if _PORTS and tries < 1000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _handed_out and port not in ports:
            ports.append(port)
    _handed_out.extend(ports)
    del _handed_out[:-256]
    return ports


def wait_port(port: int, deadline: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts on ``host``:``port`` (a process finished starting)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")
