"""100 configuration pushes while HTTP/1.1 and HTTP/2 clients send steady traffic: no request
fails or is reset. (An HTTP/2 request the proxy refused with GOAWAY before processing it is
retried on a new connection, as every HTTP/2 client does; it is counted, not failed.)"""

from __future__ import annotations

import h11
import trio

from tests.h2client import H2Client, H2Error
from tests.support import Backend, Client, free_ports, start_proxy
from tests.xds.resources import CDS, LDS, RDS, bootstrap, cluster, listener, route
from tests.xds.test_ads import served
from trioproxy.testing.xds_server import AdsServer

PUSHES = 100


async def test_pushes_under_http1_traffic_lose_nothing(
    nursery: trio.Nursery, ads: AdsServer
) -> None:
    b1, b2 = Backend(name="one"), Backend(name="two")
    p1 = await nursery.start(b1.serve)
    p2 = await nursery.start(b2.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port), drain_time=2.0)
    ads.set(CDS, "0", [cluster("c", p1)])
    ads.set(LDS, "0", [listener("l", lport)])
    ads.set(RDS, "0", [route("local_route", "c")])
    await served(lport, b"one")

    ok = 0
    failures: list[str] = []
    stop = trio.Event()

    async def keep_alive_client() -> None:
        nonlocal ok
        client = await Client.connect(lport)
        while not stop.is_set():
            try:
                resp, body = await client.request("GET", "/")
            except Exception as exc:  # anything but a response is a failure
                failures.append(f"keep-alive: {exc!r}")
                return
            if resp.status_code != 200 or body not in (b"one", b"two"):
                failures.append(f"keep-alive: {resp.status_code} {body!r}")
            ok += 1
            if client.conn.our_state is h11.MUST_CLOSE or client.conn.their_state in (
                h11.MUST_CLOSE,
                h11.CLOSED,
            ):
                await client.aclose()  # drained with Connection: close: reconnect
                client = await Client.connect(lport)
        await client.aclose()

    async def new_connection_client() -> None:
        nonlocal ok
        while not stop.is_set():
            client = await Client.connect(lport)
            try:
                resp, _ = await client.request("GET", "/", [("connection", "close")])
                if resp.status_code != 200:
                    failures.append(f"new connection: {resp.status_code}")
                ok += 1
            except Exception as exc:
                failures.append(f"new connection: {exc!r}")
            await client.aclose()

    refused = 0
    h2_ok = 0

    async def h2_client() -> None:
        nonlocal ok, h2_ok, refused
        while not stop.is_set():
            client = await H2Client.connect(lport)
            async with trio.open_nursery() as conn:
                conn.start_soon(client.reader)
                while not stop.is_set() and not client.closed:
                    try:
                        status, _, body = await client.request("GET", "/h2")
                    except H2Error as exc:
                        if "refused" in str(exc) or "(GOAWAY)" in str(exc):  # never sent/processed
                            refused += 1
                            break
                        failures.append(f"h2: {exc!r}")
                        break
                    if status != 200 or body not in (b"one", b"two"):
                        failures.append(f"h2: {status} {body!r}")
                    ok += 1
                    h2_ok += 1
                conn.cancel_scope.cancel()
            await client.aclose()

    async with trio.open_nursery() as clients:
        for _ in range(2):
            clients.start_soon(h2_client)
        for _ in range(3):
            clients.start_soon(keep_alive_client)
        for _ in range(2):
            clients.start_soon(new_connection_client)
        for i in range(1, PUSHES + 1):
            v = str(i)
            kind = i % 3
            if kind == 0:  # a changed cluster: new pools, the old ones drain
                port = p1 if i % 2 else p2
                ads.set(CDS, v, [cluster("c", port, connect_timeout=f"{1 + i % 2}s")])
            elif kind == 1:  # a changed listener: the new one takes over the socket
                lst = listener("l", lport)
                hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
                hcm["stat_prefix"] = f"http{i % 2}"
                ads.set(LDS, v, [lst])
            else:  # new routes, applied on the next request of every connection
                r = route("local_route", "c")
                r["virtual_hosts"][0]["request_headers_to_add"] = [
                    {"header": {"key": "x-push", "value": v}}
                ]
                ads.set(RDS, v, [r])
            await trio.sleep(0.03)
        await trio.sleep(0.3)
        stop.set()
    assert not failures, failures[:5]
    assert ok > PUSHES  # traffic really flowed throughout
    assert h2_ok > PUSHES // 3
    assert proxy.stat("listener_manager.lds.update_success") >= PUSHES // 3
    assert proxy.stat("cluster_manager.cds.update_rejected") == 0
