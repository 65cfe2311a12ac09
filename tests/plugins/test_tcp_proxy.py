"""tcp_proxy and filter-chain matching through real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests.support import Proxy, start_proxy

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        **extra,
    }


def tcp_chain(**proxy: Any) -> dict[str, Any]:
    return {
        "filters": [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": TCP_PROXY, "stat_prefix": "tcp", **proxy},
            }
        ]
    }


def bootstrap(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> str:
    listener = {
        "name": "l4",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        **listener,
    }
    return json.dumps({"static_resources": {"listeners": [listener], "clusters": clusters}})


async def start_upstream(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def listener_prefix(proxy: Proxy) -> str:
    return f"listener.{proxy.server.listeners[0].config.stat_name}"


async def shouting_echo(stream: trio.SocketStream) -> None:
    """Reads to EOF, then answers everything upper-cased and closes (needs half-close)."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.send_all(data.upper())
    await stream.aclose()


async def read_all(stream: trio.SocketStream) -> bytes:
    out = b""
    while chunk := await stream.receive_some(65536):
        out += chunk
    return out


async def test_bytes_flow_both_ways_with_half_close_and_are_counted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_upstream(nursery, shouting_echo)
    log = tmp_path / "tcp.log"
    fmt = "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS%\n"
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": fmt}},
            },
        }
    ]
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {"filter_chains": [tcp_chain(cluster="echo", access_log=access_log)]},
            [cluster("echo", up)],
        ),
    )
    payload = b"hello through the proxy " * 5000  # larger than any one buffer
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stream.send_all(payload)
    await stream.send_eof()
    assert await read_all(stream) == payload.upper()
    await stream.aclose()
    with trio.fail_after(5):
        while proxy.stat(f"{listener_prefix(proxy)}.downstream_cx_destroy") != 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    n = len(payload)
    assert proxy.stat("tcp.tcp.downstream_cx_total") == 1
    assert proxy.stat("tcp.tcp.downstream_cx_rx_bytes_total") == n
    assert proxy.stat("tcp.tcp.downstream_cx_tx_bytes_total") == n
    assert proxy.stat("cluster.echo.upstream_cx_total") == 1
    assert proxy.stat("cluster.echo.upstream_cx_tx_bytes_total") == n
    assert proxy.stat("cluster.echo.upstream_cx_rx_bytes_total") == n
    assert proxy.stat("cluster.echo.upstream_cx_active") == 0
    from trioproxy.accesslog.loggers import flush_all

    flush_all()
    assert log.read_text() == f"127.0.0.1:{up} echo {n} {n} -\n"


async def test_connect_failures_are_retried_then_closed_with_uf(nursery: trio.Nursery) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens: connection refused
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {"filter_chains": [tcp_chain(cluster="dead", max_connect_attempts=3)]},
            [cluster("dead", port)],
        ),
    )
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        with trio.fail_after(5):
            assert await read_all(stream) == b""
    assert proxy.stat("cluster.dead.upstream_cx_connect_fail") == 3
    assert proxy.stat("cluster.dead.upstream_cx_connect_attempts_exceeded") == 1
    assert proxy.stat("cluster.dead.upstream_cx_active") == 0


async def test_unknown_cluster_counts_no_route(nursery: trio.Nursery) -> None:
    proxy = await start_proxy(
        nursery, bootstrap({"filter_chains": [tcp_chain(cluster="later_via_cds")]}, [])
    )
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        with trio.fail_after(5):
            assert await read_all(stream) == b""
    assert proxy.stat("tcp.tcp.downstream_cx_no_route") == 1


async def test_idle_timeout_closes_both_sides(nursery: trio.Nursery) -> None:
    upstream_closed = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        await read_all(stream)
        upstream_closed.set()

    up = await start_upstream(nursery, hold)
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {"filter_chains": [tcp_chain(cluster="c", idle_timeout="0.3s")]}, [cluster("c", up)]
        ),
    )
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(b"x")
        with trio.fail_after(5):
            assert await read_all(stream) == b""
            await upstream_closed.wait()
    assert proxy.stat("tcp.tcp.idle_timeout") == 1


async def test_weighted_clusters_split_connections(nursery: trio.Nursery) -> None:
    seen: list[str] = []

    def named(name: str) -> Any:
        async def handler(stream: trio.SocketStream) -> None:
            seen.append(name)
            await stream.send_all(name.encode())
            await stream.aclose()

        return handler

    a = await start_upstream(nursery, named("a"))
    b = await start_upstream(nursery, named("b"))
    weighted = {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {"filter_chains": [tcp_chain(weighted_clusters=weighted)]},
            [cluster("a", a), cluster("b", b)],
        ),
    )
    answers = []
    for _ in range(40):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        answers.append(await read_all(stream))
        await stream.aclose()
    assert set(answers) == {b"a", b"b"}
    assert (
        proxy.stat("cluster.a.upstream_cx_total") + proxy.stat("cluster.b.upstream_cx_total") == 40
    )


async def named_upstream(nursery: trio.Nursery, name: str) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(name.encode())
        await stream.aclose()

    return await start_upstream(nursery, handler)


async def connect_from(source: str, port: int, dest: str = "127.0.0.1") -> bytes:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((dest, port))
    stream = trio.SocketStream(sock)
    try:
        return await read_all(stream)
    finally:
        await stream.aclose()


async def test_filter_chains_are_chosen_by_source_and_destination(nursery: trio.Nursery) -> None:
    a = await named_upstream(nursery, "a")
    b = await named_upstream(nursery, "b")
    c = await named_upstream(nursery, "c")
    from_two = {"source_prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}
    to_three = {"prefix_ranges": [{"address_prefix": "127.0.0.3", "prefix_len": 32}]}
    listener = {
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 0}},
        "filter_chains": [
            {"filter_chain_match": from_two, **tcp_chain(cluster="b")},
            {"filter_chain_match": to_three, **tcp_chain(cluster="c")},
        ],
        "default_filter_chain": tcp_chain(cluster="a"),
    }
    proxy = await start_proxy(
        nursery, bootstrap(listener, [cluster("a", a), cluster("b", b), cluster("c", c)])
    )
    with trio.fail_after(5):
        assert await connect_from("127.0.0.1", proxy.port) == b"a"
        assert await connect_from("127.0.0.2", proxy.port) == b"b"
        assert await connect_from("127.0.0.2", proxy.port, dest="127.0.0.3") == b"c"


async def test_no_matching_chain_closes_and_counts(nursery: trio.Nursery) -> None:
    a = await named_upstream(nursery, "a")
    only_from_two = {"source_prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}
    listener = {"filter_chains": [{"filter_chain_match": only_from_two, **tcp_chain(cluster="a")}]}
    proxy = await start_proxy(nursery, bootstrap(listener, [cluster("a", a)]))
    with trio.fail_after(5):
        assert await connect_from("127.0.0.1", proxy.port) == b""
        assert await connect_from("127.0.0.2", proxy.port) == b"a"
    assert proxy.stat(f"{listener_prefix(proxy)}.no_filter_chain_match") == 1
    assert proxy.stat(f"{listener_prefix(proxy)}.downstream_cx_total") == 1
