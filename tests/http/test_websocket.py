"""WebSocket through the proxy (HTTP/1.1 Upgrade), trio-websocket on both ends."""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket, serve_websocket

from tests.support import raw_exchange, simple_config, start_proxy

UPGRADES = """
upgrade_configs:
- upgrade_type: websocket
"""


async def _echo_server(nursery: trio.Nursery) -> int:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                await ws.send_message(f"echo:{message}")
                if message == "bye":
                    await ws.send_message("server says bye")  # unprompted, upstream → client
        except ConnectionClosed:
            pass

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return int(server.port)


async def _raw_upgrade(port: int, path: str) -> bytes:
    """A WebSocket upgrade request for ``path`` by hand, and what came back."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    return await raw_exchange(port, request.encode())


async def test_websocket_echo_both_directions(nursery: trio.Nursery) -> None:
    port = await _echo_server(nursery)
    proxy = await start_proxy(nursery, simple_config([port], hcm_extra=UPGRADES))
    async with open_websocket("127.0.0.1", proxy.port, "/chat", use_ssl=False) as ws:
        for i in range(20):
            await ws.send_message(f"m{i}")
            assert await ws.get_message() == f"echo:m{i}"
        big = "x" * 200_000  # many reads and writes through the splice
        await ws.send_message(big)
        assert await ws.get_message() == "echo:" + big
        await ws.send_message("bye")
        assert await ws.get_message() == "echo:bye"
        assert await ws.get_message() == "server says bye"
    assert proxy.stat("http.ingress_http.downstream_cx_upgrades_total") == 1
    with trio.fail_after(5):
        while proxy.stat("http.ingress_http.downstream_cx_upgrades_active"):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_upgrade_refused_without_upgrade_configs(nursery: trio.Nursery) -> None:
    port = await _echo_server(nursery)
    proxy = await start_proxy(nursery, simple_config([port]))
    raw = await raw_exchange(
        proxy.port,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 403")
    assert proxy.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1


async def test_upstream_refusing_the_upgrade_is_a_plain_response(nursery: trio.Nursery) -> None:
    from tests.support import Backend

    backend = Backend()  # a plain HTTP server: answers 200, no 101
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port], hcm_extra=UPGRADES))
    raw = await raw_exchange(
        proxy.port,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        # What follows an upgrade request is the new protocol's, never another request: the
        # refused upgrade's response says the connection closes, and it does.
        b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b"\r\nconnection: close\r\n" in raw.lower()
    assert len(backend.requests) == 1
    sent = dict(backend.requests[0].headers)
    assert sent["upgrade"] == "websocket" and sent["connection"].lower() == "upgrade"


async def test_a_route_enables_the_upgrade_on_its_own(nursery: trio.Nursery) -> None:
    # Envoy: a route's upgrade_configs override the connection manager's, both ways
    port = await _echo_server(nursery)
    routes = """
              - match: {prefix: "/chat"}
                route:
                  cluster: backend
                  upgrade_configs: [{upgrade_type: WebSocket}]
              - match: {prefix: "/"}
                route: {cluster: backend}"""
    proxy = await start_proxy(nursery, simple_config([port], routes=routes))
    async with open_websocket("127.0.0.1", proxy.port, "/chat", use_ssl=False) as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "echo:hi"
    raw = await _raw_upgrade(proxy.port, "/other")
    assert raw.startswith(b"HTTP/1.1 403")
    assert proxy.stat("http.ingress_http.downstream_cx_upgrades_total") == 1


async def test_a_route_disables_the_upgrade(nursery: trio.Nursery) -> None:
    port = await _echo_server(nursery)
    routes = """
              - match: {prefix: "/"}
                route:
                  cluster: backend
                  upgrade_configs: [{upgrade_type: websocket, enabled: false}]"""
    proxy = await start_proxy(nursery, simple_config([port], routes=routes, hcm_extra=UPGRADES))
    raw = await _raw_upgrade(proxy.port, "/chat")
    assert raw.startswith(b"HTTP/1.1 403")
    assert proxy.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1


async def test_an_upgrade_without_a_route_is_not_found(nursery: trio.Nursery) -> None:
    # no route, no upgrade check: the router answers 404 (Envoy 1.40, measured)
    port = await _echo_server(nursery)
    routes = """
              - match: {prefix: "/api"}
                route: {cluster: backend}"""
    proxy = await start_proxy(nursery, simple_config([port], routes=routes))
    raw = await _raw_upgrade(proxy.port, "/chat")
    assert raw.startswith(b"HTTP/1.1 404")
    assert proxy.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 0


async def test_the_clients_close_ends_the_upgrade_as_a_disconnect(nursery: trio.Nursery) -> None:
    # as Envoy logs and counts it: DC downstream_remote_disconnect, the request reset
    from tests.support import until

    port = await _echo_server(nursery)
    proxy = await start_proxy(nursery, simple_config([port], hcm_extra=UPGRADES))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await client.send_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await client.receive_some(65536)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\ndate: " in head  # as Envoy's
    await client.aclose()  # no closing handshake: the client just goes
    await until(lambda: proxy.stat("http.ingress_http.downstream_cx_destroy_remote_active_rq"))
    assert proxy.stat("http.ingress_http.downstream_rq_rx_reset") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_response_before_rq_complete") == 1
