"""The HTTP/1.1 data path end to end: client → trioproxy → backend, over real sockets."""

from __future__ import annotations

import functools
import re
import socket

import pytest
import trio
import trio.testing

from tests.support import (
    Backend,
    Client,
    Handler,
    Reply,
    header,
    raw_exchange,
    simple_config,
    start_proxy,
    until,
)


async def _setup(nursery: trio.Nursery, backends: int = 1, **kw: object):  # type: ignore[no-untyped-def]
    bs = [Backend(name=f"b{i}") for i in range(backends)]
    for b in bs:
        await nursery.start(b.serve)
    proxy = await start_proxy(nursery, simple_config([b.port for b in bs], **kw))  # type: ignore[arg-type]
    return bs, proxy


async def test_get_is_proxied_with_envoy_headers(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    client = await Client.connect(proxy.port)
    resp, body = await client.request(
        "GET", "/hello?x=1", [("connection", "keep-alive, x-drop"), ("x-drop", "1")]
    )
    assert resp.status_code == 200
    assert body == b"b0"
    assert header(resp, "server") == "envoy"
    assert header(resp, "x-envoy-upstream-service-time") is not None
    rec = backend.requests[0]
    assert rec.target == "/hello?x=1"
    assert rec.header("host") == "example.com"
    assert rec.header("x-forwarded-proto") == "http"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        rec.header("x-request-id") or "",
    )
    assert rec.header("x-envoy-expected-rq-timeout-ms") == "15000"
    assert rec.header("connection") is None  # hop-by-hop headers never cross
    assert rec.header("keep-alive") is None
    assert proxy.stat("cluster.backend.upstream_rq_total") == 1
    assert proxy.stat("cluster.backend.upstream_rq_200") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 1
    await client.aclose()


async def test_keep_alive_reuses_one_upstream_connection(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    client = await Client.connect(proxy.port)
    for _ in range(5):
        resp, _ = await client.request("GET", "/")
        assert resp.status_code == 200
    assert backend.connections == 1
    assert proxy.stat("cluster.backend.upstream_cx_total") == 1
    assert proxy.stat("http.ingress_http.downstream_cx_total") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_total") == 5
    await client.aclose()


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.handler = lambda r: Reply(body=r.target.encode(), delay=0.05 if r.target == "/1" else 0)
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    req = b"".join(
        (f"GET /{i} HTTP/1.1\r\nhost: a\r\n" + ("connection: close" if i == 3 else "x: y")).encode()
        + b"\r\n\r\n"
        for i in (1, 2, 3)
    )
    out = await raw_exchange(proxy.port, req)
    bodies = re.findall(rb"\r\n\r\n(/\d)", out)
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_request_bodies_stream_both_framings(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.handler = lambda r: Reply(body=[r.body[:3], r.body[3:]], chunked=True)
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    client = await Client.connect(proxy.port)
    resp, body = await client.request("POST", "/upload", body=b"hello world")
    assert resp.status_code == 200 and body == b"hello world"
    assert backend.requests[-1].header("content-length") == "11"
    # chunked request with trailers
    raw = (
        b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nte: trailers\r\n"
        b"connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-check: 42\r\n\r\n"
    )
    out = await raw_exchange(proxy.port, raw)
    assert out.startswith(b"HTTP/1.1 200")
    rec = backend.requests[-1]
    assert rec.body == b"hello world"
    assert rec.header("transfer-encoding") == "chunked"
    assert rec.trailers == [("x-check", "42")]
    await client.aclose()


async def test_expect_100_continue_is_answered_by_the_proxy(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(
        b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    )
    first = await stream.receive_some(1024)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n")
    await stream.send_all(b"data")
    rest = b""
    while b"b0" not in rest:
        rest += await stream.receive_some(1024)
    assert rest.startswith(b"HTTP/1.1 200")
    assert backend.requests[0].body == b"data"
    assert backend.requests[0].header("expect") is None
    await stream.aclose()


async def test_no_route_is_404_with_flag_and_stat(nursery: trio.Nursery) -> None:
    routes = """
              - match: {prefix: "/service"}
                route: {cluster: backend}"""
    (backend,), proxy = await _setup(nursery, routes=routes)
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/other")
    assert resp.status_code == 404 and body == b""
    resp, _ = await client.request("GET", "/service/x")  # the connection lives on
    assert resp.status_code == 200
    assert proxy.stat("http.ingress_http.no_route") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_4xx") == 1
    await client.aclose()


async def test_upstream_down_is_503_uf(nursery: trio.Nursery) -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    dead_port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    proxy = await start_proxy(nursery, simple_config([dead_port]))
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/")
    assert resp.status_code == 503
    assert body.startswith(b"upstream connect error or disconnect/reset before headers")
    assert proxy.stat("cluster.backend.upstream_cx_connect_fail") == 1
    await client.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
    ],
    ids=["not-http", "header-without-colon", "bad-content-length"],
)
async def test_a_response_that_breaks_http1_is_502_upe(
    nursery: trio.Nursery, answer: bytes
) -> None:
    """An upstream answering something that is not HTTP/1.1 gets the client a 502 (not the
    503 of a reset), counted in ``upstream_cx_protocol_error``: Envoy 1.40, side by side,
    answers and counts the same. The client's connection serves the next request."""

    async def broken(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(answer)
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), broken, 0)
    proxy = await start_proxy(nursery, simple_config([listeners[0].socket.getsockname()[1]]))
    client = await Client.connect(proxy.port)
    for _ in range(2):
        resp, body = await client.request("GET", "/")
        assert resp.status_code == 502
        assert body == (
            b"upstream connect error or disconnect/reset before headers. reset reason: "
            b"protocol error"
        )
    assert proxy.stat("cluster.backend.upstream_cx_protocol_error") == 2
    assert proxy.stat("cluster.backend.upstream_rq_502") == 2
    assert proxy.stat("http.ingress_http.downstream_rq_5xx") == 2
    await client.aclose()


async def test_route_timeout_is_504(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.handler = lambda r: Reply(delay=2.0)
    await nursery.start(backend.serve)
    routes = """
              - match: {prefix: "/"}
                route: {cluster: backend, timeout: 0.2s}"""
    proxy = await start_proxy(nursery, simple_config([backend.port], routes=routes))
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/")
    assert resp.status_code == 504 and body == b"upstream request timeout"
    assert proxy.stat("cluster.backend.upstream_rq_timeout") == 1
    await client.aclose()


async def test_oversized_headers_get_431_and_close(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    big = b"x-big: " + b"a" * (61 * 1024) + b"\r\n"
    out = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nhost: a\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    assert backend.requests == []
    many = b"".join(f"x-h{i}: v\r\n".encode() for i in range(101))
    out = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nhost: a\r\n" + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("delay", ["0.3s", "0s"])
async def test_after_an_error_answer_the_proxy_waits_for_the_client_to_close(
    nursery: trio.Nursery, delay: str
) -> None:
    """As Envoy's delayed_close_timeout: the client may close first (counted a remote
    close) until the timeout closes it (a local close); 0 closes at once. The proxy's side
    is half-closed at once, so a client reading to the end is not kept waiting."""
    (backend,), proxy = await _setup(nursery, hcm_extra=f"delayed_close_timeout: {delay}")
    for closes_first in (True, False):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\nbad name: 1\r\n\r\n")
        out = b""
        with trio.fail_after(0.25):
            while chunk := await stream.receive_some(65536):
                out += chunk
        assert out.startswith(b"HTTP/1.1 400") and out.endswith(b"Bad Request")
        if closes_first:
            await stream.aclose()
            await until(lambda: proxy.stat("http.ingress_http.downstream_cx_destroy") == 1)
        else:
            await until(lambda: proxy.stat("http.ingress_http.downstream_cx_destroy") == 2)
            await stream.aclose()
    timed_out = proxy.stat("http.ingress_http.downstream_cx_delayed_close_timeout")
    remote = proxy.stat("http.ingress_http.downstream_cx_destroy_remote")
    local = proxy.stat("http.ingress_http.downstream_cx_destroy_local")
    assert (timed_out, remote, local) == ((0, 0, 2) if delay == "0s" else (1, 1, 1))


async def test_ambiguous_framing_is_400_and_closed(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    smuggle = (
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    )
    out = await raw_exchange(proxy.port, smuggle)
    assert out.startswith(b"HTTP/1.1 400")
    assert out.count(b"HTTP/1.1") == 1  # closed: the smuggled request is never served
    assert backend.requests == []
    assert proxy.stat("http.ingress_http.downstream_cx_protocol_error") == 1


async def test_long_uri_is_414(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    out = await raw_exchange(
        proxy.port, b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nhost: a\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 414")


async def test_use_remote_address_sets_xff_and_strips_envoy_headers(nursery: trio.Nursery) -> None:
    from trioproxy.netutil import local_ipv4

    (backend,), proxy = await _setup(nursery, hcm_extra="use_remote_address: true")
    client = await Client.connect(proxy.port)
    hdrs = [("x-forwarded-for", "1.2.3.4"), ("x-envoy-retry-on", "5xx"), ("x-envoy-foo", "1")]
    await client.request("GET", "/", hdrs)
    rec = backend.requests[0]
    # a loopback peer is recorded as this host's address; nothing is internal by default
    # (Envoy 1.40), so the control headers go and the client address is noted
    assert rec.header("x-forwarded-for") == f"1.2.3.4,{local_ipv4()}"
    assert rec.header("x-envoy-internal") is None
    assert rec.header("x-envoy-external-address") == "127.0.0.1"
    assert rec.header("x-envoy-retry-on") is None
    assert rec.header("x-envoy-foo") == "1"  # not one of Envoy's control headers
    await client.aclose()


async def test_internal_address_config_makes_requests_internal(nursery: trio.Nursery) -> None:
    extra = """use_remote_address: true
internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}"""
    (backend,), proxy = await _setup(nursery, hcm_extra=extra)
    client = await Client.connect(proxy.port)
    rid = "12345678-1234-4234-8234-123456789012"
    await client.request("GET", "/", [("x-envoy-force-trace", "true"), ("x-request-id", rid)])
    rec = backend.requests[0]
    assert rec.header("x-envoy-internal") == "true"
    assert rec.header("x-envoy-force-trace") == "true"
    assert rec.header("x-request-id") == rid  # an internal request keeps its id
    await client.aclose()


async def test_path_is_normalised_before_routing(nursery: trio.Nursery) -> None:
    routes = """
              - match: {prefix: "/public"}
                direct_response: {status: 200, body: {inline_string: public}}
              - match: {prefix: "/"}
                route: {cluster: backend}"""
    (backend,), proxy = await _setup(nursery, routes=routes, hcm_extra="merge_slashes: true")
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/public/../admin//x")
    assert resp.status_code == 200
    assert backend.requests[0].target == "/admin/x"
    resp, body = await client.request("GET", "/public/x")
    assert body == b"public"
    await client.aclose()


async def test_round_robin_spreads_over_hosts(nursery: trio.Nursery) -> None:
    backends, proxy = await _setup(nursery, backends=3)
    client = await Client.connect(proxy.port)
    seen = set()
    for _ in range(3):
        _, body = await client.request("GET", "/")
        seen.add(body)
    assert seen == {b"b0", b"b1", b"b2"}
    assert proxy.stat("cluster.backend.membership_total") == 3
    await client.aclose()


async def test_large_response_streams_with_content_length(nursery: trio.Nursery) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    backend = Backend()
    backend.handler = lambda r: Reply(
        body=[payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    )
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/big")
    assert resp.status_code == 200
    assert header(resp, "content-length") == str(len(payload))
    assert body == payload
    await client.aclose()


async def test_upstream_closing_keep_alive_silently_is_retried_on_a_new_connection(
    nursery: trio.Nursery,
) -> None:
    """An upstream that closes after each response without saying so: the pooled connection
    is dead when reused at once; the bodiless request goes out again on a fresh one."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def one_shot(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, one_shot, listeners)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Client.connect(proxy.port)
    for _ in range(3):
        resp, body = await client.request("GET", "/")
        assert (resp.status_code, body) == (200, b"ok")
    assert proxy.stat("cluster.backend.upstream_rq_200") == 3
    await client.aclose()


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    nursery: trio.Nursery,
) -> None:
    (backend,), proxy = await _setup(
        nursery, hcm_extra="common_http_protocol_options: {idle_timeout: 0.2s}"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    data = b""
    with trio.fail_after(5):
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break  # the proxy closed the idle connection
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    await trio.testing.wait_all_tasks_blocked()  # the proxy's side finishes after our EOF
    assert proxy.stat("http.ingress_http.downstream_cx_idle_timeout") == 1
    await stream.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "handler", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            lambda r: Reply(delay=3.0),
            b"504",
        ),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab", None, b"408"),
    ],
    ids=["whole-request-504", "stalled-body-408"],
)
async def test_stream_idle_timeout_answers_for_whose_wait_timed_out(
    nursery: trio.Nursery, request_bytes: bytes, handler: Handler | None, status: bytes
) -> None:
    """The request was in: the wait that timed out was the upstream's (504, as Envoy 1.40).
    The body stalled: it was the client's (408), and the rest of the body is unread, so the
    connection closes (as Envoy 1.40). (The 504's request asks for the close itself: see
    the next test for a keep-alive one.)"""
    backend = Backend(handler=handler)
    await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery, simple_config([backend.port], hcm_extra="stream_idle_timeout: 0.2s")
    )
    with trio.fail_after(5):
        out = await raw_exchange(proxy.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status)
    assert b"\r\nconnection: close\r\n" in out
    assert out.endswith(b"stream timeout")
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1


@pytest.mark.parametrize("body", [None, b"ab"], ids=["GET", "POST"])
async def test_a_keep_alive_connection_serves_on_after_a_stream_idle_504(
    nursery: trio.Nursery, body: bytes | None
) -> None:
    """The 504 ends the stream, not the connection (as Envoy 1.40): the client's next request
    on it is answered, over a new upstream connection (the one left mid-exchange is closed,
    not pooled: reused, it would hand the late answer to the next request)."""
    backend = Backend()
    backend.handler = lambda r: Reply(body=b"late", delay=3.0 if r.target == "/slow" else 0)
    await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery, simple_config([backend.port], hcm_extra="stream_idle_timeout: 0.2s")
    )
    client = await Client.connect(proxy.port)
    with trio.fail_after(5):
        resp, data = await client.request("POST" if body else "GET", "/slow", body=body)
        assert (resp.status_code, data) == (504, b"stream timeout")
        assert header(resp, "connection") is None
        resp, data = await client.request("GET", "/next")
    assert (resp.status_code, data) == (200, b"late")
    assert [r.target for r in backend.requests] == ["/slow", "/next"]
    assert backend.connections == 2
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert proxy.stat("http.ingress_http.downstream_cx_total") == 1
    assert proxy.stat("cluster.backend.upstream_cx_destroy_local_with_active_rq") == 1
    await client.aclose()


async def test_request_timeout_answers_408_for_a_stalled_body(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery, hcm_extra="request_timeout: 0.2s")
    with trio.fail_after(5):
        out = await raw_exchange(
            proxy.port, b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab"
        )
    assert out.startswith(b"HTTP/1.1 408")
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 1


async def test_a_slow_client_gets_all_of_a_connection_close_response(
    nursery: trio.Nursery,
) -> None:
    """The proxy's writes back up behind a client that is not reading; closing the
    connection after the response must still deliver every byte before the FIN (the last
    write, the 0 chunk, is queued for the tick's flush; tests/test_io.py forces the case
    where the kernel has no room left for it)."""
    payload = bytes(range(256)) * 1200  # 300 KiB, chunked: the last write is the small 0 chunk
    backend = Backend()
    backend.handler = lambda r: Reply(
        body=[payload[i : i + 65536] for i in range(0, len(payload), 65536)], chunked=True
    )
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", proxy.port))
    await sock.send(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    await trio.sleep(0.5)  # not reading: the proxy's writes back up
    received = bytearray()
    with trio.fail_after(10):
        while chunk := await sock.recv(4096):
            received += chunk
            await trio.sleep(0.001)
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert body.endswith(b"\r\n0\r\n\r\n")
    assert _dechunk(body) == payload


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


async def test_idle_connections_share_parsers_without_mixing_requests(
    nursery: trio.Nursery,
) -> None:
    # Between requests a connection gives its parser back to the listener's pool and takes
    # one (perhaps another connection's) when bytes arrive; a connection with part of a head
    # keeps its own. Interleave both and check every answer is for its own request.
    backend = Backend()
    backend.handler = lambda r: Reply(body=r.target.encode())
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    slow = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    # A request, and part of the next head behind it: once the first is answered, the
    # connection waits with a parser that holds something, which must stay its own.
    await slow.send_all(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\nGET /slow HTTP/1.1\r\nho")
    out = b""
    with trio.fail_after(5):
        while b"/first" not in out:
            out += await slow.receive_some(65536)
    clients = [await Client.connect(proxy.port) for _ in range(3)]
    for round_ in range(3):
        for i, client in enumerate(clients):
            resp, body = await client.request("GET", f"/c{i}-{round_}")
            assert (resp.status_code, body) == (200, f"/c{i}-{round_}".encode())
    await slow.send_all(b"st: a\r\n\r\nGET /after HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    with trio.fail_after(5):
        while chunk := await slow.receive_some(65536):
            out += chunk
    assert re.findall(rb"\r\n\r\n(/[a-z]+)", out) == [b"/first", b"/slow", b"/after"]
    assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 12
    for client in clients:
        await client.aclose()
    await slow.aclose()


def _addresses_echoed(backend_port: int, bind: str) -> str:
    """A listener on ``bind`` whose responses say the connection's addresses (x-local,
    x-remote, and x-peer without the port), written by Envoy's formatters."""
    routes = """
              - match: {prefix: "/"}
                route: {cluster: backend}
                response_headers_to_add:
                - header: {key: x-local, value: "%DOWNSTREAM_LOCAL_ADDRESS%"}
                - header: {key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}
                - header: {key: x-peer, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}"""
    return simple_config([backend_port], routes=routes).replace(
        "name: main\n    address:\n      socket_address: {address: 127.0.0.1,",
        f"name: main\n    address:\n      socket_address: {{address: {bind},",
    )


async def test_local_address_is_the_connection_s_own_on_a_wildcard_listener(
    nursery: trio.Nursery,
) -> None:
    # A listener bound to one IP knows every connection's local address without asking;
    # one bound to 0.0.0.0 must ask each connection (127.0.0.2 reaches it on Linux's lo).
    backend = Backend()
    await nursery.start(backend.serve)
    for bind, dial in (("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.2")):
        proxy = await start_proxy(nursery, _addresses_echoed(backend.port, bind))
        client = Client(await trio.open_tcp_stream(dial, proxy.port))
        resp, _ = await client.request("GET", "/")
        assert header(resp, "x-local") == f"{dial}:{proxy.port}"
        await client.aclose()


async def test_h2c_upgrade_is_served_as_http1_like_envoy(nursery: trio.Nursery) -> None:
    # curl --http2 on an http:// URL asks for h2c this way. Envoy does not take h2c
    # upgrades: it serves the request over HTTP/1.1 without the upgrade headers, and the
    # connection carries the next request.
    backend = Backend()
    backend.handler = lambda r: Reply(body=r.target.encode())
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    out = await raw_exchange(
        proxy.port,
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert re.findall(rb"HTTP/1.1 (\d+)", out) == [b"200", b"200"]
    assert re.findall(rb"\r\n\r\n(/[a-z0-9]+)", out) == [b"/h2c", b"/next"]
    first = backend.requests[0]
    assert first.header("upgrade") is None
    assert first.header("http2-settings") is None
    assert first.header("connection") is None


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_addresses_are_written_as_envoy_writes_them(nursery: trio.Nursery) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, _addresses_echoed(backend.port, "'::1'"))
    stream = await trio.open_tcp_stream("::1", proxy.port)
    client = Client(stream)
    resp, _ = await client.request("GET", "/")
    client_port = stream.socket.getsockname()[1]
    assert header(resp, "x-local") == f"[::1]:{proxy.port}"
    assert header(resp, "x-remote") == f"[::1]:{client_port}"
    assert header(resp, "x-peer") == "::1"
    await client.aclose()


async def test_request_timeout_stops_once_the_request_is_whole(nursery: trio.Nursery) -> None:
    """With the stream idle timeout off, a whole request waits on a slow upstream past
    ``request_timeout``: that timeout is over once the body is in."""
    backend = Backend()
    backend.handler = lambda r: Reply(delay=0.8)
    await nursery.start(backend.serve)
    hcm = "stream_idle_timeout: 0s\nrequest_timeout: 0.3s"
    proxy = await start_proxy(nursery, simple_config([backend.port], hcm_extra=hcm))
    with trio.fail_after(5):
        out = await raw_exchange(
            proxy.port,
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nab",
        )
    assert out.startswith(b"HTTP/1.1 200")
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 0
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 0


async def _closing_upstream(nursery: trio.Nursery, answer_from: int) -> tuple[int, list[bytes]]:
    """An upstream that reads each request's head and closes without answering, until the
    ``answer_from``-th connection, which reads the whole request and answers 200."""
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        seen.append(b"")
        n = len(seen)
        buf = b""
        while b"\r\n\r\n" not in buf or (n >= answer_from and not buf.endswith(b"body")):
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            seen[-1] = buf
        if n >= answer_from:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return listeners[0].socket.getsockname()[1], seen


POST_WITH_BODY = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody"


async def test_a_request_with_a_body_whose_upstream_closes_gets_503(
    nursery: trio.Nursery,
) -> None:
    """Not a 500 "filter error": the body's sender and the response's reader both see the
    connection end, and the router answers the reset as it does without a body."""
    port, _ = await _closing_upstream(nursery, answer_from=99)
    proxy = await start_proxy(nursery, simple_config([port]))
    out = await raw_exchange(proxy.port, POST_WITH_BODY)
    assert out.startswith(b"HTTP/1.1 503")
    assert out.endswith(b"reset reason: connection termination")
    assert proxy.stat("http.ingress_http.downstream_rq_filter_error") == 0


async def test_a_request_with_a_body_is_retried_after_a_reset(nursery: trio.Nursery) -> None:
    port, seen = await _closing_upstream(nursery, answer_from=2)
    routes = """
              - match: {prefix: "/"}
                route:
                  cluster: backend
                  retry_policy: {retry_on: reset, num_retries: 1}"""
    proxy = await start_proxy(nursery, simple_config([port], routes=routes))
    out = await raw_exchange(proxy.port, POST_WITH_BODY)
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"ok")
    assert len(seen) == 2 and seen[1].endswith(b"body")  # the body, sent again
    assert proxy.stat("cluster.backend.upstream_rq_retry") == 1


async def test_a_broken_chunked_request_body_gets_400(nursery: trio.Nursery) -> None:
    (backend,), proxy = await _setup(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n"
        )
        await trio.sleep(0.1)  # the request is on its way upstream
        await stream.send_all(b"zz\r\nxx\r\n")  # not a chunk size
        out = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                out += data
    assert out.startswith(b"HTTP/1.1 400")
    assert proxy.stat("http.ingress_http.downstream_cx_protocol_error") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_filter_error") == 0


async def test_a_local_reply_while_shutting_down_says_connection_close(
    nursery: trio.Nursery,
) -> None:
    """A request in flight when the shutdown's drain starts ends in a local reply (here the
    route timeout's 504): like a proxied response then, it says ``connection: close``, and
    the connection closes after it (found by review: it closed without saying so)."""
    backend = Backend(handler=lambda r: Reply(delay=3.0))
    await nursery.start(backend.serve)
    routes = """
              - match: {prefix: "/"}
                route: {cluster: backend, timeout: 0.5s}"""
    proxy = await start_proxy(nursery, simple_config([backend.port], routes=routes), drain_time=5.0)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    await trio.sleep(0.1)
    proxy.server.request_shutdown()
    out = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            out += chunk
    await stream.aclose()
    assert out.startswith(b"HTTP/1.1 504")
    assert b"\r\nconnection: close\r\n" in out
    assert proxy.stat("http.ingress_http.downstream_cx_drain_close") == 1
