"""A client that goes away while its request waits on the upstream: the proxy notices at once
(as Envoy does, half-close included), drops the upstream request and counts the disconnect."""

from __future__ import annotations

from functools import partial

import trio

from tests.support import simple_config, start_proxy


class SlowUpstream:
    """Reads a request head, waits, answers; records when its connection closed."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.closed_at: list[float] = []
        self.closed = trio.Event()
        self.answered = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            with trio.move_on_after(self.delay):
                if not await stream.receive_some(65536):  # EOF: the proxy let go
                    self.closed_at.append(trio.current_time())
                    self.closed.set()
                    return
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            self.answered += 1


async def start(nursery: trio.Nursery, delay: float) -> tuple[SlowUpstream, int]:
    upstream = SlowUpstream(delay)
    listeners = await nursery.start(partial(trio.serve_tcp, upstream.handle, 0, host="127.0.0.1"))
    return upstream, listeners[0].socket.getsockname()[1]


async def test_a_closed_client_drops_its_upstream_request(nursery: trio.Nursery) -> None:
    upstream, port = await start(nursery, delay=3.0)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await trio.sleep(0.2)
    gone = trio.current_time()
    await client.aclose()
    with trio.fail_after(1):
        await upstream.closed.wait()
    assert upstream.closed_at[0] - gone < 0.5  # not after the 3 s answer
    assert upstream.answered == 0
    assert proxy.stat("http.ingress_http.downstream_cx_destroy_remote_active_rq") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_rx_reset") == 1


async def test_a_half_closed_client_is_a_closed_one(nursery: trio.Nursery) -> None:
    upstream, port = await start(nursery, delay=3.0)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.send_eof()
    start_time = trio.current_time()
    with trio.fail_after(1):
        assert await client.receive_some(100) == b""  # closed, no response (as Envoy)
    assert trio.current_time() - start_time < 0.5
    await client.aclose()


async def test_pipelined_requests_are_not_taken_for_a_close(nursery: trio.Nursery) -> None:
    upstream, port = await start(nursery, delay=0.3)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    request = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    await client.send_all(request * 2)  # the second waits in the socket while the first runs
    data = b""
    with trio.fail_after(5):
        while data.count(b"ok") < 2:
            data += await client.receive_some(65536)
    await client.aclose()
    assert upstream.answered == 2
