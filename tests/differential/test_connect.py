"""HTTP/1.1 CONNECT through real Envoy 1.40 and trioproxy, side by side.

One proxy config with CONNECT enabled (``upgrade_configs`` on the connection manager) routes by
authority: ``term.example:443`` to a route that terminates CONNECT (``connect_config``) on an
echo server, ``fwd.example:443`` to one that forwards it to an upstream HTTP proxy,
``dead.example:443`` to a terminating route whose host refuses connections; anything else has
only a ``prefix: /`` route, which a CONNECT (no path) never matches. A second config enables
CONNECT nowhere. Each client speaks raw bytes and records everything it receives; the upstreams
record what reaches them. Compared: the clients' bytes (header order and ``date`` values
aside), the upstreams' transcripts (``x-request-id`` values masked), the access log lines and
the values of the stats listed below. The cases run in small groups, each through a fresh pair
of proxies, and each group also pins what Envoy does, so a change in Envoy shows up as such.
"""

from __future__ import annotations

import re
import socket
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from .harness import build_request, find_envoy, http_config, run_proxy, send_raw, static_cluster

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

LOG_FORMAT = (
    "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
    "%RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %ROUTE_NAME% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%\\n"
)


def config(*, enabled: bool, log_path: Path) -> str:
    """The proxy config (``{upstream_port}``: the echo server, ``{proxy_port}``: the upstream
    proxy, filled in by the test)."""
    terminate = "upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]"
    forward = """
- name: fwd
  domains: ["fwd.example:443"]
  routes:
  - name: forward
    match: {connect_matcher: {}}
    route: {cluster: proxy}"""
    vhosts = forward
    if enabled:
        vhosts = (
            f"""
- name: term
  domains: ["term.example:443"]
  routes:
  - name: tunnel
    match: {{connect_matcher: {{}}}}
    route: {{cluster: backend, {terminate}}}"""
            + forward
            + f"""
- name: dead
  domains: ["dead.example:443"]
  routes:
  - name: refused
    match: {{connect_matcher: {{}}}}
    route: {{cluster: dead, {terminate}}}"""
        )
    hcm = (
        ("upgrade_configs: [{upgrade_type: CONNECT}]\n" if enabled else "")
        + f"""
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {log_path}
    log_format: {{text_format_source: {{inline_string: "{LOG_FORMAT}"}}}}"""
    )
    return http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend}',
        hcm_extra=hcm,
        virtual_hosts=vhosts,
        clusters=static_cluster("proxy", "{proxy_port}") + static_cluster("dead", "1"),
    )


# -- the upstreams --------------------------------------------------------------------------


@attrs.define(eq=False)
class Upstreams:
    """The echo server (a terminated CONNECT's host) and the upstream HTTP proxy (which
    answers a forwarded CONNECT 200, then echoes), with what each saw, per connection."""

    log: list[str] = attrs.field(factory=list)

    async def echo(self, stream: trio.SocketStream) -> None:
        await self._echo(stream, f"echo{len(self.log)}")

    async def upstream_proxy(self, stream: trio.SocketStream) -> None:
        name = f"proxy{len(self.log)}"
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                self.log.append(f"{name} closed before a head")
                return
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        masked = re.sub(rb"x-request-id: [0-9a-f-]+", b"x-request-id: <id>", head)
        # header order is the proxies' own business: compare the request line and the set
        line, *fields = masked.decode().split("\r\n")
        self.log.append(f"{name} head {line} {sorted(fields)}")
        await stream.send_all(b"HTTP/1.1 200 OK\r\nx-up: 1\r\n\r\n")
        if rest:
            self.log.append(f"{name} got {rest!r}")
            await stream.send_all(rest)
        await self._echo(stream, name)

    async def _echo(self, stream: trio.SocketStream, name: str) -> None:
        self.log.append(f"{name} open")
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.log.append(f"{name} saw the end")
                    return
                self.log.append(f"{name} got {data!r}")
                if data.endswith(b"BYE\n"):
                    await stream.send_all(b"bye\n")
                    self.log.append(f"{name} closes")
                    return
                await stream.send_all(data)


# -- the client -----------------------------------------------------------------------------

Step = tuple[str, bytes]  # ("send", bytes) | ("shut", b"") — each followed by a read


async def converse(port: int, first: bytes, steps: list[Step]) -> list[bytes]:
    """Send ``first``, then each step; after each, what arrived within a short while (an
    ``<EOF>`` mark once the proxy closed). Dates are masked."""
    out = []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    closed = False

    async def read(expect_close: bool) -> bytes:
        nonlocal closed
        got = b""
        with trio.move_on_after(0.3) as wait:
            while not closed:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    closed = True
                    got += b"<EOF>"
                    break
                got += data
                if expect_close or b"\r\nconnection: close\r\n" in got:
                    # the close follows (Envoy's after its delayed-close second)
                    wait.deadline = trio.current_time() + 2.5
        return re.sub(rb"date: [^\r]+", b"date: <date>", got)

    await stream.send_all(first)
    out.append(await read(False))
    for kind, data in steps:
        if closed:
            break
        if kind == "send":
            await stream.send_all(data)
            out.append(await read(data.endswith(b"BYE\n")))
        else:
            stream.socket.shutdown(socket.SHUT_WR)
            out.append(await read(True))
    await stream.aclose()
    return out


CONNECT = "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n"


def connect(authority: str, extra: bytes = b"", host: str | None = None) -> bytes:
    return CONNECT.format(authority, host or authority).encode() + extra


Case = tuple[str, bytes, list[Step]]

TUNNELS: list[Case] = [
    (
        "terminated, bytes both ways, then the client closes",
        connect("term.example:443", b"early\n"),
        [("send", b"hello\n"), ("send", b"world\n")],
    ),
    (
        "terminated, the client half-closes",
        connect("term.example:443"),
        [("send", b"ping\n"), ("shut", b"")],
    ),
    ("terminated, the upstream closes", connect("term.example:443"), [("send", b"BYE\n")]),
    (
        "terminated, the target wins over Host",
        connect("term.example:443", host="other.example"),
        [("send", b"x\n")],
    ),
]
FORWARDED_AND_FAILED: list[Case] = [
    (
        "forwarded to an upstream proxy",
        connect("fwd.example:443", b"early\n"),
        [("send", b"hello\n")],
    ),
    ("terminated, the host refuses", connect("dead.example:443"), []),
    ("no CONNECT route", connect("other.example:443"), []),
]
NOT_CONFIGURED: list[Case] = [
    ("a connect_matcher route, CONNECT enabled nowhere", connect("fwd.example:443"), []),
    ("no CONNECT route", connect("other.example:443"), []),
]
MALFORMED: list[Case] = [
    ("no port", b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", []),
    ("a path", b"CONNECT /path HTTP/1.1\r\nHost: example.com\r\n\r\n", []),
    ("an absolute URL", b"CONNECT http://example.com:80/ HTTP/1.1\r\nHost: a\r\n\r\n", []),
    (
        "a body",
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
        [],
    ),
]

STATS = (
    "http.ingress_http.downstream_rq_total",
    "http.ingress_http.downstream_cx_protocol_error",
    "http.ingress_http.downstream_rq_2xx",
    "http.ingress_http.downstream_rq_4xx",
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.downstream_cx_upgrades_total",
    "http.ingress_http.downstream_cx_upgrades_active",
    "http.ingress_http.downstream_cx_destroy_remote_active_rq",
    "http.ingress_http.downstream_rq_rx_reset",
    "http.ingress_http.downstream_rq_response_before_rq_complete",
    "http.ingress_http.downstream_rq_ws_on_non_ws_route",
    "http.ingress_http.no_route",
    "http.ingress_http.rq_total",
    "cluster.backend.upstream_rq_total",
    "cluster.backend.upstream_rq_200",
    "cluster.backend.upstream_rq_pending_total",
    "cluster.backend.upstream_cx_total",
    "cluster.backend.upstream_cx_http1_total",
    "cluster.backend.upstream_cx_destroy_local_with_active_rq",
    "cluster.backend.upstream_cx_rx_bytes_total",
    "cluster.backend.upstream_cx_tx_bytes_total",
    "cluster.proxy.upstream_rq_total",
    "cluster.proxy.upstream_rq_200",
    "cluster.proxy.upstream_cx_http1_total",
    "cluster.proxy.upstream_cx_destroy_local_with_active_rq",
    "cluster.proxy.upstream_cx_rx_bytes_total",
    "cluster.proxy.upstream_cx_tx_bytes_total",
    "cluster.dead.upstream_rq_503",
    "cluster.dead.upstream_cx_connect_fail",
    "cluster.dead.upstream_rq_pending_failure_eject",
    "cluster.dead.upstream_rq_total",
)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@attrs.frozen
class Outcome:
    clients: list[list[bytes]]
    upstreams: list[str]
    access_log: list[str]
    stats: dict[str, int]


async def run(
    kind: str,
    cases: list[tuple[str, bytes, list[Step]]],
    *,
    enabled: bool,
    stat_names: tuple[str, ...],
) -> Outcome:
    """Run ``cases`` through ``kind``: what the clients and upstreams saw, the access log
    lines, and the values of ``stat_names``."""
    upstreams = Upstreams()
    with tempfile.TemporaryDirectory(prefix=f"connect-{kind}-") as tmp:
        log_path = Path(tmp) / "access.log"
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(partial(trio.serve_tcp, upstreams.echo, 0, host="127.0.0.1"))
            up = await nursery.start(
                partial(trio.serve_tcp, upstreams.upstream_proxy, 0, host="127.0.0.1")
            )
            template = config(enabled=enabled, log_path=log_path).replace(
                "{proxy_port}", str(up[0].socket.getsockname()[1])
            )
            async with run_proxy(kind, template, echo[0].socket.getsockname()[1]) as proxy:
                clients = []
                for _, first, steps in cases:
                    clients.append(await converse(proxy.listener_port, first, steps))
                    await trio.sleep(0.1)  # its end is logged before the next one's
                await trio.sleep(0.2)  # the last connection's end reaches the stats
                resp = await send_raw(proxy.admin_port, build_request("GET", "/stats", host="a"))
                stats = {}
                for line in resp.body.decode().splitlines():
                    name, _, value = line.partition(": ")
                    if name in stat_names:
                        stats[name] = int(value)
            # (read once the proxy has stopped: Envoy writes its access log lines out then)
            access_log = _lines(log_path)
            nursery.cancel_scope.cancel()
    return Outcome(clients, upstreams.log, access_log, {n: stats.get(n, 0) for n in stat_names})


def assert_same(
    envoy: Outcome, trioproxy: Outcome, cases: list[tuple[str, bytes, list[Step]]]
) -> None:
    for (name, _, _), e, t in zip(cases, envoy.clients, trioproxy.clients, strict=True):
        # header order aside, the same bytes
        assert _sorted_heads(e) == _sorted_heads(t), name
    assert sorted(envoy.upstreams) == sorted(trioproxy.upstreams)
    assert envoy.access_log == trioproxy.access_log
    assert envoy.stats == trioproxy.stats


def _sorted_heads(exchange: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in exchange:
        head, sep, rest = chunk.partition(b"\r\n\r\n")
        if sep and head.startswith(b"HTTP/1.1 "):
            line, *fields = head.split(b"\r\n")
            out.append((line, sorted(fields), rest))
        else:
            out.append(chunk)
    return out


def _pin_tunnels(envoy: Outcome) -> None:
    ok = b"HTTP/1.1 200 OK\r\ndate: <date>\r\nserver: envoy\r\n\r\n"
    assert envoy.clients == [
        [ok + b"early\n", b"hello\n", b"world\n"],
        [ok, b"ping\n", b"<EOF>"],  # a half-close closes both ways
        [ok, b"bye\n<EOF>"],
        [ok, b"x\n"],
    ]
    assert envoy.access_log == [
        "CONNECT term.example:443 - 200 DC downstream_remote_disconnect 18 18 backend tunnel -",
        "CONNECT term.example:443 - 200 DC downstream_remote_disconnect 5 5 backend tunnel -",
        "CONNECT term.example:443 - 200 - via_upstream 4 4 backend tunnel -",
        "CONNECT term.example:443 - 200 DC downstream_remote_disconnect 2 2 backend tunnel -",
    ]
    assert envoy.stats["cluster.backend.upstream_cx_destroy_local_with_active_rq"] == 4


def _pin_forwarded_and_failed(envoy: Outcome) -> None:
    assert envoy.clients[0][0].startswith(b"HTTP/1.1 200 OK\r\nx-up: 1\r\n")
    assert envoy.clients[0][0].endswith(b"\r\n\r\nearly\n")
    assert envoy.upstreams[0] == (
        "proxy0 head CONNECT fwd.example:443 HTTP/1.1 ['host: fwd.example:443', "
        "'x-envoy-expected-rq-timeout-ms: 15000', 'x-forwarded-proto: http', "
        "'x-request-id: <id>']"
    )
    assert envoy.clients[1][0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert envoy.clients[1][0].endswith(b"reset reason: remote connection failure<EOF>")
    assert envoy.clients[2][0].startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert envoy.access_log == [
        "CONNECT fwd.example:443 - 200 DC downstream_remote_disconnect 12 12 proxy forward -",
        "CONNECT dead.example:443 - 503 UF upstream_reset_before_response_started"
        "{remote_connection_failure|delayed_connect_error:_Connection_refused} 0 98 dead "
        "refused delayed_connect_error:_Connection_refused",
        "CONNECT other.example:443 - 404 NR route_not_found 0 0 - - -",
    ]


def _pin_not_configured(envoy: Outcome) -> None:
    assert envoy.clients[0][0].startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert envoy.clients[1][0].startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert envoy.access_log == [
        "CONNECT fwd.example:443 - 403 - upgrade_failed 0 0 proxy forward -",
        "CONNECT other.example:443 - 404 NR route_not_found 0 0 - - -",
    ]
    assert envoy.stats["http.ingress_http.downstream_rq_ws_on_non_ws_route"] == 1
    assert envoy.upstreams == []


def _pin_malformed(envoy: Outcome) -> None:
    for refused in envoy.clients:
        assert refused[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert refused[0].endswith(b"\r\n\r\nBad Request<EOF>")
    assert envoy.stats["http.ingress_http.downstream_cx_protocol_error"] == 4
    assert all(line.startswith("- - - 400 DPE http1.") for line in envoy.access_log)
    assert envoy.upstreams == []


#: name → (CONNECT enabled, cases, stats compared, the check of Envoy's own outcome). Each
#: group runs in its own pair of proxies, within a few seconds.
GROUPS: dict[str, tuple[bool, list[Case], tuple[str, ...], Callable[[Outcome], None]]] = {
    "tunnels": (True, TUNNELS, STATS, _pin_tunnels),
    "forwarded and failed": (True, FORWARDED_AND_FAILED, STATS, _pin_forwarded_and_failed),
    "not configured": (False, NOT_CONFIGURED, STATS, _pin_not_configured),
    "malformed": (False, MALFORMED, STATS, _pin_malformed),
}


@pytest.mark.parametrize("group", list(GROUPS))
async def test_connect_as_envoy_does(group: str) -> None:
    enabled, cases, stat_names, pin = GROUPS[group]
    kw = {"enabled": enabled, "stat_names": stat_names}
    envoy = await run("envoy", cases, **kw)  # type: ignore[arg-type]
    pin(envoy)  # what Envoy 1.40 does: a change in Envoy shows up here, as such
    trioproxy = await run("trioproxy", cases, **kw)  # type: ignore[arg-type]
    assert_same(envoy, trioproxy, cases)
