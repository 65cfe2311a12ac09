"""udp_proxy through real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from typing import Any

import attrs
import trio

from tests.support import Proxy, start_proxy, until

UDP_PROXY = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
SOURCE_PORT = (
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput"
)


@attrs.define
class Upstream:
    sock: trio.socket.SocketType
    port: int
    received: list[tuple[bytes, tuple[str, int]]] = attrs.field(factory=list)
    echo: bool = False

    async def run(self) -> None:
        with self.sock:
            while True:
                data, addr = await self.sock.recvfrom(65535)
                self.received.append((data, addr))
                if self.echo:
                    await self.sock.sendto(b"re:" + data, addr)


async def upstream(nursery: trio.Nursery, *, echo: bool = False) -> Upstream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    up = Upstream(sock, sock.getsockname()[1], echo=echo)
    nursery.start_soon(up.run)
    return up


def cluster(name: str, *ports: int) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def bootstrap(proxy: dict[str, Any], clusters: list[dict[str, Any]], **listener: Any) -> str:
    return json.dumps(
        {
            "static_resources": {
                "listeners": [
                    {
                        "name": "udp",
                        "address": {
                            "socket_address": {
                                "protocol": "UDP",
                                "address": "127.0.0.1",
                                "port_value": 0,
                            }
                        },
                        "listener_filters": [
                            {
                                "name": "envoy.filters.udp_listener.udp_proxy",
                                "typed_config": {
                                    "@type": UDP_PROXY,
                                    "stat_prefix": "service",
                                    **proxy,
                                },
                            }
                        ],
                        **listener,
                    }
                ],
                "clusters": clusters,
            }
        }
    )


def client(port: int = 0) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock._sock.bind(("127.0.0.1", port))  # synchronous bind: tests pick ports themselves
    return sock


async def test_the_demo_two_clients_two_sessions(nursery: trio.Nursery) -> None:
    up = await upstream(nursery)
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {
                "matcher": {
                    "on_no_match": {
                        "action": {
                            "name": "route",
                            "typed_config": {"@type": ROUTE, "cluster": "service_udp"},
                        }
                    }
                }
            },
            [cluster("service_udp", up.port)],
        ),
    )
    with client() as c1, client() as c2:  # open together: two addresses, two sessions
        await c1.sendto(b"HELO", ("127.0.0.1", proxy.port))
        await c2.sendto(b"OLEH", ("127.0.0.1", proxy.port))
    await until(lambda: len(up.received) == 2)
    assert sorted(d for d, _ in up.received) == [b"HELO", b"OLEH"]
    assert up.received[0][1] != up.received[1][1]  # one upstream socket per session
    assert proxy.stat("udp.service.downstream_sess_total") == 2
    assert proxy.stat("udp.service.downstream_sess_active") == 2
    assert proxy.stat("udp.service.downstream_sess_rx_datagrams") == 2
    assert proxy.stat("udp.service.downstream_sess_rx_bytes") == 8
    assert proxy.stat("cluster.service_udp.udp.sess_tx_datagrams") == 2
    assert proxy.stat("cluster.service_udp.upstream_cx_tx_bytes_total") == 8
    assert proxy.stat("cluster.service_udp.default.total_match_count") == 1


async def test_replies_come_back_from_the_listener_address(nursery: trio.Nursery) -> None:
    up = await upstream(nursery, echo=True)
    proxy = await start_proxy(nursery, bootstrap({"cluster": "c"}, [cluster("c", up.port)]))
    with client() as c:
        for i in range(3):
            await c.sendto(b"ping%d" % i, ("127.0.0.1", proxy.port))
            with trio.fail_after(5):
                data, addr = await c.recvfrom(100)
            assert data == b"re:ping%d" % i
            assert addr == ("127.0.0.1", proxy.port)
    assert proxy.stat("udp.service.downstream_sess_total") == 1
    assert proxy.stat("udp.service.downstream_sess_tx_datagrams") == 3
    assert proxy.stat("cluster.c.udp.sess_rx_datagrams") == 3


async def test_idle_sessions_end(nursery: trio.Nursery) -> None:
    up = await upstream(nursery)
    proxy = await start_proxy(
        nursery, bootstrap({"cluster": "c", "idle_timeout": "0.2s"}, [cluster("c", up.port)])
    )
    with client() as c:
        await c.sendto(b"one", ("127.0.0.1", proxy.port))
        await until(lambda: proxy.stat("udp.service.idle_timeout") == 1)
        assert proxy.stat("udp.service.downstream_sess_active") == 0
        await c.sendto(b"two", ("127.0.0.1", proxy.port))
        await until(lambda: len(up.received) == 2)
    assert proxy.stat("udp.service.downstream_sess_total") == 2


async def test_matcher_routes_sessions_by_source_port(nursery: trio.Nursery) -> None:
    a = await upstream(nursery)
    b = await upstream(nursery)
    special = client()
    special_port = special.getsockname()[1]

    def route(cluster: str) -> dict[str, Any]:
        return {"action": {"name": "route", "typed_config": {"@type": ROUTE, "cluster": cluster}}}

    matcher = {
        "matcher_list": {
            "matchers": [
                {
                    "predicate": {
                        "single_predicate": {
                            "input": {"name": "port", "typed_config": {"@type": SOURCE_PORT}},
                            "value_match": {"exact": str(special_port)},
                        }
                    },
                    "on_match": route("b"),
                }
            ]
        },
        "on_no_match": route("a"),
    }
    proxy = await start_proxy(
        nursery, bootstrap({"matcher": matcher}, [cluster("a", a.port), cluster("b", b.port)])
    )
    with special, client() as other:
        await special.sendto(b"to b", ("127.0.0.1", proxy.port))
        await other.sendto(b"to a", ("127.0.0.1", proxy.port))
        await until(lambda: a.received and b.received)
    assert [d for d, _ in a.received] == [b"to a"]
    assert [d for d, _ in b.received] == [b"to b"]


async def test_per_packet_load_balancing(nursery: trio.Nursery) -> None:
    a = await upstream(nursery)
    b = await upstream(nursery)
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {"cluster": "c", "use_per_packet_load_balancing": True}, [cluster("c", a.port, b.port)]
        ),
    )
    with client() as c:
        for i in range(4):
            await c.sendto(b"%d" % i, ("127.0.0.1", proxy.port))
        await until(lambda: len(a.received) + len(b.received) == 4)
    assert len(a.received) == len(b.received) == 2
    assert proxy.stat("udp.service.downstream_sess_total") == 1


async def test_oversized_datagrams_are_dropped_not_cut(nursery: trio.Nursery) -> None:
    up = await upstream(nursery)
    proxy: Proxy = await start_proxy(
        nursery,
        bootstrap(
            {"cluster": "c"},
            [cluster("c", up.port)],
            udp_listener_config={"downstream_socket_config": {"max_rx_datagram_size": 100}},
        ),
    )
    with client() as c:
        await c.sendto(b"x" * 101, ("127.0.0.1", proxy.port))
        await c.sendto(b"y" * 100, ("127.0.0.1", proxy.port))
        await until(lambda: up.received)
    assert [d for d, _ in up.received] == [b"y" * 100]
    assert proxy.stat("listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped") == 1


async def test_no_route_counts(nursery: trio.Nursery) -> None:
    proxy = await start_proxy(nursery, bootstrap({"cluster": "missing"}, []))
    with client() as c:
        await c.sendto(b"lost", ("127.0.0.1", proxy.port))
        await until(lambda: proxy.stat("udp.service.downstream_sess_no_route") == 1)


async def test_hash_policy_on_source_ip_pins_a_client_to_a_host(nursery: trio.Nursery) -> None:
    ups = [await upstream(nursery) for _ in range(3)]
    maglev = cluster("c", *(u.port for u in ups)) | {"lb_policy": "MAGLEV"}
    proxy = await start_proxy(
        nursery,
        bootstrap(
            {
                "cluster": "c",
                "use_per_packet_load_balancing": True,
                "hash_policies": [{"source_ip": True}],
            },
            [maglev],
        ),
    )
    with client() as c:
        for i in range(6):
            await c.sendto(b"%d" % i, ("127.0.0.1", proxy.port))
        await until(lambda: sum(len(u.received) for u in ups) == 6)
    # every datagram picked a host, and the source IP's hash picked the same one each time
    assert sorted(len(u.received) for u in ups) == [0, 0, 6]
