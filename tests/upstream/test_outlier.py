"""Outlier detection with real backends on 127.0.0.1: a backend that stops, or keeps failing,
leaves load balancing; it comes back when its ejection runs out."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, Reply, simple_config, start_proxy


async def serve_on(backend: Backend, port: int, *, task_status: trio.TaskStatus[None]) -> None:
    """``backend`` on a given port (to stop it, cancel; to restart it, run this again)."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    backend.port = port
    task_status.started()
    await trio.serve_listeners(backend._conn, listeners)


OUTLIER = """
    outlier_detection:
      consecutive_5xx: 3
      interval: 0.2s
      base_ejection_time: {ejection}"""


async def test_a_stopped_backend_is_ejected_and_its_5xx_stop(nursery: trio.Nursery) -> None:
    backends = [Backend(name=f"b{i}") for i in range(3)]
    ports = [await nursery.start(b.serve) for b in backends[:2]]
    scope = trio.CancelScope()
    stopped = Backend(name="b2")

    async def run_third(*, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await serve_on(stopped, 0, task_status=task_status)

    await nursery.start(run_third)
    ports.append(stopped.port)
    # (default max_ejection_percent is 10: a third of the hosts is more, but one host can
    # always be ejected)
    proxy = await start_proxy(
        nursery, simple_config(ports, cluster_extra=OUTLIER.format(ejection="30s"))
    )
    results: list[tuple[float, int, bytes]] = []
    ejected_at: list[float] = []

    async def user() -> None:
        client = await Client.connect(proxy.port)
        try:
            while trio.current_time() < end:
                started = trio.current_time()
                resp, body = await client.request("GET", "/")
                results.append((started, resp.status_code, body))
                if resp.status_code != 200:  # a 503 closes nothing here, but be plain
                    await client.aclose()
                    client = await Client.connect(proxy.port)
        finally:
            await client.aclose()

    async def watch() -> None:
        # polled: the proxy has no event to wait on, and 5 ms is finer than a request
        while True:
            if proxy.stat("cluster.backend.outlier_detection.ejections_active"):
                ejected_at.append(trio.current_time())
                return
            await trio.sleep(0.005)

    end = trio.current_time() + 1.5
    async with trio.open_nursery() as users:
        users.start_soon(watch)
        for _ in range(3):
            users.start_soon(user)
        await trio.sleep(0.3)
        scope.cancel()  # b2 stops: its connections close, new ones are refused
    assert ejected_at, "the stopped backend was never ejected"
    failures = [r for r in results if r[1] != 200]
    assert 1 <= len(failures) <= 3 + 3  # the consecutive 5xx, and what was in flight
    assert all(started < ejected_at[0] for started, _, _ in failures)
    late = {body for started, status, body in results if started > ejected_at[0]}
    assert late == {b"b0", b"b1"}
    prefix = "cluster.backend.outlier_detection."
    assert proxy.stat(prefix + "ejections_enforced_consecutive_5xx") == 1
    assert proxy.stat(prefix + "ejections_enforced_total") == 1
    assert proxy.stat("cluster.backend.membership_healthy") == 2


async def test_an_ejected_backend_comes_back_after_its_ejection(nursery: trio.Nursery) -> None:
    failing = [True]
    flaky = Backend(name="flaky", handler=lambda rec: Reply(500) if failing[0] else Reply())
    steady = Backend(name="steady")
    ports = [await nursery.start(flaky.serve), await nursery.start(steady.serve)]
    proxy = await start_proxy(
        nursery,
        simple_config(
            ports,
            cluster_extra=OUTLIER.format(ejection="0.5s") + "\n      max_ejection_percent: 50",
        ),
    )
    client = await Client.connect(proxy.port)
    try:
        statuses = [(await client.request("GET", "/"))[0].status_code for _ in range(10)]
        assert statuses.count(500) == 3  # flaky answered three times, then was ejected
        assert proxy.stat("cluster.backend.outlier_detection.ejections_active") == 1
        before = len(flaky.requests)
        for _ in range(10):
            resp, body = await client.request("GET", "/")
            assert (resp.status_code, body) == (200, b"steady")
        assert len(flaky.requests) == before
        failing[0] = False
        await trio.sleep(0.5 + 0.2 + 0.1)  # the ejection, an interval tick, slack
        assert proxy.stat("cluster.backend.outlier_detection.ejections_active") == 0
        bodies = {(await client.request("GET", "/"))[1] for _ in range(6)}
        assert bodies == {b"ok", b"steady"}  # flaky is back (its handler answers "ok")
    finally:
        await client.aclose()


async def test_gateway_failures_are_detected_but_not_enforced_by_default(
    nursery: trio.Nursery,
) -> None:
    bad = Backend(name="bad", handler=lambda rec: Reply(502))
    good = Backend(name="good")
    ports = [await nursery.start(bad.serve), await nursery.start(good.serve)]
    extra = """
    outlier_detection:
      consecutive_5xx: 1000
      consecutive_gateway_failure: 2
      interval: 10s"""
    proxy = await start_proxy(nursery, simple_config(ports, cluster_extra=extra))
    client = await Client.connect(proxy.port)
    try:
        statuses = [(await client.request("GET", "/"))[0].status_code for _ in range(8)]
    finally:
        await client.aclose()
    assert statuses.count(502) == 4  # still balanced onto: enforcing defaults to 0
    prefix = "cluster.backend.outlier_detection."
    assert proxy.stat(prefix + "ejections_detected_consecutive_gateway_failure") == 1
    assert proxy.stat(prefix + "ejections_enforced_total") == 0


async def test_admin_shows_the_ejected_host(nursery: trio.Nursery) -> None:
    bad = Backend(name="bad", handler=lambda rec: Reply(503))
    good = Backend(name="good")
    ports = [await nursery.start(bad.serve), await nursery.start(good.serve)]
    proxy = await start_proxy(
        nursery, simple_config(ports, cluster_extra=OUTLIER.format(ejection="30s"))
    )
    client = await Client.connect(proxy.port)
    try:
        for _ in range(6):
            await client.request("GET", "/")
        admin = await Client.connect(proxy.admin_port)
        try:
            _, text = await admin.request("GET", "/clusters")
        finally:
            await admin.aclose()
    finally:
        await client.aclose()
    lines = text.decode().splitlines()
    assert f"backend::127.0.0.1:{ports[0]}::health_flags::/failed_outlier_check" in lines
    assert f"backend::127.0.0.1:{ports[1]}::health_flags::healthy" in lines
