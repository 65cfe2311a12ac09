"""The local rate limit filter with real sockets: the bucket refills with time, gRPC clients
get a gRPC status, and a filter nobody enabled limits nothing."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, simple_config, start_proxy

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def limiter(*lines: str) -> str:
    body = "".join(f"\n    {line}" for line in lines)
    return f"""
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": {LRL}
    stat_prefix: lrl{body}"""


ENABLED = (
    "filter_enabled: {default_value: {numerator: 100}}",
    "filter_enforced: {default_value: {numerator: 100}}",
)


async def statuses(port: int, n: int, headers: list[tuple[str, str]] | None = None) -> list[int]:
    client = await Client.connect(port)
    try:
        return [(await client.request("GET", "/", headers or []))[0].status_code for _ in range(n)]
    finally:
        await client.aclose()


async def test_the_bucket_refills_with_time(nursery: trio.Nursery) -> None:
    port = await nursery.start(Backend().serve)
    filters = limiter(
        "token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 0.4s}", *ENABLED
    )
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    assert await statuses(proxy.port, 3) == [200, 200, 429]
    await trio.sleep(0.25)  # a bit more than one token's worth (0.2 s)
    assert await statuses(proxy.port, 2) == [200, 429]
    assert proxy.stat("lrl.http_local_rate_limit.enforced") == 2
    assert proxy.stat("lrl.http_local_rate_limit.ok") == 3


async def test_grpc_clients_get_a_grpc_status(nursery: trio.Nursery) -> None:
    port = await nursery.start(Backend().serve)
    filters = limiter(
        "token_bucket: {max_tokens: 1, fill_interval: 60s}",
        *ENABLED,
        "rate_limited_as_resource_exhausted: true",
    )
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    client = await Client.connect(proxy.port)
    try:
        grpc = [("content-type", "application/grpc")]
        first, _ = await client.request("POST", "/svc/M", grpc, b"")
        second, body = await client.request("POST", "/svc/M", grpc, b"")
    finally:
        await client.aclose()
    assert first.status_code == 200
    assert second.status_code == 200 and body == b""  # trailers-only
    assert dict(second.headers)[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED


async def test_without_filter_enabled_nothing_is_limited(nursery: trio.Nursery) -> None:
    port = await nursery.start(Backend().serve)
    filters = limiter("token_bucket: {max_tokens: 1, fill_interval: 60s}")
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    assert await statuses(proxy.port, 3) == [200, 200, 200]  # filter_enabled defaults to 0%
