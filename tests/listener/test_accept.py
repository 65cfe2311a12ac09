"""The accept loop takes every pending connection per wake-up (as Envoy's listener does), or
at most ``max_connections_to_accept_per_socket_event``; each is served either way."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from tests.support import Backend, Reply, free_ports, simple_config, start_proxy
from trioproxy.errors import ConfigError

HISTOGRAM = "listener.127.0.0.1_0.connections_accepted_per_socket_event"


def _with_accept_limit(config: str, limit: Any) -> str:
    return config.replace(
        "  - name: main\n",
        f"  - name: main\n    max_connections_to_accept_per_socket_event: {limit}\n",
        1,
    )


def _samples(proxy: Any) -> tuple[int, float]:
    for h in proxy.server.store.histograms():
        if h.name == HISTOGRAM:
            return h.count, h.sum
    raise KeyError(HISTOGRAM)


async def _pending_connections_served(nursery: trio.Nursery, limit: Any) -> tuple[int, float]:
    """Five clients connect while the listener has no chance to run (blocking connects,
    no checkpoint), then each sends a request: every one is answered."""
    backend = Backend()
    backend.handler = lambda r: Reply(body=b"ok")
    await nursery.start(backend.serve)
    config = simple_config([backend.port])
    if limit is not None:
        config = _with_accept_limit(config, limit)
    proxy = await start_proxy(nursery, config)
    clients = []
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", proxy.port))
        clients.append(c)
    try:
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            c.setblocking(False)
        with trio.fail_after(10):
            for c in clients:
                answer = b""
                while True:
                    await trio.lowlevel.wait_readable(c)
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
                assert answer.endswith(b"\r\n\r\nok")
        return _samples(proxy)
    finally:
        for c in clients:
            c.close()


async def test_all_pending_connections_accepted_in_one_wake_up(nursery: trio.Nursery) -> None:
    count, total = await _pending_connections_served(nursery, 100)
    assert (count, total) == (1, 5)


async def test_accepts_per_wake_up_are_limited(nursery: trio.Nursery) -> None:
    count, total = await _pending_connections_served(nursery, 2)
    assert (count, total) == (3, 5)  # 2, 2, 1


async def test_unset_limit_records_nothing(nursery: trio.Nursery) -> None:
    """Envoy records the histogram only when the field is set."""
    count, _ = await _pending_connections_served(nursery, None)
    assert count == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [(0, "must be greater than 0"), ("many", "invalid value 'many' for uint32")],
)
async def test_bad_limit_names_the_field(nursery: trio.Nursery, value: Any, reason: str) -> None:
    (port,) = free_ports(1)
    with pytest.raises(ConfigError) as info:
        await start_proxy(nursery, _with_accept_limit(simple_config([port]), repr(value)))
    message = str(info.value)
    assert "max_connections_to_accept_per_socket_event" in message
    assert reason in message
    assert message.startswith("<config-yaml>:5:5: ")  # the field's line and column
