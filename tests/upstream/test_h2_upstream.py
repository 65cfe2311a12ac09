"""HTTP/2 to upstreams: gRPC through the proxy with grpcio on both ends (HTTP/2 both sides),
and an HTTP/1.1 client reaching an HTTP/2 upstream (a small h2 server here)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import pytest
import trio

from tests.support import Client, simple_config, start_proxy

H2_OPTIONS = """
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options: {}
"""
GRPC_ROUTES = """
              - match: {prefix: "/"}
                route: {cluster: backend, timeout: 0s}"""


def _identity(b: bytes) -> bytes:
    return b


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"slow":
        time.sleep(1.0)
    context.set_trailing_metadata((("x-served-by", "grpcio"),))
    return b"echo:" + request


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, _identity, _identity),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def _calls(port: int) -> dict[str, object]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary("/test.Echo/Unary", _identity, _identity)
    bidi = channel.stream_stream("/test.Echo/Bidi", _identity, _identity)
    out: dict[str, object] = {}
    resp, call = unary.with_call(b"hello", timeout=10)
    out["unary"] = resp
    out["trailers"] = dict(call.trailing_metadata())
    out["bidi"] = list(bidi(iter([b"a", b"b", b"c"]), timeout=10))
    try:
        unary(b"missing", timeout=10)
    except grpc.RpcError as err:
        out["error"] = (err.code(), err.details())
    try:
        unary(b"slow", timeout=0.2)
    except grpc.RpcError as err:
        out["deadline"] = err.code()
    channel.close()
    return out


async def test_grpc_unary_streaming_errors_and_deadlines(
    nursery: trio.Nursery, grpc_server: int
) -> None:
    proxy = await start_proxy(
        nursery, simple_config([grpc_server], routes=GRPC_ROUTES, cluster_extra=H2_OPTIONS)
    )
    out = await trio.to_thread.run_sync(_calls, proxy.port)
    assert out["unary"] == b"echo:hello"
    assert out["trailers"].get("x-served-by") == "grpcio"  # type: ignore[union-attr]
    assert out["bidi"] == [b"A", b"B", b"C"]
    assert out["error"] == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert out["deadline"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 1  # one multiplexed conn
    assert proxy.stat("cluster.backend.upstream_rq_total") == 4


class H2Echo:
    """A small HTTP/2 server: answers each request with the size of its body."""

    def __init__(self, goaway_after: int = 0, max_streams: int | None = None) -> None:
        self.seen: list[list[tuple[bytes, bytes]]] = []
        self.port = 0
        self.goaway_after = goaway_after  # like nginx's keepalive_requests: then GOAWAY
        self.goaways = 0
        self.max_streams = max_streams  # SETTINGS_MAX_CONCURRENT_STREAMS, enforced by h2
        self.resets = 0  # RST_STREAM frames received
        self.reset_seen = trio.Event()  # replaced after each
        self._ready = threading.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_conn(stream)
        except trio.BrokenResourceError:
            pass  # the proxy closed a connection we had sent GOAWAY on

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        if self.max_streams is not None:
            conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams},
            )
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        held: set[int] = set()  # requests for /hold: never answered
        smuggle: set[int] = set()  # requests for /smuggle: a malformed response
        served = 0
        async with stream:
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        served += 1
                        if self.goaway_after and served > self.goaway_after:
                            # past the limit: refused (the GOAWAY below said so)
                            conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                            continue
                        self.seen.append([(bytes(k), bytes(v)) for k, v in ev.headers])
                        bodies[ev.stream_id] = b""
                        if (b":path", b"/hold") in ev.headers:
                            held.add(ev.stream_id)
                        if (b":path", b"/smuggle") in ev.headers:
                            smuggle.add(ev.stream_id)
                        if served == self.goaway_after:
                            self.goaways += 1
                            frame = hyperframe.frame.GoAwayFrame(0)
                            frame.last_stream_id = ev.stream_id
                            await stream.send_all(conn.data_to_send() + frame.serialize())
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id in bodies:
                        bodies[ev.stream_id] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets += 1
                        self.reset_seen.set()
                        self.reset_seen = trio.Event()
                        held.discard(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in held:
                        pass
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in bodies:
                        body = b"got %d bytes" % len(bodies.pop(ev.stream_id))
                        head = [(b":status", b"200")]
                        if ev.stream_id in smuggle:  # CR LF in a value: never relayed
                            head.append((b"x-smuggled", b"a\r\nset-cookie: x"))
                        conn.send_headers(ev.stream_id, head)
                        conn.send_data(ev.stream_id, body, end_stream=True)
                await stream.send_all(conn.data_to_send())


async def test_http1_client_to_http2_upstream(nursery: trio.Nursery) -> None:
    upstream = H2Echo()
    await nursery.start(upstream.serve)
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=H2_OPTIONS))
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request(
            "POST", "/upload", [("content-type", "text/plain"), ("x-custom", "1")], b"x" * 300_000
        )
        assert resp.status_code == 200
        assert body == b"got 300000 bytes"  # more than a flow-control window: paced by it
        resp, body = await client.request("GET", "/again")
        assert (resp.status_code, body) == (200, b"got 0 bytes")
    finally:
        await client.aclose()
    first = dict(upstream.seen[0])
    assert first[b":method"] == b"POST" and first[b":path"] == b"/upload"
    assert first[b":authority"] == b"example.com"
    assert first[b"x-custom"] == b"1"
    # no connection-specific header crosses into HTTP/2
    for name in (b"connection", b"host", b"transfer-encoding", b"keep-alive"):
        assert name not in first
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 1


def _one_call(port: int, method: str, payload: bytes, timeout: float) -> tuple[object, str]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        unary = channel.unary_unary(method, _identity, _identity)
        try:
            return unary(payload, timeout=timeout), ""
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    finally:
        channel.close()


async def test_grpc_local_replies_are_trailers_only_with_grpc_status(
    nursery: trio.Nursery, grpc_server: int
) -> None:
    from tests.support import free_ports

    routes = """
              - match: {prefix: "/test.Echo/"}
                route: {cluster: backend}"""
    (dead,) = free_ports(1)
    proxy = await start_proxy(
        nursery, simple_config([dead], routes=routes, cluster_extra=H2_OPTIONS)
    )
    code, details = await trio.to_thread.run_sync(_one_call, proxy.port, "/other.Svc/M", b"", 5)
    assert code == grpc.StatusCode.UNIMPLEMENTED  # no route: 404 → 12
    code, details = await trio.to_thread.run_sync(
        _one_call, proxy.port, "/test.Echo/Unary", b"x", 5
    )
    assert code == grpc.StatusCode.UNAVAILABLE  # no upstream: 503 → 14
    assert details.startswith("upstream connect error")


async def test_grpc_timeout_header_bounds_the_route(
    nursery: trio.Nursery, grpc_server: int
) -> None:
    routes = """
              - match: {prefix: "/"}
                route:
                  cluster: backend
                  timeout: 30s
                  max_stream_duration: {grpc_timeout_header_max: 0.2s}"""
    proxy = await start_proxy(
        nursery, simple_config([grpc_server], routes=routes, cluster_extra=H2_OPTIONS)
    )
    start = trio.current_time()
    code, details = await trio.to_thread.run_sync(
        _one_call, proxy.port, "/test.Echo/Unary", b"slow", 5.0
    )
    # the client's 5 s grpc-timeout, capped at 0.2 s by the route, replaced the route's 30 s:
    # the proxy answered 504, sent as grpc-status 14, long before the slow upstream
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "upstream request timeout")
    assert trio.current_time() - start < 0.9
    assert proxy.stat("cluster.backend.upstream_rq_timeout") == 1


async def test_upstream_goaway_lets_streams_finish_and_new_ones_move(
    nursery: trio.Nursery,
) -> None:
    """An upstream that sends GOAWAY every 3 requests (as nginx does after keepalive_requests):
    the streams it accepted finish, the rest go to a new connection, no client sees an error.
    (Three users: a refused stream is sent again a few times at most, and a server that
    refuses all but three streams per connection could, with many more, refuse one request
    more often than that.)"""
    upstream = H2Echo(goaway_after=3)
    await nursery.start(upstream.serve)
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=H2_OPTIONS))
    statuses: list[int] = []

    async def user(i: int) -> None:
        client = await Client.connect(proxy.port)
        try:
            for j in range(10):
                resp, _ = await client.request("GET", f"/{i}/{j}")
                statuses.append(resp.status_code)
        finally:
            await client.aclose()

    async with trio.open_nursery() as users:
        for i in range(3):
            users.start_soon(user, i)
    assert statuses == [200] * 30
    assert upstream.goaways >= 5
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") >= 10


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_abandoned_streams_are_reset_upstream(nursery: trio.Nursery) -> None:
    """HTTP/2 clients that give up mid-request leave no stream open upstream: against an
    upstream allowing 4 concurrent streams, after 10 clients gave up on requests it never
    answers, the next request is still served (the proxy sent RST_STREAM for each abandoned
    one; without that the connection's stream slots stay taken and the proxy answers 503)."""
    upstream = H2Echo(max_streams=4)
    await nursery.start(upstream.serve)
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=H2_OPTIONS))
    for _ in range(10):
        done = await trio.run_process(
            [
                "curl",
                "-sS",
                "--http2-prior-knowledge",
                "-m",
                "0.2",
                f"http://127.0.0.1:{proxy.port}/hold",
            ],
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 28, done.stderr  # curl's "operation timed out"
    with trio.fail_after(5):
        while upstream.resets < 10:
            await upstream.reset_seen.wait()
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/after")
        assert (resp.status_code, body) == (200, b"got 0 bytes")
    finally:
        await client.aclose()
    assert proxy.stat("cluster.backend.upstream_rq_total") == 11
    assert proxy.stat("cluster.backend.upstream_cx_total") == 1  # the same connection


async def test_a_malformed_upstream_response_is_refused_and_the_next_request_served(
    nursery: trio.Nursery,
) -> None:
    """CR/LF in an upstream HTTP/2 header never reaches the client (RFC 9113 §8.2.1): the
    response is a protocol error (UPE, 502, as Envoy answers) and the connection is replaced."""
    upstream = H2Echo()
    await nursery.start(upstream.serve)
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=H2_OPTIONS))
    client = await Client.connect(proxy.port)
    try:
        resp, _ = await client.request("GET", "/smuggle")
        assert resp.status_code == 502
        assert b"set-cookie" not in dict(resp.headers)
        resp, body = await client.request("GET", "/after")
        assert (resp.status_code, body) == (200, b"got 0 bytes")
    finally:
        await client.aclose()
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 2
    assert proxy.stat("cluster.backend.upstream_cx_protocol_error") == 1
    assert proxy.stat("cluster.backend.http2.rx_messaging_error") == 1


async def test_a_burst_on_a_cold_pool_shares_one_connection(nursery: trio.Nursery) -> None:
    """Eight requests at once to an HTTP/2 upstream with no connection yet: one connection is
    opened and all eight are streams on it (the requests that waited for it are not woken
    before it can take them, which would open a second)."""
    upstream = H2Echo()
    await nursery.start(upstream.serve)
    proxy = await start_proxy(nursery, simple_config([upstream.port], cluster_extra=H2_OPTIONS))
    clients = [await Client.connect(proxy.port) for _ in range(8)]
    statuses: list[int] = []

    async def one(client: Client) -> None:
        resp, _ = await client.request("GET", "/burst")
        statuses.append(resp.status_code)

    try:
        async with trio.open_nursery() as burst:
            for client in clients:
                burst.start_soon(one, client)
    finally:
        for client in clients:
            await client.aclose()
    assert statuses == [200] * 8
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 1
    assert proxy.stat("cluster.backend.upstream_rq_pending_total") >= 7
