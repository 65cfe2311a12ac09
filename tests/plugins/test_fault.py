"""The fault filter with real sockets: delays a client can time, aborts, the bandwidth limit,
and the limit on concurrent faults."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, Reply, simple_config, start_proxy

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def with_fault(*spec: str) -> str:
    """The fault filter's entry for ``simple_config`` (which adds the router after it)."""
    lines = "".join(f"\n    {line}" for line in spec)
    return f"""
- name: envoy.filters.http.fault
  typed_config:
    "@type": {FAULT}{lines}"""


async def timed_get(
    port: int, headers: list[tuple[str, str]] | None = None
) -> tuple[int, bytes, float]:
    client = await Client.connect(port)
    start = trio.current_time()
    try:
        resp, body = await client.request("GET", "/", headers or [])
    finally:
        await client.aclose()
    return resp.status_code, body, trio.current_time() - start


async def test_a_fixed_delay_holds_the_request(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    filters = with_fault("delay: {fixed_delay: 0.3s, percentage: {numerator: 100}}")
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    status, body, took = await timed_get(proxy.port)
    assert (status, body) == (200, b"backend")
    assert took >= 0.3
    assert proxy.stat("http.ingress_http.fault.delays_injected") == 1


async def test_zero_percent_never_faults_and_downstream_clusters_are_counted(
    nursery: trio.Nursery,
) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    filters = with_fault(
        "abort: {http_status: 503, percentage: {numerator: 0}}",
        "delay: {fixed_delay: 0.01s, percentage: {numerator: 100}}",
    )
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    for _ in range(5):
        status, _, _ = await timed_get(
            proxy.port, [("x-envoy-downstream-service-cluster", "frontend")]
        )
        assert status == 200
    assert proxy.stat("http.ingress_http.fault.aborts_injected") == 0
    assert proxy.stat("http.ingress_http.fault.frontend.delays_injected") == 5


async def test_the_response_rate_limit_paces_the_body(nursery: trio.Nursery) -> None:
    body = b"x" * 16 * 1024
    backend = Backend(
        handler=lambda rec: Reply(body=[body[i : i + 1024] for i in range(0, len(body), 1024)])
    )
    port = await nursery.start(backend.serve)
    filters = with_fault(
        "response_rate_limit: {fixed_limit: {limit_kbps: 32}, percentage: {numerator: 100}}"
    )
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    status, got, took = await timed_get(proxy.port)
    assert (status, got) == (200, body)
    assert took >= 0.45  # 16 KiB at 32 KiB/s
    assert proxy.stat("http.ingress_http.fault.response_rl_injected") == 1


async def test_max_active_faults_lets_the_rest_through(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    filters = with_fault(
        "delay: {fixed_delay: 0.5s, percentage: {numerator: 100}}", "max_active_faults: 2"
    )
    proxy = await start_proxy(nursery, simple_config([port], http_filters=filters))
    took: list[float] = []

    async def one() -> None:
        status, _, t = await timed_get(proxy.port)
        assert status == 200
        took.append(t)

    async with trio.open_nursery() as clients:
        for _ in range(5):
            clients.start_soon(one)
    assert sum(1 for t in took if t >= 0.5) == 2  # two delayed, three passed at once
    assert proxy.stat("http.ingress_http.fault.faults_overflow") == 3
    assert proxy.stat("http.ingress_http.fault.active_faults") == 0
