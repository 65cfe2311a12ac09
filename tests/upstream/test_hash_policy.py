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


# -- the hash itself, without sockets (tests/differential/test_hash_lb.py checks it against
# Envoy) ---------------------------------------------------------------------------------------


class Request:
    """What a hash policy reads of a stream: its request headers."""

    def __init__(self, *headers: tuple[str, str], path: str = "/") -> None:
        from trioproxy.http.headers import Headers

        self.request_headers = Headers([(":path", path), *headers])


def _policy_hash(policies: list[dict[str, object]], request: Request) -> int | None:
    from trioproxy.upstream.hashing import compile_http

    fn = compile_http(policies)
    assert fn is not None
    return fn(request)


def test_a_header_hashes_as_xxhash64_of_its_value() -> None:
    from trioproxy.upstream.hashing import xxhash64

    policy = [{"header": {"header_name": "x-key"}}]
    assert _policy_hash(policy, Request(("x-key", "user-1"))) == xxhash64(b"user-1")
    assert _policy_hash(policy, Request()) is None


def test_repeated_header_values_hash_in_sorted_order_each_seeding_the_next() -> None:
    from trioproxy.upstream.hashing import xxhash64

    policy = [{"header": {"header_name": "x-key"}}]
    both = _policy_hash(policy, Request(("x-key", "b"), ("x-key", "a")))
    assert both == xxhash64(b"b", xxhash64(b"a"))
    assert both == _policy_hash(policy, Request(("x-key", "a"), ("x-key", "b")))


def test_a_terminal_policy_stops_once_any_policy_made_a_hash() -> None:
    from trioproxy.upstream.hashing import xxhash64

    policies: list[dict[str, object]] = [
        {"header": {"header_name": "x-a"}},
        {"header": {"header_name": "x-b"}, "terminal": True},
        {"header": {"header_name": "x-c"}},
    ]
    # x-b is missing, but x-a made a hash: the list ends there and x-c is not mixed in
    assert _policy_hash(policies, Request(("x-a", "1"), ("x-c", "3"))) == xxhash64(b"1")
    # nothing yet at the terminal policy: the list goes on
    assert _policy_hash(policies, Request(("x-c", "3"))) == xxhash64(b"3")
    h1, h2 = xxhash64(b"1"), xxhash64(b"2")
    rotated = ((h1 << 1) | (h1 >> 63)) & ((1 << 64) - 1)
    assert _policy_hash(policies, Request(("x-a", "1"), ("x-b", "2"))) == rotated ^ h2


def test_cookies_and_query_parameters_hash_as_envoy_reads_them() -> None:
    from trioproxy.upstream.hashing import xxhash64

    cookie = [{"cookie": {"name": "session"}}]
    assert _policy_hash(cookie, Request(("cookie", "a=1; session=s1"))) == xxhash64(b"s1")
    assert _policy_hash(cookie, Request(("cookie", 'session="s1"'))) == xxhash64(b"s1")
    assert _policy_hash(cookie, Request(("cookie", "session="))) is None
    query = [{"query_parameter": {"name": "k"}}]
    assert _policy_hash(query, Request(path="/p?x=1&k=a%20b+c&k=2")) == xxhash64(b"a%20b+c")
    assert _policy_hash(query, Request(path="/p?k")) == xxhash64(b"")
    assert _policy_hash(query, Request(path="/p?kk=1")) is None
