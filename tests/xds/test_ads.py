"""ADS against an independent grpcio server: ACK, NACK, stale nonces, reconnect, warming,
removal — asserted on what a client, the control plane and /config_dump see."""

from __future__ import annotations

import json

import trio

from tests.support import Backend, free_ports, raw_exchange, start_proxy, until
from tests.xds.resources import (
    CDS,
    EDS,
    LDS,
    RDS,
    assignment,
    bootstrap,
    cluster,
    eds_cluster,
    listener,
    route,
)
from trioproxy.testing.xds_server import AdsServer


async def served(port: int, marker: bytes, timeout: float = 10.0) -> None:
    """Wait until a request on ``port`` gets a response containing ``marker``."""
    with trio.fail_after(timeout):
        while marker not in await get(port):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def get(port: int) -> bytes:
    try:
        return await raw_exchange(
            port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3
        )
    except OSError:
        return b"REFUSED"


async def admin_json(port: int, path: str) -> dict:  # type: ignore[type-arg]
    raw = await raw_exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def serve_v(ads: AdsServer, version: str, backend_port: int, listen_port: int) -> None:
    ads.set(CDS, version, [cluster("example_proxy_cluster", backend_port)])
    ads.set(LDS, version, [listener("listener_0", listen_port)])
    ads.set(RDS, version, [route("local_route", "example_proxy_cluster")])


async def test_ads_brings_up_listener_cluster_and_routes_and_acks(
    nursery: trio.Nursery, ads: AdsServer
) -> None:
    backend = Backend(name="service1")
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    dump = await admin_json(proxy.admin_port, "/config_dump")
    assert "dynamic_active_clusters" not in dump["configs"][1]
    assert await get(lport) == b"REFUSED"

    serve_v(ads, "1", bport, lport)
    await served(lport, b"service1")

    # The proxy ACKed each type: version 1 with the nonce of the response it accepted.
    await until(lambda: any(r.get("version_info") == "1" for r in ads.requests_of(RDS)))
    first = ads.requests[0][1]
    assert first["node"]["id"] == "test-id"
    assert first["type_url"] == CDS and "response_nonce" not in first
    acks = [r for r in ads.requests_of(CDS) if r.get("version_info") == "1"]
    assert acks and acks[0]["response_nonce"] and "error_detail" not in acks[0]
    assert ads.requests_of(RDS)[0]["resource_names"] == ["local_route"]

    dump = await admin_json(proxy.admin_port, "/config_dump")
    clusters = dump["configs"][1]
    assert clusters["version_info"] == "1"
    (dyn,) = clusters["dynamic_active_clusters"]
    assert dyn["version_info"] == "1"
    assert dyn["cluster"]["name"] == "example_proxy_cluster"
    listeners = dump["configs"][2]
    assert listeners["dynamic_listeners"][0]["active_state"]["version_info"] == "1"
    routes = dump["configs"][4]
    assert routes["dynamic_route_configs"][0]["route_config"]["name"] == "local_route"
    assert proxy.stat("cluster_manager.cds.update_success") == 1
    assert proxy.stat("listener_manager.lds.update_success") == 1
    assert proxy.stat("control_plane.connected_state") == 1


async def test_nack_keeps_last_good_config(nursery: trio.Nursery, ads: AdsServer) -> None:
    backend = Backend(name="service1")
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    serve_v(ads, "1", bport, lport)
    await served(lport, b"service1")
    await until(lambda: any(r.get("version_info") == "1" for r in ads.requests_of(CDS)))

    bad = cluster("example_proxy_cluster", bport, connect_timeout="0s")
    ads.set(CDS, "2", [bad])
    await until(lambda: any("error_detail" in r for r in ads.requests_of(CDS)))
    nack = next(r for r in ads.requests_of(CDS) if "error_detail" in r)
    assert nack["version_info"] == "1"  # the last good version, not the rejected one
    assert nack["response_nonce"]
    assert "connect_timeout" in nack["error_detail"]["message"]
    assert b"service1" in await get(lport)
    assert proxy.stat("cluster_manager.cds.update_rejected") == 1

    dump = await admin_json(proxy.admin_port, "/config_dump")
    entries = dump["configs"][1]["dynamic_active_clusters"]
    assert [e["version_info"] for e in entries if "cluster" in e] == ["1"]
    (err,) = [e["error_state"] for e in entries if "error_state" in e]
    assert err["version_info"] == "2" and "connect_timeout" in err["details"]

    # A fixed version 3 is accepted and clears the error.
    ads.set(CDS, "3", [cluster("example_proxy_cluster", bport)])
    await until(lambda: any(r.get("version_info") == "3" for r in ads.requests_of(CDS)))
    dump = await admin_json(proxy.admin_port, "/config_dump")
    assert all("error_state" not in e for e in dump["configs"][1]["dynamic_active_clusters"])


async def test_reconnect_resumes_with_last_version_and_keeps_serving(
    nursery: trio.Nursery,
) -> None:
    ads = AdsServer()
    xport = ads.start()
    backend = Backend(name="service1")
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(xport))
    serve_v(ads, "1", bport, lport)
    await served(lport, b"service1")
    await until(lambda: any(r.get("version_info") == "1" for r in ads.requests_of(LDS)))
    ads.stop()
    await until(lambda: proxy.stat("control_plane.connected_state") == 0)
    assert b"service1" in await get(lport)  # the last configuration stays

    again = AdsServer()
    try:
        again.start(xport)
        backend2 = Backend(name="service2")
        bport2 = await nursery.start(backend2.serve)
        serve_v(again, "2", bport2, lport)
        await until(lambda: again.requests_of(CDS), 40)
        resumed = again.requests_of(CDS)[0]
        assert resumed["version_info"] == "1" and "response_nonce" not in resumed
        await served(lport, b"service2")
    finally:
        again.stop()


async def test_stale_nonce_dropping_server(nursery: trio.Nursery) -> None:
    """go-control-plane drops requests with a stale nonce; ACKs must carry the latest one."""
    ads = AdsServer(drop_stale_nonce=True)
    ads.start()
    try:
        backend = Backend(name="service1")
        bport = await nursery.start(backend.serve)
        (lport,) = free_ports(1)
        await start_proxy(nursery, bootstrap(ads.port))
        serve_v(ads, "1", bport, lport)
        await served(lport, b"service1")
        for v in ("2", "3"):
            ads.set(CDS, v, [cluster("example_proxy_cluster", bport)])
        await until(lambda: any(r.get("version_info") == "3" for r in ads.requests_of(CDS)))
    finally:
        ads.stop()


async def test_eds_cluster_warms_until_endpoints_arrive(
    nursery: trio.Nursery, ads: AdsServer
) -> None:
    backend = Backend(name="eds-backend")
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    ads.set(CDS, "1", [eds_cluster("eds_cluster")])
    await until(lambda: ads.requests_of(EDS))
    assert ads.requests_of(EDS)[0]["resource_names"] == ["eds_cluster"]
    dump = await admin_json(proxy.admin_port, "/config_dump")
    (warming,) = dump["configs"][1]["dynamic_warming_clusters"]
    assert warming["cluster"]["name"] == "eds_cluster"
    assert "dynamic_active_clusters" not in dump["configs"][1]

    ads.set(EDS, "1", [assignment("eds_cluster", bport)])
    ads.set(LDS, "1", [listener("listener_0", lport)])
    ads.set(RDS, "1", [route("local_route", "eds_cluster")])
    await served(lport, b"eds-backend")
    dump = await admin_json(proxy.admin_port, "/config_dump")
    assert "dynamic_warming_clusters" not in dump["configs"][1]
    assert dump["configs"][1]["dynamic_active_clusters"][0]["cluster"]["name"] == "eds_cluster"


async def test_listener_warms_until_its_routes_arrive_then_removal_closes_it(
    nursery: trio.Nursery, ads: AdsServer
) -> None:
    backend = Backend(name="service1")
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    ads.set(CDS, "1", [cluster("example_proxy_cluster", bport)])
    ads.set(LDS, "1", [listener("listener_0", lport)])
    await until(lambda: ads.requests_of(RDS))
    dump = await admin_json(proxy.admin_port, "/config_dump")
    (dl,) = dump["configs"][2]["dynamic_listeners"]
    assert "warming_state" in dl and "active_state" not in dl
    assert await get(lport) == b"REFUSED"

    ads.set(RDS, "1", [route("local_route", "example_proxy_cluster")])
    await served(lport, b"service1")

    ads.set(LDS, "2", [])
    ads.set(CDS, "2", [])
    await until(lambda: proxy.stat("listener_manager.listener_removed") == 1)
    await served(lport, b"REFUSED")
    await until(lambda: proxy.stat("cluster_manager.cluster_removed") == 1)
    dump = await admin_json(proxy.admin_port, "/config_dump")
    assert "dynamic_active_clusters" not in dump["configs"][1]
    assert "dynamic_listeners" not in dump["configs"][2]


async def test_route_tables_naming_unknown_clusters_are_nacked_as_envoy_does(
    nursery: trio.Nursery, ads: AdsServer
) -> None:
    """``validate_clusters``: off by default for RDS (a route to a missing cluster answers 503),
    refused when the table asks for it; on by default for a listener's inline table."""
    backend = Backend(name="service1")
    bport = await nursery.start(backend.serve)
    lport, inline_port = free_ports(2)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    serve_v(ads, "1", bport, lport)
    await served(lport, b"service1")

    checked = {**route("local_route", "missing"), "validate_clusters": True}
    ads.set(RDS, "2", [checked])
    await until(lambda: any("error_detail" in r for r in ads.requests_of(RDS)))
    nack = next(r for r in ads.requests_of(RDS) if "error_detail" in r)
    assert "route: unknown cluster 'missing'" in nack["error_detail"]["message"]
    assert nack["version_info"] == "1"
    assert b"service1" in await get(lport)

    ads.set(RDS, "3", [route("local_route", "missing")])  # not checked: served, 503 NC
    await until(lambda: any(r.get("version_info") == "3" for r in ads.requests_of(RDS)))
    assert (await get(lport)).startswith(b"HTTP/1.1 503 ")

    inline = listener("inline", inline_port)
    hcm = inline["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = route("inline_route", "missing")
    ads.set(LDS, "2", [listener("listener_0", lport), inline])
    await until(lambda: any("error_detail" in r for r in ads.requests_of(LDS)))
    nack = next(r for r in ads.requests_of(LDS) if "error_detail" in r)
    assert "route: unknown cluster 'missing'" in nack["error_detail"]["message"]
    assert await get(inline_port) == b"REFUSED"
    assert proxy.stat("listener_manager.lds.update_rejected") == 1
