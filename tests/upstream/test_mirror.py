"""Request mirroring: the main request never waits for, or fails with, its mirror."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, Reply, free_ports, simple_config, start_proxy


def mirrored(shadow_port: int, extra_route: str = "") -> tuple[str, str]:
    routes = f"""
              - match: {{prefix: "/"}}{extra_route}
                route:
                  cluster: backend
                  request_mirror_policies: [{{cluster: shadow}}]"""
    cluster = f"""
  - name: shadow
    load_assignment:
      cluster_name: shadow
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {shadow_port}}}}}"""
    return routes, cluster


def config(main_port: int, shadow_port: int, extra_route: str = "") -> str:
    routes, cluster = mirrored(shadow_port, extra_route)
    return simple_config([main_port], routes=routes).replace(
        "\n  clusters:\n", "\n  clusters:" + cluster + "\n", 1
    )


async def test_a_dead_or_slow_mirror_costs_the_client_nothing(nursery: trio.Nursery) -> None:
    main = Backend()
    port = await nursery.start(main.serve)
    slow = Backend(handler=lambda rec: Reply(delay=3.0))
    slow_port = await nursery.start(slow.serve)
    for shadow in (free_ports(1)[0], slow_port):
        proxy = await start_proxy(nursery, config(port, shadow))
        client = await Client.connect(proxy.port)
        start = trio.current_time()
        try:
            resp, body = await client.request("POST", "/x", body=b"data")
        finally:
            await client.aclose()
        assert (resp.status_code, body) == (200, b"backend")
        assert trio.current_time() - start < 1.0
    with trio.fail_after(2):
        while True:
            if slow.requests:
                break
            await trio.sleep(0.02)
    assert slow.requests[0].body == b"data"


async def test_a_body_past_the_buffer_limit_is_not_mirrored(nursery: trio.Nursery) -> None:
    main, shadow = Backend(), Backend()
    port = await nursery.start(main.serve)
    shadow_port = await nursery.start(shadow.serve)
    proxy = await start_proxy(
        nursery, config(port, shadow_port, "\n                per_request_buffer_limit_bytes: 100")
    )
    client = await Client.connect(proxy.port)
    try:
        for size in (50, 500):
            resp, _ = await client.request("POST", f"/{size}", body=b"x" * size)
            assert resp.status_code == 200
    finally:
        await client.aclose()
    await trio.sleep(0.3)
    assert [r.target for r in main.requests] == ["/50", "/500"]
    assert [r.target for r in shadow.requests] == ["/50"]
