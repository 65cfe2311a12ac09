"""A cluster's ``upstream_connection_options``: TCP keepalive on its upstream connections."""

from __future__ import annotations

import os
import socket

import trio

from tests.support import Backend, Client, simple_config, start_proxy


def _sockets_to(port: int) -> list[socket.socket]:
    """This process's TCP sockets connected to 127.0.0.1:``port`` (duplicates: close them)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[1:2] == (port,):
                found.append(s)
                continue
        except OSError:
            pass
        s.close()
    return found


async def _one_request(nursery: trio.Nursery, cluster_extra: str) -> list[socket.socket]:
    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port], cluster_extra=cluster_extra))
    client = await Client.connect(proxy.port)
    try:
        resp, _ = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert resp.status_code == 200
    return _sockets_to(port)  # the pooled upstream connection, still open


async def test_tcp_keepalive_is_set_on_upstream_connections(nursery: trio.Nursery) -> None:
    extra = """
    upstream_connection_options:
      tcp_keepalive: {keepalive_probes: 3, keepalive_time: 17, keepalive_interval: 4}"""
    (sock,) = await _one_request(nursery, extra)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 17
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 4


async def test_an_empty_tcp_keepalive_keeps_the_system_timers(nursery: trio.Nursery) -> None:
    defaults = socket.socket()
    with defaults:
        idle = defaults.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    (sock,) = await _one_request(nursery, "\n    upstream_connection_options: {tcp_keepalive: {}}")
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle


async def test_without_options_there_is_no_keepalive(nursery: trio.Nursery) -> None:
    (sock,) = await _one_request(nursery, "")
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
