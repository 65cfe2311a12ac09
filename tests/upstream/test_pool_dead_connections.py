"""Pooled HTTP/1.1 connections the upstream has already given up on are not used again.

Two ways an idle connection goes bad right after its response, before the pool's periodic
quiet check would see it (an idle connection is only peeked at once it has been idle for
``pool.QUIET_CHECK_AFTER``):

- the upstream closes it without having said ``Connection: close`` (a server that caps
  requests per connection, or crashed): a request with a body on it would be lost, since a
  body cannot be sent again; Envoy notices the close at once and opens a new connection;
- the upstream sends bytes after a complete response (a buggy server): they would be taken as
  the next request's response. Envoy's codec reads them as they come and drops the
  connection.

Each case sends its requests on one client connection through an in-process proxy, with the
upstream a raw socket server, and checks what the client gets and how many upstream
connections were opened.
"""

from __future__ import annotations

import pytest
import trio

from tests.support import Client, RawRequests, simple_config, start_proxy


def upstream(behaviour: str, connections: list[int]) -> object:
    """An upstream that answers each request 200 ``ok`` (keep-alive) and then, by behaviour:
    ``close``: closes the connection; ``stray``: sends stray bytes and waits for more."""

    async def handler(stream: trio.SocketStream) -> None:
        connections.append(1)
        requests = RawRequests(stream)
        async with stream:
            try:
                while await requests.next() is not None:
                    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    if behaviour == "close":
                        await stream.send_all(answer)
                        return
                    await stream.send_all(answer + b"HTTP/1.1 200 stray\r\n\r\n")
            except trio.BrokenResourceError:
                pass

    return handler


@pytest.mark.parametrize("behaviour", ["close", "stray"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_connection_the_upstream_gave_up_on_is_not_reused(
    nursery: trio.Nursery, behaviour: str, method: str
) -> None:
    connections: list[int] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, upstream(behaviour, connections), listeners)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Client.connect(proxy.port)
    try:
        for n in range(3):
            body = b"payload %d" % n if method == "POST" else b""
            with trio.fail_after(5):
                resp, data = await client.request(method, "/", body=body)
            assert (resp.status_code, data) == (200, b"ok")
            await trio.sleep(0.02)  # the upstream's close or stray bytes are on their way
    finally:
        await client.aclose()
    assert len(connections) == 3  # a new upstream connection for each request
    assert proxy.stat("cluster.backend.upstream_rq_200") == 3
