"""A burst past the circuit breaker, as a client sees it: the requests over max_requests get
503 with response flag UO at once, and the overflow counters move."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support import Backend, Client, Reply, file_access_log, simple_config, start_proxy, until


async def test_a_burst_past_max_requests_gets_503_uo(nursery: trio.Nursery, tmp_path: Path) -> None:
    backend = Backend(handler=lambda rec: Reply(delay=0.5))
    port = await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    proxy = await start_proxy(
        nursery,
        simple_config(
            [port],
            hcm_extra=file_access_log(log, "%RESPONSE_CODE% %RESPONSE_FLAGS%"),
            cluster_extra="""
    circuit_breakers:
      thresholds: [{max_requests: 2, max_pending_requests: 1}]""",
        ),
    )
    results: list[tuple[int, float]] = []

    async def one() -> None:
        client = await Client.connect(proxy.port)
        start = trio.current_time()
        try:
            resp, _ = await client.request("GET", "/")
        finally:
            await client.aclose()
        results.append((resp.status_code, trio.current_time() - start))

    async with trio.open_nursery() as burst:
        # Two requests in flight upstream (one after the other: while the first one's
        # connection is still being made it is pending, and max_pending_requests is 1), then
        # a burst of four, all at once.
        for in_flight in (1, 2):
            burst.start_soon(one)
            await until(lambda n=in_flight: len(backend.requests) == n)
        for _ in range(4):
            burst.start_soon(one)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 503, 503, 503, 503]
    assert all(took < 0.4 for s, took in results if s == 503)  # refused at once, not queued
    assert len(backend.requests) == 2
    assert proxy.stat("cluster.backend.upstream_rq_pending_overflow") == 4
    assert proxy.stat("cluster.backend.circuit_breakers.default.rq_open") == 0  # closed again
    await trio.sleep(1.2)  # access log files are flushed every second, as Envoy's
    lines = sorted(log.read_text().splitlines())
    assert lines == ["200 -", "200 -", "503 UO", "503 UO", "503 UO", "503 UO"]
