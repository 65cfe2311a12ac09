"""Idle keep-alive connections park without a task (trioproxy.listener.parking) and lose
nothing by it: the next request, a slow one, the idle timeout, a drain, the client's close and a
hard stop all behave as for a connection that kept its task."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from tests.support import (
    Backend,
    Client,
    Reply,
    free_ports,
    header,
    simple_config,
    start_proxy,
    until,
)
from tests.xds.resources import CDS, LDS, RDS, bootstrap, cluster, listener, route
from trioproxy.hookspecs import hookimpl
from trioproxy.listener import parking
from trioproxy.network.filter import DownstreamConnection, TerminalNetworkFilter
from trioproxy.registry import NetworkFilterFactory
from trioproxy.testing.xds_server import AdsServer

pytestmark = pytest.mark.skipif(not parking.available(), reason="parking needs epoll")

#: Long enough for an idle connection to park (the watchdog ticks every 50 ms).
PARKED = parking.PARK_AFTER + 0.3
LISTENER = "listener.127.0.0.1_0."
HTTP = "http.ingress_http."


def _tasks() -> int:
    """How many tasks this trio run has."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def _echo_backend(nursery: trio.Nursery) -> Backend:
    backend = Backend()
    backend.handler = lambda r: Reply(body=r.target.encode())
    await nursery.start(backend.serve)
    return backend


async def _closed_by_proxy(stream: trio.abc.Stream, timeout: float = 5.0) -> bytes:
    """What the proxy still sends until it closes the connection."""
    out = b""
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def test_idle_connections_park_without_a_task_and_serve_their_next_requests(
    nursery: trio.Nursery,
) -> None:
    backend = await _echo_backend(nursery)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    clients = [await Client.connect(proxy.port) for _ in range(4)]
    for i, client in enumerate(clients):
        resp, body = await client.request("GET", f"/a{i}")
        assert body == f"/a{i}".encode()
    await trio.testing.wait_all_tasks_blocked()
    busy = _tasks()
    await trio.sleep(PARKED)
    # each idle connection's task is gone (one task watches them all)...
    assert _tasks() <= busy - 4 + 1
    assert proxy.stat(LISTENER + "downstream_cx_active") == 4  # ...not the connection
    assert proxy.stat(HTTP + "downstream_cx_active") == 4
    for i, client in enumerate(clients):
        resp, body = await client.request("GET", f"/b{i}")
        assert (resp.status_code, body) == (200, f"/b{i}".encode())
    # and they park again, as often as they are idle
    await trio.sleep(PARKED)
    for i, client in enumerate(clients):
        resp, body = await client.request("GET", f"/c{i}")
        assert (resp.status_code, body) == (200, f"/c{i}".encode())
        await client.aclose()
    assert proxy.stat(HTTP + "downstream_rq_2xx") == 12
    assert proxy.stat(HTTP + "downstream_cx_total") == 4


async def test_a_parked_connection_takes_a_head_that_arrives_in_pieces(
    nursery: trio.Nursery,
) -> None:
    # The first bytes wake it; the rest of the head comes later, and a pipelined request
    # behind it.
    backend = await _echo_backend(nursery)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n")
    out = b""
    with trio.fail_after(5):
        while b"/first" not in out:
            out += await stream.receive_some(65536)
    await trio.sleep(PARKED)
    await stream.send_all(b"GE")
    await trio.sleep(0.2)
    await stream.send_all(b"T /second HTTP/1.1\r\nhost: a\r\n\r\nGET /third HTTP/1.1\r\n")
    await trio.sleep(0.1)
    await stream.send_all(b"host: a\r\nconnection: close\r\n\r\n")
    out += await _closed_by_proxy(stream)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.endswith(b"/third")
    assert proxy.stat(HTTP + "downstream_rq_2xx") == 3
    await stream.aclose()


async def test_a_parked_connection_still_closes_at_its_idle_timeout(
    nursery: trio.Nursery,
) -> None:
    backend = await _echo_backend(nursery)
    config = simple_config(
        [backend.port], hcm_extra="common_http_protocol_options: {idle_timeout: 2s}"
    )
    proxy = await start_proxy(nursery, config)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    start = trio.current_time()
    out = await _closed_by_proxy(stream)
    waited = trio.current_time() - start
    assert out.startswith(b"HTTP/1.1 200")
    assert 1.9 <= waited <= 3.0  # parked after 1 s, closed at 2 s
    await trio.testing.wait_all_tasks_blocked()
    assert proxy.stat(HTTP + "downstream_cx_idle_timeout") == 1
    assert proxy.stat(HTTP + "downstream_cx_active") == 0
    assert proxy.stat(LISTENER + "downstream_cx_active") == 0
    assert proxy.stat(LISTENER + "downstream_cx_destroy") == 1
    await stream.aclose()


async def test_the_proxy_sees_a_parked_connection_s_client_go(nursery: trio.Nursery) -> None:
    backend = await _echo_backend(nursery)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    client = await Client.connect(proxy.port)
    await client.request("GET", "/")
    await trio.sleep(PARKED)
    await client.aclose()
    await until(lambda: proxy.stat(LISTENER + "downstream_cx_active") == 0)
    assert proxy.stat(HTTP + "downstream_cx_active") == 0
    assert proxy.stat(HTTP + "downstream_cx_destroy") == 1
    assert proxy.stat(HTTP + "downstream_cx_idle_timeout") == 0


async def test_a_drain_closes_parked_connections_at_once(nursery: trio.Nursery) -> None:
    backend = await _echo_backend(nursery)
    proxy = await start_proxy(nursery, simple_config([backend.port]), drain_time=30.0)
    client = await Client.connect(proxy.port)
    await client.request("GET", "/")
    await trio.sleep(PARKED)
    start = trio.current_time()
    proxy.server.request_shutdown()
    assert await _closed_by_proxy(client.stream) == b""
    assert trio.current_time() - start < 1.0  # not the drain time
    await until(lambda: proxy.stat(LISTENER + "downstream_cx_active") == 0)
    assert proxy.stat(HTTP + "downstream_cx_active") == 0
    assert proxy.stat(HTTP + "downstream_cx_idle_timeout") == 0
    await client.aclose()


async def test_a_hard_stop_ends_parked_connections(nursery: trio.Nursery) -> None:
    backend = await _echo_backend(nursery)
    async with trio.open_nursery() as inner:
        proxy = await start_proxy(inner, simple_config([backend.port]))
        client = await Client.connect(proxy.port)
        await client.request("GET", "/")
        await trio.sleep(PARKED)
        inner.cancel_scope.cancel()
    assert await _closed_by_proxy(client.stream) == b""
    assert proxy.stat(LISTENER + "downstream_cx_active") == 0
    assert proxy.stat(LISTENER + "downstream_cx_destroy") == 1
    assert proxy.stat(HTTP + "downstream_cx_active") == 0
    assert proxy.stat(HTTP + "downstream_cx_destroy") == 1
    await client.aclose()


async def test_slow_readers_get_whole_responses_across_a_park(nursery: trio.Nursery) -> None:
    # Responses that go out in the same scheduler tick are queued and flushed together; what
    # the kernel does not take then (a client reading slowly: a full window) is sent by a
    # system task as the client reads. A connection idle meanwhile must not park and drop it.
    body = b"x" * 14_000
    backend = Backend()
    backend.handler = lambda r: Reply(body=body)
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([backend.port]))
    # Small send buffers for the connections it accepts (they inherit the listening
    # socket's): the kernel takes a few KiB of each response, the rest waits with us.
    (listener,) = proxy.server.listeners
    assert listener.sock is not None
    listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
    socks = []
    for _ in range(8):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        await sock.connect(("127.0.0.1", proxy.port))
        socks.append(sock)
    for sock in socks:
        await sock.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    await trio.sleep(PARKED + 0.5)  # not reading: the responses wait to be sent
    received = []
    for sock in socks:
        out = bytearray()
        with trio.move_on_after(5):
            while not out.endswith(body):
                chunk = await sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        received.append(bytes(out))
        sock.close()
    for out in received:
        assert out.startswith(b"HTTP/1.1 200")
        assert out.endswith(b"\r\n\r\n" + body)


async def test_a_listener_update_answers_an_idle_connection_s_next_request(
    nursery: trio.Nursery,
) -> None:
    # A listener replaced by LDS drains without closing idle keep-alive connections (as
    # Envoy's): their next request is answered, with Connection: close. Parking or about to.
    ads = AdsServer()
    ads.start()
    try:
        backend = Backend()
        await nursery.start(backend.serve)
        (port,) = free_ports(1)
        proxy = await start_proxy(nursery, bootstrap(ads.port), drain_time=30.0)
        ads.set(CDS, "1", [cluster("c", backend.port)])
        ads.set(RDS, "1", [route("local_route", "c"), route("r2", "c")])
        ads.set(LDS, "1", [listener("listener_0", port)])
        await until(lambda: proxy.stat("listener_manager.lds.update_success") >= 1)
        await trio.sleep(0.2)  # the listener accepts
        clients = [await Client.connect(port) for _ in range(2)]
        await clients[0].request("GET", "/")
        await trio.sleep(PARKED)  # parked at the update
        await clients[1].request("GET", "/")  # 0.3 s from parking at the update
        await trio.sleep(0.3)
        ads.set(LDS, "2", [listener("listener_0", port, route_name="r2")])
        await until(lambda: proxy.stat("listener_manager.listener_modified") == 1)
        await trio.sleep(PARKED)
        for client in clients:
            resp, _ = await client.request("GET", "/")
            assert resp.status_code == 200
            assert header(resp, "connection") == "close"
            await client.aclose()
    finally:
        ads.stop()


async def test_park_idle_after_0_keeps_every_connection_s_task(nursery: trio.Nursery) -> None:
    backend = await _echo_backend(nursery)
    proxy = await start_proxy(nursery, simple_config([backend.port]), park_after=0.0)
    clients = [await Client.connect(proxy.port) for _ in range(3)]
    for client in clients:
        await client.request("GET", "/")
    await trio.testing.wait_all_tasks_blocked()
    busy = _tasks()
    await trio.sleep(PARKED)
    assert _tasks() == busy
    for client in clients:
        resp, body = await client.request("GET", "/again")
        assert (resp.status_code, body) == (200, b"/again")
        await client.aclose()


class _ReturnsTrue(TerminalNetworkFilter):
    """A terminal filter that says hello and returns a stray value."""

    async def handle_connection(self, conn: DownstreamConnection) -> Any:
        await conn.stream.send_all(b"hello")
        return True


class _ReturnsTruePlugin:
    @hookimpl
    def trioproxy_network_filters(self) -> list[NetworkFilterFactory]:
        return [
            NetworkFilterFactory(
                "test.returns_true",
                ("type.googleapis.com/test.ReturnsTrue",),
                create=lambda config, ctx: _ReturnsTrue(),
                terminal=True,
            )
        ]


async def test_a_terminal_filter_s_stray_return_value_ends_its_connection(
    nursery: trio.Nursery,
) -> None:
    # Only a Parked return parks: anything else a plugin's filter returns is ignored, and
    # the connection ends as it did before parking existed.
    config = """
    static_resources:
      listeners:
      - name: main
        address:
          socket_address: {address: 127.0.0.1, port_value: 0}
        filter_chains:
        - filters:
          - name: test.returns_true
            typed_config: {"@type": type.googleapis.com/test.ReturnsTrue}
    """
    proxy = await start_proxy(nursery, config, plugins=[_ReturnsTruePlugin()])
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    assert await _closed_by_proxy(stream) == b"hello"
    await until(lambda: proxy.stat(LISTENER + "downstream_cx_active") == 0)
    assert proxy.stat(LISTENER + "downstream_cx_destroy") == 1
    await stream.aclose()
