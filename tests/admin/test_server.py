"""The admin endpoint over a real socket, with a small in-test backend implementing the
``AdminBackend`` protocol and real upstream ``Cluster`` objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import h11
import pytest
import trio

from trioproxy.admin.backend import AdminBackend, ClusterView, ConfigDumpSources
from trioproxy.admin.server import serve_admin
from trioproxy.stats.store import Store
from trioproxy.upstream.cluster_manager import Cluster
from trioproxy.upstream.config import ClusterConfig

CLUSTER = {
    "name": "service",
    "type": "STATIC",
    "connect_timeout": "1s",
    "load_assignment": {
        "cluster_name": "service",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "10.0.0.1", "port_value": 3000}
                            }
                        }
                    }
                ]
            }
        ],
    },
}
LISTENER = {
    "name": "ingress",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
}
ROUTE = {"name": "local_route", "virtual_hosts": [{"name": "service", "domains": ["*"]}]}


@attrs.define
class Backend:
    stats: Store = attrs.field(factory=Store)
    ready: bool = True
    hc_failed: bool = False
    shutdown: bool = False
    cluster_list: list[Any] = attrs.field(factory=list)

    def config_dump_sources(self) -> ConfigDumpSources:
        return ConfigDumpSources(
            bootstrap={"node": {"id": "n1"}, "static_resources": {"clusters": [CLUSTER]}},
            bootstrap_last_updated=1_700_000_000.25,
            static_clusters=[(CLUSTER, 1_700_000_000.5)],
            static_listeners=[(LISTENER, 1_700_000_000.5)],
            static_route_configs=[(ROUTE, 1_700_000_000.5)],
        )

    def clusters(self) -> list[ClusterView]:
        return self.cluster_list

    def listeners(self) -> list[tuple[str, str]]:
        return [("ingress", "127.0.0.1:8000")]

    def server_info(self) -> dict[str, Any]:
        return {
            "version": "x/1.40.0/Clean/RELEASE/BoringSSL",
            "state": "LIVE" if self.ready else "INITIALIZING",
            "hot_restart_version": "disabled",
            "command_line_options": {},
            "node": {"id": "n1"},
            "uptime_current_epoch": "3s",
            "uptime_all_epochs": "3s",
        }

    def is_ready(self) -> bool:
        return self.ready

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.hc_failed = failed

    def request_shutdown(self) -> None:
        self.shutdown = True

    def reset_counters(self) -> None:
        self.stats.reset_counters()


def _typed(b: Backend) -> AdminBackend:
    return b  # the double satisfies the protocol (checked by mypy)


@pytest.fixture
async def admin(nursery: trio.Nursery) -> AsyncIterator[tuple[Backend, int]]:
    backend = Backend()
    cluster = Cluster(ClusterConfig.from_proto(CLUSTER), backend.stats)
    backend.cluster_list.append(cluster)
    backend.stats.counter("cluster.service.upstream_rq_200").value = 3
    port = await nursery.start(serve_admin, _typed(backend), "127.0.0.1", 0)
    yield backend, port


async def request(port: int, method: str, target: str) -> tuple[int, dict[str, str], str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    req = h11.Request(
        method=method, target=target, headers=[("host", "x"), ("connection", "close")]
    )
    await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
    status, headers, body = 0, {}, b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(ev, h11.Response):
            status = ev.status_code
            headers = {k.decode(): v.decode() for k, v in ev.headers}
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            break
    await stream.aclose()
    return status, headers, body.decode()


async def test_index_help_and_404(admin: tuple[Backend, int]) -> None:
    _, port = admin
    status, headers, body = await request(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "href='/stats'" in body
    status, _, body = await request(port, "GET", "/help")
    assert status == 200 and body.startswith("admin commands are:\n")
    assert "  /healthcheck/fail (POST): cause the server to fail health checks\n" in body
    status, _, body = await request(port, "GET", "/nope")
    assert status == 404 and body.startswith("invalid path. admin commands are:\n")


async def test_stats_formats(admin: tuple[Backend, int]) -> None:
    _, port = admin
    status, _, body = await request(port, "GET", "/stats?filter=upstream_rq_200")
    assert (status, body) == (200, "cluster.service.upstream_rq_200: 3\n")
    status, headers, body = await request(port, "GET", "/stats?format=json&filter=rq_200")
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["stats"][0] == {"name": "cluster.service.upstream_rq_200", "value": 3}
    status, _, body = await request(port, "GET", "/stats/prometheus?filter=rq_200")
    assert body == (
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="service"} 3\n'
    )
    status, _, body = await request(port, "GET", "/stats?format=prometheus&filter=rq_200")
    assert body.startswith("# TYPE envoy_cluster_upstream_rq counter\n")
    status, _, body = await request(port, "GET", "/stats?filter=(")
    assert status == 400 and body.startswith("Invalid re2 regex")
    status, _, _ = await request(port, "GET", "/stats?type=bad")
    assert status == 400


async def test_config_dump(admin: tuple[Backend, int]) -> None:
    _, port = admin
    status, _, body = await request(port, "GET", "/config_dump")
    assert status == 200
    configs = json.loads(body)["configs"]
    assert [c["@type"].rsplit(".", 1)[1] for c in configs] == [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "ScopedRoutesConfigDump",
        "RoutesConfigDump",
        "SecretsConfigDump",
    ]
    assert configs[0]["last_updated"] == "2023-11-14T22:13:20.250Z"
    clusters = configs[1]
    assert set(clusters) == {"@type", "static_clusters"}  # empty dynamic fields omitted
    assert clusters["static_clusters"][0]["cluster"]["@type"] == (
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    )
    assert clusters["static_clusters"][0]["last_updated"] == "2023-11-14T22:13:20.500Z"
    assert configs[3] == {"@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump"}
    assert configs[4]["static_route_configs"][0]["route_config"]["name"] == "local_route"

    _, _, body = await request(port, "GET", "/config_dump?resource=static_clusters")
    items = json.loads(body)["configs"]
    assert len(items) == 1
    assert items[0]["@type"] == (
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    )
    assert items[0]["cluster"]["name"] == "service"

    _, _, body = await request(
        port, "GET", "/config_dump?resource=static_clusters&mask=cluster.name"
    )
    assert json.loads(body)["configs"][0] == {
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster",
        "cluster": {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "service",
        },
    }
    _, _, body = await request(port, "GET", "/config_dump?resource=static_clusters&name_regex=^x")
    assert json.loads(body) == {"configs": []}
    _, _, body = await request(port, "GET", "/config_dump?name_regex=serv")
    dumps = json.loads(body)["configs"]
    assert "static_clusters" in dumps[1] and "static_listeners" not in dumps[2]
    status, _, body = await request(port, "GET", "/config_dump?resource=foo")
    assert (status, body) == (404, "foo not found in config dump")
    _, _, body = await request(port, "GET", "/config_dump?include_eds")
    types = [c["@type"].rsplit(".", 1)[1] for c in json.loads(body)["configs"]]
    assert types[2] == "EndpointsConfigDump"


async def test_clusters_text_and_json(admin: tuple[Backend, int]) -> None:
    backend, port = admin
    backend.cluster_list[0].hosts[0].rq_total = 4
    status, _, body = await request(port, "GET", "/clusters")
    assert status == 200
    lines = body.splitlines()
    assert lines[:3] == [
        "service::observability_name::service",
        "service::default_priority::max_connections::1024",
        "service::default_priority::max_pending_requests::1024",
    ]
    assert "service::high_priority::max_retries::3" in lines
    assert "service::added_via_api::false" in lines
    assert "service::10.0.0.1:3000::cx_active::0" in lines
    assert "service::10.0.0.1:3000::rq_total::4" in lines
    assert "service::10.0.0.1:3000::health_flags::healthy" in lines
    _, _, body = await request(port, "GET", "/clusters?format=json")
    status_ = json.loads(body)["cluster_statuses"][0]
    assert status_["name"] == "service"
    host = status_["host_statuses"][0]
    assert host["address"] == {"socket_address": {"address": "10.0.0.1", "port_value": 3000}}
    assert {"value": "4", "name": "rq_total"} in host["stats"]
    assert status_["circuit_breakers"]["thresholds"][0]["max_connections"] == 1024


async def test_listeners_ready_server_info_memory_certs(admin: tuple[Backend, int]) -> None:
    backend, port = admin
    assert (await request(port, "GET", "/listeners"))[2] == "ingress::127.0.0.1:8000\n"
    body = json.loads((await request(port, "GET", "/listeners?format=json"))[2])
    assert body["listener_statuses"][0]["local_address"]["socket_address"]["port_value"] == 8000
    assert (await request(port, "GET", "/ready"))[::2] == (200, "LIVE\n")
    backend.ready = False
    assert (await request(port, "GET", "/ready"))[0] == 503
    info = json.loads((await request(port, "GET", "/server_info"))[2])
    assert info["state"] == "INITIALIZING"
    mem = json.loads((await request(port, "GET", "/memory"))[2])
    assert int(mem["allocated"]) > 0
    assert json.loads((await request(port, "GET", "/certs"))[2]) == {"certificates": []}


@pytest.mark.parametrize(
    "path",
    [
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/reset_counters",
        "/quitquitquit",
        "/logging",
        "/logging?level=debug",
        "/runtime_modify",
    ],
)
async def test_mutations_need_post(admin: tuple[Backend, int], path: str) -> None:
    backend, port = admin
    status, _, body = await request(port, "GET", path)
    assert (status, body) == (405, "Method GET not allowed, POST required.")
    assert not backend.shutdown and not backend.hc_failed


async def test_mutations_by_post(admin: tuple[Backend, int]) -> None:
    backend, port = admin
    assert (await request(port, "POST", "/healthcheck/fail"))[0] == 200
    assert backend.hc_failed
    assert (await request(port, "POST", "/healthcheck/ok"))[0] == 200
    assert not backend.hc_failed
    assert (await request(port, "POST", "/reset_counters"))[0] == 200
    assert backend.stats.counter("cluster.service.upstream_rq_200").value == 0
    status, _, body = await request(port, "POST", "/logging?level=debug")
    assert status == 200 and "trioproxy: debug" in body
    await request(port, "POST", "/logging?level=info")
    assert (await request(port, "POST", "/logging?level=bogus"))[::2] == (
        400,
        "error: unknown logger level\n",
    )
    assert (await request(port, "POST", "/runtime_modify"))[0] == 400
    assert (await request(port, "POST", "/quitquitquit"))[0] == 200
    assert backend.shutdown
