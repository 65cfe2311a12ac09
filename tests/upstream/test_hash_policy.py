"""Route hash_policy over RING_HASH and MAGLEV clusters, through the proxy."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, simple_config, start_proxy


async def test_same_header_same_backend(nursery: trio.Nursery) -> None:
    backends = [Backend(name=f"b{i}") for i in range(4)]
    for b in backends:
        await nursery.start(b.serve)
    for policy in ("RING_HASH", "MAGLEV"):
        routes = """
              - match: {prefix: "/"}
                route:
                  cluster: backend
                  hash_policy:
                  - header: {header_name: x-user}
                    terminal: true
                  - connection_properties: {source_ip: true}"""
        cfg = simple_config([b.port for b in backends], routes=routes).replace(
            "lb_policy: ROUND_ROBIN", f"lb_policy: {policy}"
        )
        async with trio.open_nursery() as inner:
            proxy = await start_proxy(inner, cfg)
            client = await Client.connect(proxy.port)
            try:
                seen: dict[str, set[bytes]] = {}
                for round_ in range(3):
                    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
                        _, body = await client.request("GET", f"/{round_}", [("x-user", user)])
                        seen.setdefault(user, set()).add(body)
                assert all(len(v) == 1 for v in seen.values()), (policy, seen)
                assert len({next(iter(v)) for v in seen.values()}) > 1, policy
                # no x-user: the source IP (always 127.0.0.1 here) decides, consistently
                bodies = {(await client.request("GET", "/"))[1] for _ in range(5)}
                assert len(bodies) == 1
            finally:
                await client.aclose()
            inner.cancel_scope.cancel()


async def test_unsupported_hash_policy_is_refused(nursery: trio.Nursery) -> None:
    import pytest

    from trioproxy.errors import ConfigError

    routes = """
              - match: {prefix: "/"}
                route:
                  cluster: backend
                  hash_policy:
                  - cookie: {name: session, ttl: 60s}"""
    with pytest.raises(ConfigError) as info:
        await start_proxy(nursery, simple_config([1], routes=routes))
    assert "hash_policy[0].cookie.ttl" in str(info.value)
