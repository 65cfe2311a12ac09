"""Config sources other than ADS — watched files — and the server's initial fetch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from tests.support import Backend, free_ports, raw_exchange, start_proxy, until
from tests.xds.resources import CDS, LDS, cluster, listener, route
from tests.xds.test_ads import served
from trioproxy.testing.xds_server import AdsServer

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _write(path: Path, version: str, type_url: str, resources: list[dict]) -> None:  # type: ignore[type-arg]
    """Replace the file atomically, as Envoy's docs recommend (a move, not a rewrite)."""
    tmp = path.with_suffix(".tmp")
    body = {"version_info": version, "resources": [{"@type": type_url, **r} for r in resources]}
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def _inline_listener(port: int, cluster_name: str) -> dict:  # type: ignore[type-arg]
    lst = listener("files", port)
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = route("inline", cluster_name)
    return lst


async def test_clusters_and_listeners_from_watched_files(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    b1, b2 = Backend(name="one"), Backend(name="two")
    p1, p2 = await nursery.start(b1.serve), await nursery.start(b2.serve)
    (lport,) = free_ports(1)
    cds, lds = tmp_path / "cds.json", tmp_path / "lds.json"
    _write(cds, "1", CDS, [cluster("c", p1)])
    _write(lds, "1", LDS, [_inline_listener(lport, "c")])
    proxy = await start_proxy(
        nursery,
        f"""
        dynamic_resources:
          cds_config: {{path_config_source: {{path: {cds}}}, resource_api_version: V3}}
          lds_config: {{path_config_source: {{path: {lds}}}, resource_api_version: V3}}
        admin:
          address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
        """,
    )
    await served(lport, b"one")

    _write(cds, "2", CDS, [cluster("c", p2)])
    await served(lport, b"two")
    assert proxy.stat("cluster_manager.cds.update_success") == 2

    # A bad file is rejected whole; the last good clusters stay.
    cds.write_text('{"version_info": "3", "resources": [{"@type": "nonsense"}]}')
    await until(lambda: proxy.stat("cluster_manager.cds.update_rejected") == 1)
    await served(lport, b"two")


async def test_ready_only_after_the_initial_fetch(nursery: trio.Nursery, ads: AdsServer) -> None:
    from tests.xds.resources import bootstrap

    b = Backend(name="one")
    port = await nursery.start(b.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))

    async def ready() -> bytes:
        return await raw_exchange(
            proxy.admin_port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )

    assert (await ready()).startswith(b"HTTP/1.1 503") and b"INITIALIZING" in await ready()
    ads.set(CDS, "1", [cluster("c", port)])
    ads.set(LDS, "1", [_inline_listener(lport, "c")])
    await until(lambda: proxy.server.state == "LIVE")
    assert (await ready()).startswith(b"HTTP/1.1 200")
    await served(lport, b"one")


async def test_initial_fetch_timeout_goes_live_without_a_control_plane(
    nursery: trio.Nursery,
) -> None:
    (dead,) = free_ports(1)  # nothing listens there
    from tests.xds.resources import bootstrap

    text = (
        bootstrap(dead)
        .replace(
            "cds_config: {ads: {}, resource_api_version: V3}",
            "cds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0.3s}",
        )
        .replace(
            "lds_config: {ads: {}, resource_api_version: V3}",
            "lds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0.3s}",
        )
    )
    proxy = await start_proxy(nursery, text)
    assert proxy.server.state == "INITIALIZING"
    await until(lambda: proxy.server.state == "LIVE", 5)
    assert proxy.stat("cluster_manager.cds.init_fetch_timeout") == 1
    assert proxy.stat("listener_manager.lds.init_fetch_timeout") == 1
    assert proxy.stat("control_plane.connected_state") == 0
