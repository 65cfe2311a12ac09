"""Helpers for upstream tests: a cluster config pointing at a local port, a tiny echo server."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trioproxy.stats import Store
from trioproxy.upstream.cluster_manager import Cluster
from trioproxy.upstream.config import ClusterConfig


def cluster_dict(
    port: int, *, address: str = "127.0.0.1", type: str = "STATIC", **extra: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "backend",
        "type": type,
        "connect_timeout": "1s",
        "load_assignment": {
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": address, "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ]
        },
    }
    d.update(extra)
    return d


def make_cluster(port: int, **extra: Any) -> Cluster:
    return Cluster(ClusterConfig.from_proto(cluster_dict(port, **extra)), Store())


class EchoServer:
    """Echoes each chunk; closes a connection after ``close_after`` chunks when set."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.close_after: int | None = None
        self.closed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        n = 0
        async with stream:
            async for chunk in stream:
                await stream.send_all(chunk)
                n += 1
                if self.close_after is not None and n >= self.close_after:
                    break
        self.closed.set()


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> AsyncIterator[EchoServer]:
    server = EchoServer()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), server.handle, 0
    )
    server.port = listeners[0].socket.getsockname()[1]
    yield server
