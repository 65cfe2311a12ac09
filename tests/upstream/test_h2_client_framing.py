"""The upstream HTTP/2 client (``h2_client_proto`` under ``h2_client``) against an independent
server: the ``h2`` package on real sockets, scripted per request path, with raw frames where
a misbehaving server is the point. What is checked is what a user of the proxy notices:
responses relayed whole, requests multiplexed within the server's limits, flow control that
moves large bodies and holds back a fast server for a slow client, GOAWAY and refused streams
retried elsewhere, and a malformed response answered as Envoy does (503 to the client, GOAWAY
to the server, the next request on a fresh connection)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio

from tests.h2client import H2Client
from tests.support import Client, simple_config, start_proxy
from tests.upstream.test_h2_upstream import H2_OPTIONS

ONE_CONNECTION = """
circuit_breakers:
  thresholds:
  - max_connections: 1
"""


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


class Ctx:
    """One server connection, as a response script sees it."""

    def __init__(self, peer: Peer, stream: trio.SocketStream, conn: h2.connection.H2Connection):
        self.peer = peer
        self.stream = stream
        self.conn = conn
        self.window = trio.Event()
        self._lock = trio.Lock()

    async def flush(self, raw: bytes = b"") -> None:
        async with self._lock:
            data = self.conn.data_to_send() + raw
            if data:
                await self.stream.send_all(data)

    async def respond(
        self,
        sid: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.conn.send_headers(sid, headers or [(b":status", b"200")], end_stream=False)
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                await self.window.wait()
                continue
            chunk = bytes(view[:window])
            self.conn.send_data(sid, chunk)
            self.peer.sent += len(chunk)
            view = view[window:]
            await self.flush()
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        await self.flush()


Script = Callable[[Ctx, int, dict[bytes, bytes], bytes], Awaitable[None]]


async def echo(ctx: Ctx, sid: int, headers: dict[bytes, bytes], body: bytes) -> None:
    await ctx.respond(sid, b"got %d bytes" % len(body))


class Peer:
    """An HTTP/2 server (h2) that runs ``script`` for each complete request."""

    def __init__(
        self, script: Script = echo, *, answer_on_head: bool = False, **settings: int
    ) -> None:
        self.script = script
        self.answer_on_head = answer_on_head  # run the script without waiting for the body
        self.settings = settings
        self.port = 0
        self.connections = 0
        self.requests: list[dict[bytes, bytes]] = []
        self.open_streams = 0
        self.most_open = 0
        self.resets: list[int] = []
        self.goaways: list[int] = []  # error codes of the GOAWAY frames the proxy sent
        self.events: list[str] = []  # "PING" and "HEADERS <path>", in arrival order
        self.sent = 0  # response body bytes handed to h2
        self.changed = trio.Event()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                getattr(h2.settings.SettingCodes, k.upper()): v for k, v in self.settings.items()
            },
        )
        conn.initiate_connection()
        ctx = Ctx(self, stream, conn)
        await ctx.flush()
        heads: dict[int, dict[bytes, bytes]] = {}
        bodies: dict[int, bytes] = {}
        try:
            async with trio.open_nursery() as nursery:
                while data := await stream.receive_some(65536):
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.PingReceived):
                            self.events.append("PING")
                        if isinstance(ev, h2.events.RequestReceived):
                            self.events.append("HEADERS " + dict(ev.headers)[b":path"].decode())
                            heads[ev.stream_id] = dict(ev.headers)
                            bodies[ev.stream_id] = b""
                            self.requests.append(heads[ev.stream_id])
                            self.open_streams += 1
                            self.most_open = max(self.most_open, self.open_streams)
                            if self.answer_on_head:
                                sid = ev.stream_id
                                nursery.start_soon(self._run, ctx, sid, heads.pop(sid), b"")
                        elif isinstance(ev, h2.events.DataReceived):
                            bodies[ev.stream_id] += ev.data
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in heads:
                            sid = ev.stream_id
                            nursery.start_soon(self._run, ctx, sid, heads.pop(sid), bodies.pop(sid))
                        elif isinstance(ev, h2.events.StreamReset):
                            self.resets.append(ev.error_code)
                            self.open_streams -= 1
                        elif isinstance(ev, h2.events.WindowUpdated):
                            ctx.window.set()
                            ctx.window = trio.Event()
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            self.goaways.append(ev.error_code)
                    self._changed()
                    await ctx.flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        finally:
            self._changed()

    async def _run(self, ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        try:
            await self.script(ctx, sid, head, body)
        except h2.exceptions.StreamClosedError:
            pass
        finally:
            self.open_streams -= 1


async def proxy_for(nursery: trio.Nursery, peer: Peer, extra: str = "") -> object:
    await nursery.start(peer.serve)
    return await start_proxy(nursery, simple_config([peer.port], cluster_extra=H2_OPTIONS + extra))


async def test_concurrent_requests_share_one_connection(nursery: trio.Nursery) -> None:
    """Eight clients at once: one upstream connection, all eight streams open together (the
    server answers only once it holds all of them)."""
    all_in = trio.Event()

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if len(ctx.peer.requests) == 8:
            all_in.set()
        await all_in.wait()
        await ctx.respond(sid, head[b":path"])

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    got: dict[int, bytes] = {}

    async def user(i: int) -> None:
        client = await Client.connect(proxy.port)
        try:
            resp, body = await client.request("GET", f"/u{i}")
            assert resp.status_code == 200
            got[i] = body
        finally:
            await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as users:
            for i in range(8):
                users.start_soon(user, i)
    assert got == {i: b"/u%d" % i for i in range(8)}
    assert peer.connections == 1 and peer.most_open == 8
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 1


async def test_large_bodies_both_ways_within_small_windows(nursery: trio.Nursery) -> None:
    """A 3 MB upload and a 5 MB download through a server whose stream window is 16 KiB: both
    arrive whole, the upload paced by the server's window updates."""
    download = bytes(range(256)) * (5 * 4096)

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest().encode()
        await ctx.respond(
            sid, download, headers=[(b":status", b"200"), (b"x-upload-sha256", digest)]
        )

    peer = Peer(script, initial_window_size=16384, max_frame_size=16384)
    proxy = await proxy_for(nursery, peer)
    upload = hashlib.sha256(b"seed").digest() * (3 * 32768)
    client = await Client.connect(proxy.port)
    try:
        with trio.fail_after(30):
            await client.request("GET", "/first")  # the server's SETTINGS are in
            resp, body = await client.request("POST", "/big", [], upload)
    finally:
        await client.aclose()
    assert resp.status_code == 200
    assert dict(resp.headers)[b"x-upload-sha256"] == hashlib.sha256(upload).hexdigest().encode()
    assert body == download


async def test_a_slow_client_holds_back_a_fast_server(nursery: trio.Nursery) -> None:
    """Back-pressure: while the client reads nothing, the server can send what the proxy's
    window and the sockets' buffers take, not the whole 32 MB; all of it arrives once read."""
    size = 32 * 1024 * 1024

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        await ctx.respond(
            sid, b"x" * size, headers=[(b":status", b"200"), (b"content-length", b"%d" % size)]
        )

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET /flood HTTP/1.1\r\nhost: example.com\r\n\r\n")
    await trio.sleep(1.0)
    assert 0 < peer.sent < size // 2
    received = 0
    with trio.fail_after(30):
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
        received = len(head.split(b"\r\n\r\n", 1)[1])
        while received < size:
            received += len(await stream.receive_some(1 << 20))
    assert received == size
    await stream.aclose()


async def test_the_servers_stream_limit_is_kept(nursery: trio.Nursery) -> None:
    """A server allowing two concurrent streams gets six requests two at a time on its one
    connection (the cluster allows one), and refuses none."""

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        await trio.sleep(0.05)
        await ctx.respond(sid, b"ok")

    peer = Peer(script, max_concurrent_streams=2)
    proxy = await proxy_for(nursery, peer, ONE_CONNECTION)
    statuses: list[int] = []
    client = await Client.connect(proxy.port)
    await client.request("GET", "/first")  # the server's SETTINGS are in
    await client.aclose()

    async def user() -> None:
        client = await Client.connect(proxy.port)
        try:
            resp, _ = await client.request("GET", "/")
            statuses.append(resp.status_code)
        finally:
            await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as users:
            for _ in range(6):
                users.start_soon(user)
    assert statuses == [200] * 6
    assert peer.most_open == 2 and not peer.resets
    assert peer.connections == 1


async def test_a_raised_stream_limit_lets_waiting_requests_in(nursery: trio.Nursery) -> None:
    """A server allowing one stream at a time raises its limit to four (a new SETTINGS) while
    the first of four requests is open and the three others wait for room in the proxy: they
    open at once (the cluster allows one connection), without waiting for the first to end."""
    all_open = trio.Event()

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if head[b":path"] == b"/first":
            await ctx.respond(sid, b"ok")
            return
        if head[b":path"] == b"/u0":
            await trio.sleep(0.5)  # the others are waiting for room by now
            ctx.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 4})
            await ctx.flush()
        if ctx.peer.open_streams == 4:
            all_open.set()
        with trio.move_on_after(2):  # (without the new room, the others come only after this)
            await all_open.wait()
        await ctx.respond(sid, b"ok")

    peer = Peer(script, max_concurrent_streams=1)
    proxy = await proxy_for(nursery, peer, ONE_CONNECTION)
    client = await Client.connect(proxy.port)
    await client.request("GET", "/first")  # the server's first SETTINGS are in
    await client.aclose()
    statuses: list[int] = []

    async def user(i: int) -> None:
        client = await Client.connect(proxy.port)
        try:
            resp, _ = await client.request("GET", f"/u{i}")
            statuses.append(resp.status_code)
        finally:
            await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as users:
            for i in range(4):
                users.start_soon(user, i)
                await trio.sleep(0.05)  # in this order: /u0 is the one open first
    assert statuses == [200] * 4
    assert peer.most_open == 4 and not peer.resets
    assert peer.connections == 1


async def test_goaway_mid_flight_finishes_old_streams_and_retries_new_ones(
    nursery: trio.Nursery,
) -> None:
    """Three requests in flight when the server sends GOAWAY naming the first: the first is
    answered on that connection, the two the server never processed go to a new connection;
    every client gets its response."""
    first_conn: list[int] = []
    held = trio.Event()

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if ctx.peer.connections == 1:
            first_conn.append(sid)
            if len(first_conn) < 3:
                await held.wait()
                if sid != min(first_conn):
                    return  # above the GOAWAY's last stream id: never answered
            else:
                last = min(first_conn)
                await ctx.flush(frame(0x7, 0, 0, last.to_bytes(4, "big") + bytes(4)))
                held.set()
                return
        await ctx.respond(sid, head[b":path"])

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    got: dict[int, tuple[int, bytes]] = {}

    async def user(i: int) -> None:
        client = await Client.connect(proxy.port)
        try:
            resp, body = await client.request("GET", f"/u{i}")
            got[i] = (resp.status_code, body)
        finally:
            await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as users:
            for i in range(3):
                users.start_soon(user, i)
                await trio.sleep(0.05)  # in this order: stream 1 is /u0
    assert got == {i: (200, b"/u%d" % i) for i in range(3)}
    assert peer.connections == 2
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 2


async def test_a_refused_stream_is_sent_again(nursery: trio.Nursery) -> None:
    """RST_STREAM REFUSED_STREAM means the server did not process the request: it is sent
    again (a bodiless one: the router's rule), and the client sees only the response."""
    refused: list[int] = []

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if not refused:
            refused.append(sid)
            ctx.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            await ctx.flush()
            return
        await ctx.respond(sid, b"second try")

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/once")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (200, b"second try")
    assert [r[b":path"] for r in peer.requests] == [b"/once", b"/once"]


async def test_informational_heads_are_skipped_and_trailers_relayed(
    nursery: trio.Nursery,
) -> None:
    """A 103 before the response is not the response; trailers after it reach an HTTP/2
    client."""

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        ctx.conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
        await ctx.flush()
        await ctx.respond(
            sid,
            b"body",
            headers=[(b":status", b"200"), (b"content-type", b"text/plain")],
            trailers=[(b"x-checksum", b"abc")],
        )

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    client = await H2Client.connect(proxy.port)
    async with trio.open_nursery() as inner:
        inner.start_soon(client.reader)
        with trio.fail_after(10):
            status, headers, body = await client.request("GET", "/with-trailers")
        inner.cancel_scope.cancel()
    await client.aclose()
    assert (status, body) == (200, b"body")
    assert headers["content-type"] == "text/plain"
    assert client.trailers == {"x-checksum": "abc"}


async def _bad_content_length(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    ctx.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")], end_stream=True)
    await ctx.flush()


async def _nul_in_value(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    ctx.conn.send_headers(sid, [(b":status", b"200"), (b"x-bad", b"a\x00b")], end_stream=True)
    await ctx.flush()


async def _connection_header(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    ctx.conn.send_headers(sid, [(b":status", b"200"), (b"connection", b"close")], end_stream=True)
    await ctx.flush()


async def _non_ascii_digit_status(
    ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes
) -> None:
    # "20²": three characters that str.isdigit() takes and int() refuses
    ctx.conn.send_headers(sid, [(b":status", b"20\xb2")], end_stream=True)
    await ctx.flush()


async def _push_promise(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    # END_HEADERS, promised stream 2, a block of static-table fields only
    await ctx.flush(frame(0x5, 0x4, sid, (2).to_bytes(4, "big") + b"\x82\x86\x84"))


async def _oversized_frame(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    await ctx.flush(frame(0x1, 0x4, sid, b"\x88" + b"\x00" * 16384))  # above the 16384 we allow


async def _data_before_head(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    await ctx.flush(frame(0x0, 0x1, sid, b"early"))


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (_bad_content_length, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (_nul_in_value, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (_connection_header, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (_push_promise, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (_oversized_frame, h2.errors.ErrorCodes.FRAME_SIZE_ERROR),
        (_data_before_head, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (_non_ascii_digit_status, h2.errors.ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=[
        "content-length",
        "nul",
        "connection-header",
        "push-promise",
        "frame-size",
        "early-data",
        "status-not-ascii",
    ],
)
async def test_a_malformed_response_closes_the_connection_with_goaway(
    nursery: trio.Nursery, script: Script, code: int
) -> None:
    """Envoy's answer to a malformed upstream response: 502 to the client (nothing of it
    relayed), GOAWAY with the error to the server, ``upstream_cx_protocol_error``, and the
    next request on a new connection."""

    async def first_bad(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if head[b":path"] == b"/bad":
            await script(ctx, sid, head, body)
        else:
            await ctx.respond(sid, b"fine")

    peer = Peer(first_bad)
    proxy = await proxy_for(nursery, peer)
    client = await Client.connect(proxy.port)
    try:
        with trio.fail_after(10):
            resp, _ = await client.request("GET", "/bad")
            assert resp.status_code == 502
            assert b"x-bad" not in dict(resp.headers)
            while not peer.goaways:
                await peer.changed.wait()
            assert peer.goaways == [code]
            resp, body = await client.request("GET", "/after")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (200, b"fine")
    assert peer.connections == 2
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 2
    assert proxy.stat("cluster.backend.upstream_cx_protocol_error") == 1


async def test_a_body_longer_than_its_content_length_is_cut_off(nursery: trio.Nursery) -> None:
    """A response head is relayed at once; DATA beyond its content-length then ends the
    upstream connection with GOAWAY PROTOCOL_ERROR and the client never gets a complete
    response."""

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        ctx.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"4")])
        await ctx.flush()
        await trio.sleep(0.2)
        await ctx.flush(frame(0x0, 0x1, sid, b"too long"))

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n")
    received = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            received += data
    await stream.aclose()
    assert b"too long" not in received
    _, _, body = received.partition(b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 503") or len(body) < 4  # never a whole response
    assert peer.goaways == [h2.errors.ErrorCodes.PROTOCOL_ERROR]


async def test_abandoned_downloads_give_their_window_back(nursery: trio.Nursery) -> None:
    """Clients that read a big response's head and go away: what the proxy received of it
    and nobody took is credited back, so the connection's window does not shrink to nothing
    and the next request on it is answered."""
    size = 32 * 1024 * 1024

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if head[b":path"].startswith(b"/big"):
            await ctx.respond(
                sid, b"x" * size, headers=[(b":status", b"200"), (b"content-length", b"%d" % size)]
            )
        else:
            await ctx.respond(sid, b"small")

    peer = Peer(script)
    proxy = await proxy_for(nursery, peer)
    with trio.fail_after(20):
        for i in range(5):
            s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await s.send_all(b"GET /big%d HTTP/1.1\r\nhost: x\r\n\r\n" % i)
            await s.receive_some(1000)  # the head, then nothing more is read
            await trio.sleep(0.3)  # the server fills what the windows allow
            await s.aclose()
        while len(peer.resets) < 5:
            await peer.changed.wait()
    client = await Client.connect(proxy.port)
    try:
        with trio.fail_after(5):
            resp, body = await client.request("GET", "/small")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (200, b"small")
    assert peer.connections == 1
    assert peer.resets == [h2.errors.ErrorCodes.CANCEL] * 5


async def test_a_response_before_the_request_ends_resets_the_stream(
    nursery: trio.Nursery,
) -> None:
    """The server answers a POST whose body is still coming: the client gets the answer, and
    the proxy resets the upstream stream (CANCEL), which would otherwise stay open on the
    server and count against its stream limit."""
    peer = Peer(early, answer_on_head=True)
    proxy = await proxy_for(nursery, peer)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    received = b""
    try:
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"a" * 10
        )
        with trio.fail_after(10):
            while b"too early" not in received:
                received += await stream.receive_some(65536)
            while not peer.resets:
                await peer.changed.wait()
    finally:
        await stream.aclose()
    assert received.startswith(b"HTTP/1.1 413")
    assert peer.resets == [h2.errors.ErrorCodes.CANCEL]


async def early(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    await ctx.respond(sid, b"too early", headers=[(b":status", b"413")])


async def _empty_continuations(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    # a head (:status 200) left open, then CONTINUATION frames with nothing in them
    await ctx.flush(frame(0x1, 0, sid, b"\x88") + frame(0x9, 0, sid, b"") * 2)


async def _empty_headers(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    # a HEADERS frame with nothing in it, then an empty CONTINUATION
    await ctx.flush(frame(0x1, 0, sid, b"") + frame(0x9, 0, sid, b""))


@pytest.mark.parametrize(
    "script", [_empty_continuations, _empty_headers], ids=["continuations", "headers"]
)
async def test_empty_frames_in_a_row_close_the_connection(
    nursery: trio.Nursery, script: Script
) -> None:
    """Envoy's limit of one empty frame in a row (DATA, HEADERS or CONTINUATION) holds for
    responses too: the request fails, the connection is closed (without GOAWAY, as Envoy
    does), the flood is counted, and the next request goes on a new connection."""

    async def first_bad(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        if head[b":path"] == b"/bad":
            await script(ctx, sid, head, body)
        else:
            await ctx.respond(sid, b"fine")

    peer = Peer(first_bad)
    proxy = await proxy_for(nursery, peer)
    client = await Client.connect(proxy.port)
    try:
        with trio.fail_after(10):
            resp, _ = await client.request("GET", "/bad")
            assert resp.status_code == 502  # a protocol error, as Envoy answers
            resp, body = await client.request("GET", "/after")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (200, b"fine")
    assert peer.connections == 2 and not peer.goaways
    assert proxy.stat("cluster.backend.http2.inbound_empty_frames_flood") == 1
    assert proxy.stat("cluster.backend.upstream_cx_protocol_error") == 1


async def test_the_clusters_stream_limit_and_windows_apply(nursery: trio.Nursery) -> None:
    """A cluster's ``http2_protocol_options``: at most ``max_concurrent_streams`` streams per
    connection however many the server allows (six clients on one connection, two at a time),
    and the receive window it sets announced in our SETTINGS."""
    windows: list[int] = []

    async def script(ctx: Ctx, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
        windows.append(ctx.conn.remote_settings.initial_window_size)
        await trio.sleep(0.05)
        await ctx.respond(sid, b"ok")

    peer = Peer(script, max_concurrent_streams=100)
    limits = ONE_CONNECTION + H2_OPTIONS.replace(
        "http2_protocol_options: {}",
        "http2_protocol_options: {max_concurrent_streams: 2, initial_stream_window_size: 65535}",
    )
    await nursery.start(peer.serve)
    proxy = await start_proxy(nursery, simple_config([peer.port], cluster_extra=limits))
    statuses: list[int] = []

    async def user() -> None:
        client = await Client.connect(proxy.port)
        try:
            resp, _ = await client.request("GET", "/")
            statuses.append(resp.status_code)
        finally:
            await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as users:
            for _ in range(6):
                users.start_soon(user)
    assert statuses == [200] * 6
    assert peer.most_open == 2 and peer.connections == 1
    assert set(windows) == {65535}


async def test_a_stream_on_a_connection_idle_past_the_idle_interval_is_preceded_by_a_ping(
    nursery: trio.Nursery,
) -> None:
    """``connection_keepalive.connection_idle_interval`` (no interval PINGs here): a request
    on a connection that has read nothing for that long sends a PING first; one soon after
    the last answer does not."""
    peer = Peer()
    keepalive = H2_OPTIONS.replace(
        "http2_protocol_options: {}",
        "http2_protocol_options: {connection_keepalive: {timeout: 1s, "
        "connection_idle_interval: 0.3s}}",
    )
    await nursery.start(peer.serve)
    proxy = await start_proxy(nursery, simple_config([peer.port], cluster_extra=keepalive))
    client = await Client.connect(proxy.port)
    try:
        for path, pause in (("/one", 0.0), ("/two", 0.05), ("/three", 0.6)):
            await trio.sleep(pause)
            resp, _ = await client.request("GET", path)
            assert resp.status_code == 200
    finally:
        await client.aclose()
    assert peer.events == ["HEADERS /one", "HEADERS /two", "PING", "HEADERS /three"]
