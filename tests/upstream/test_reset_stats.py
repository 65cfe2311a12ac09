"""How an upstream request that fails is counted: the ``upstream_rq_*_reset`` and
``upstream_rq_pending_failure_eject`` counters by the reason the request ended, and the
``upstream_cx_destroy_*_with_active_rq`` counters of the connection it was on.

Each case runs a misbehaving upstream (raw HTTP/1.1, or HTTP/2 with the h2 package) behind an
in-process proxy and reads the counters from the admin ``/stats`` page. The expected values
are what Envoy 1.40 counts for the same config and upstream, measured side by side: an HTTP/2
stream is counted by its reset reason (the upstream reset it: rx; we reset it: tx; the
connection went away: pending failure eject); a failing HTTP/1.1 request counts none of
those, only the end of its connection.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio

from tests.support import Client, free_ports, simple_config, start_proxy
from tests.upstream.test_h2_upstream import H2_OPTIONS

ROUTES = """
              - match: {path: "/timeout"}
                route: {cluster: backend, timeout: 0.5s}
              - match: {path: "/per-try"}
                route:
                  cluster: backend
                  timeout: 5s
                  retry_policy: {retry_on: reset, num_retries: 0, per_try_timeout: 0.5s}
              - match: {prefix: "/"}
                route: {cluster: backend}"""

COUNTERS = (
    "upstream_rq_rx_reset",
    "upstream_rq_tx_reset",
    "upstream_rq_pending_failure_eject",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_protocol_error",
    "upstream_rq_timeout",
    "upstream_rq_per_try_timeout",
)
RX, TX, EJECT, LOCAL_ACTIVE, REMOTE_ACTIVE, PROTOCOL, TIMEOUT, PER_TRY = COUNTERS


async def _read_head(stream: trio.SocketStream) -> str:
    """The request's path, once its head is in ("" if the peer closed first)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return ""
        buf += data
    return buf.split(b" ", 2)[1].decode()


async def _drain(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


async def http1_upstream(stream: trio.SocketStream) -> None:
    """/close: closes after the request; /cut: 10 of 100 body bytes, then closes; /garbage:
    not a status line; anything else: never answers."""
    async with stream:
        try:
            path = await _read_head(stream)
            if path == "/close" or not path:
                return
            if path == "/cut":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
                await trio.sleep(0.1)
                return
            if path == "/garbage":
                await stream.send_all(b"garbage\r\n\r\n")
            await _drain(stream)
        except trio.BrokenResourceError:
            pass


async def http2_upstream(stream: trio.SocketStream) -> None:
    """/close: closes the connection on the request; /cut: a head and 10 of 100 body bytes,
    then RST_STREAM INTERNAL_ERROR; /reset: RST_STREAM INTERNAL_ERROR before any response;
    /garbage: an upper-case header name; anything else: never answers."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.initiate_connection()
    async with stream:
        try:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    sid = ev.stream_id
                    path = dict(ev.headers)[b":path"]
                    if path == b"/close":
                        return
                    if path == b"/cut":
                        conn.send_headers(sid, [(":status", "200"), ("content-length", "100")])
                        conn.send_data(sid, b"x" * 10)
                        await stream.send_all(conn.data_to_send())
                        await trio.sleep(0.1)
                        conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    elif path == b"/reset":
                        conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    elif path == b"/garbage":
                        conn.send_headers(sid, [(":status", "200"), ("X-Bad", "1")], True)
                await stream.send_all(conn.data_to_send())
        except trio.BrokenResourceError:
            pass


async def _request(port: int, path: str) -> str:
    """The status a client gets for ``path`` ("200 cut": a 200 whose body stopped short;
    for /gone the client closes before any answer)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: example.com\r\n\r\n".encode())
        if path == "/gone":
            await trio.sleep(0.3)
            return "-"
        buf = b""
        with trio.fail_after(5):
            while True:
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep and b"content-length: " in head.lower():
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    break
                buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        return (
            status + " cut"
            if b"content-length: 100" in head.lower() and len(body) < 100
            else status
        )


async def _cluster_counters(admin_port: int) -> dict[str, int]:
    """The counters above, as the admin ``/stats`` page shows them."""
    admin = await Client.connect(admin_port)
    try:
        _, text = await admin.request("GET", "/stats")
    finally:
        await admin.aclose()
    values = {}
    for line in text.decode().splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.backend."):
            values[name.removeprefix("cluster.backend.")] = value
    return {name: int(values.get(name, "0")) for name in COUNTERS}


# (path, status the client gets, the counters that move) for each upstream protocol, as
# Envoy 1.40 answers and counts (side by side, same config and upstream)
HTTP1_CASES = [
    ("/close", "503", {REMOTE_ACTIVE: 1}),
    ("/cut", "200 cut", {REMOTE_ACTIVE: 1, PROTOCOL: 1}),
    ("/garbage", "502", {LOCAL_ACTIVE: 1, PROTOCOL: 1}),
    ("/gone", "-", {LOCAL_ACTIVE: 1}),
    ("/timeout", "504", {LOCAL_ACTIVE: 1, TIMEOUT: 1}),
    ("/per-try", "504", {LOCAL_ACTIVE: 1, PER_TRY: 1}),
    ("refused", "503", {EJECT: 1}),
]
HTTP2_CASES = [
    ("/close", "503", {EJECT: 1, REMOTE_ACTIVE: 1}),
    ("/cut", "200 cut", {RX: 1}),
    ("/reset", "503", {RX: 1}),
    ("/garbage", "502", {TX: 1, PROTOCOL: 1}),
    ("/gone", "-", {TX: 1}),
    ("/timeout", "504", {TX: 1, TIMEOUT: 1}),
    ("/per-try", "504", {TX: 1, PER_TRY: 1}),
    ("refused", "503", {EJECT: 1}),
]


@pytest.mark.parametrize(
    ("protocol", "path", "status", "moved"),
    [("http1", *case) for case in HTTP1_CASES] + [("http2", *case) for case in HTTP2_CASES],
    ids=[f"http1-{c[0].strip('/')}" for c in HTTP1_CASES]
    + [f"http2-{c[0].strip('/')}" for c in HTTP2_CASES],
)
async def test_failed_upstream_requests_are_counted_as_envoy_counts_them(
    nursery: trio.Nursery, protocol: str, path: str, status: str, moved: dict[str, int]
) -> None:
    if path == "refused":  # nothing listens: the connect fails
        (port,) = free_ports(1)
        path = "/"
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        handler = http1_upstream if protocol == "http1" else http2_upstream
        nursery.start_soon(trio.serve_listeners, handler, listeners)
    extra = H2_OPTIONS if protocol == "http2" else ""
    proxy = await start_proxy(nursery, simple_config([port], routes=ROUTES, cluster_extra=extra))
    assert await _request(proxy.port, path) == status
    expected = {name: moved.get(name, 0) for name in COUNTERS}
    counters: dict[str, int] = {}
    with trio.move_on_after(3):  # the connection's end is counted once it is noticed
        while (counters := await _cluster_counters(proxy.admin_port)) != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert counters == expected
    await trio.sleep(0.2)  # and nothing is counted twice
    assert await _cluster_counters(proxy.admin_port) == expected
