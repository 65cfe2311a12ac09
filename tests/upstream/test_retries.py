"""Route retry policies against real backends on 127.0.0.1: what a client sees when a backend
fails now and then, and the stats an operator reads."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import h11
import trio

from tests.support import (
    Backend,
    Client,
    Handler,
    Recorded,
    Reply,
    free_ports,
    header,
    simple_config,
    start_proxy,
)


def retry_routes(policy: str) -> str:
    return f"""
              - match: {{prefix: "/"}}
                route:
                  cluster: backend
                  retry_policy: {policy}"""


async def read_response(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Response, bytes]:
    head = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, body


def fail_every_third() -> tuple[Backend, list[int]]:
    """A backend whose every third request gets 503."""
    seen: list[int] = []

    def handler(rec: Recorded) -> Reply:
        seen.append(1)
        return Reply(503, body=b"overloaded") if len(seen) % 3 == 0 else Reply(body=b"fine")

    return Backend(handler=handler), seen


async def test_retries_hide_a_backend_failing_one_request_in_three(nursery: trio.Nursery) -> None:
    backend, seen = fail_every_third()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery, simple_config([port], routes=retry_routes("{retry_on: 5xx, num_retries: 2}"))
    )
    client = await Client.connect(proxy.port)
    try:
        for i in range(30):
            resp, body = await client.request("GET", f"/item/{i}")
            assert (resp.status_code, body) == (200, b"fine")
    finally:
        await client.aclose()
    # 44 requests reached the backend: 30 answers, and 14 failures each followed by a retry
    assert len(seen) == 44
    assert proxy.stat("cluster.backend.upstream_rq_retry") == 14
    assert proxy.stat("cluster.backend.upstream_rq_retry_success") == 14
    assert proxy.stat("cluster.backend.upstream_rq_200") == 30
    assert proxy.stat("cluster.backend.retry.upstream_rq_503") == 14
    assert proxy.stat("http.ingress_http.downstream_rq_5xx") == 0


async def test_without_a_policy_the_failure_reaches_the_client(nursery: trio.Nursery) -> None:
    backend, seen = fail_every_third()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Client.connect(proxy.port)
    try:
        statuses = [(await client.request("GET", "/"))[0].status_code for _ in range(6)]
    finally:
        await client.aclose()
    assert statuses == [200, 200, 503, 200, 200, 503]
    assert len(seen) == 6


async def test_retries_run_out_with_URX(nursery: trio.Nursery) -> None:
    backend = Backend(handler=lambda rec: Reply(503, body=b"down"))
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery,
        simple_config(
            [port],
            routes=retry_routes("{retry_on: gateway-error, num_retries: 3}"),
            hcm_extra="""
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {text_format_source: {inline_string: "%RESPONSE_FLAGS%\\n"}}""",
        ),
    )
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (503, b"down")  # the last attempt's own response
    assert len(backend.requests) == 4
    assert proxy.stat("cluster.backend.upstream_rq_retry") == 3
    assert proxy.stat("cluster.backend.upstream_rq_retry_limit_exceeded") == 1
    assert proxy.stat("cluster.backend.upstream_rq_503") == 1


async def test_connect_failure_moves_to_another_host(nursery: trio.Nursery) -> None:
    """One endpoint refuses connections; with previous_hosts, the retry goes elsewhere."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    (dead,) = free_ports(1)
    predicate = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    policy = f"""
                    retry_on: connect-failure
                    num_retries: 1
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/{predicate}
                    host_selection_retry_max_attempts: 5"""
    routes = f"""
              - match: {{prefix: "/"}}
                route:
                  cluster: backend
                  retry_policy:{policy}"""
    proxy = await start_proxy(nursery, simple_config([dead, port], routes=routes))
    client = await Client.connect(proxy.port)
    try:
        for _ in range(10):
            resp, body = await client.request("GET", "/")
            assert (resp.status_code, body) == (200, b"backend")
    finally:
        await client.aclose()
    assert len(backend.requests) == 10
    failures = proxy.stat("cluster.backend.upstream_cx_connect_fail")
    assert failures >= 1  # round robin sent some first attempts to the dead port
    assert proxy.stat("cluster.backend.upstream_rq_retry") == failures


async def test_a_request_body_is_sent_again_whole(nursery: trio.Nursery) -> None:
    attempts: list[bytes] = []

    def handler(rec: Recorded) -> Reply:
        attempts.append(rec.body)
        return Reply(503) if len(attempts) == 1 else Reply(body=b"stored")

    backend = Backend(handler=handler)
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery, simple_config([port], routes=retry_routes("{retry_on: 5xx}"))
    )
    parts = [b"a" * 10_000, b"b" * 20_000, b"c" * 5]
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method="POST",
        target="/upload",
        headers=[("host", "example.com"), ("transfer-encoding", "chunked")],
    )
    async with stream:
        await stream.send_all(conn.send(head))
        for part in parts:  # the body arrives in pieces, while the first attempt runs
            await trio.sleep(0.02)
            await stream.send_all(conn.send(h11.Data(data=part)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        resp, body = await read_response(conn, stream)
    assert (resp.status_code, body) == (200, b"stored")
    assert attempts == [b"".join(parts)] * 2


async def test_a_body_past_the_buffer_limit_is_not_retried(nursery: trio.Nursery) -> None:
    backend = Backend(handler=lambda rec: Reply(503, body=b"no"))
    port = await nursery.start(backend.serve)
    routes = """
              - match: {prefix: "/"}
                per_request_buffer_limit_bytes: 1000
                route:
                  cluster: backend
                  retry_policy: {retry_on: 5xx}"""
    proxy = await start_proxy(nursery, simple_config([port], routes=routes))
    client = await Client.connect(proxy.port)
    try:
        resp, _ = await client.request("POST", "/", [("content-length", "5000")], b"x" * 5000)
        assert resp.status_code == 503
        resp, _ = await client.request("POST", "/", [("content-length", "500")], b"x" * 500)
        assert resp.status_code == 503
    finally:
        await client.aclose()
    assert len(backend.requests) == 1 + 2  # the large body once, the small one twice


async def _request_past_a_per_try_timeout(
    nursery: trio.Nursery, handler: Handler, policy: str
) -> tuple[int, bytes]:
    """One GET through a route with retry ``policy`` to a backend answering with ``handler``,
    whose first answer outlasts the policy's ``per_try_timeout``. Checks that attempt was given
    up well before it answered and counted as a per-try timeout, not the route's; returns the
    client's status and body."""
    port = await nursery.start(Backend(handler=handler).serve)
    proxy = await start_proxy(nursery, simple_config([port], routes=retry_routes(policy)))
    client = await Client.connect(proxy.port)
    start = trio.current_time()
    try:
        resp, body = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert trio.current_time() - start < 1.5
    assert proxy.stat("cluster.backend.upstream_rq_per_try_timeout") == 1
    assert proxy.stat("cluster.backend.upstream_rq_timeout") == 0
    return resp.status_code, body


async def test_per_try_timeout_gives_a_slow_attempt_up(nursery: trio.Nursery) -> None:
    calls: list[int] = []

    def handler(rec: Recorded) -> Reply:
        calls.append(1)
        return Reply(delay=2.0) if len(calls) == 1 else Reply(body=b"quick")

    policy = "{retry_on: 5xx, per_try_timeout: 0.2s}"
    assert await _request_past_a_per_try_timeout(nursery, handler, policy) == (200, b"quick")


async def test_per_try_timeout_bounds_the_only_attempt_without_retries(
    nursery: trio.Nursery,
) -> None:
    """``num_retries: 0``: no retry, but the one attempt still has ``per_try_timeout`` (504
    counted as a per-try timeout, as Envoy does), not the route's 5 s."""
    policy = "{retry_on: 5xx, num_retries: 0, per_try_timeout: 0.2s}"
    answer = await _request_past_a_per_try_timeout(nursery, lambda rec: Reply(delay=2.0), policy)
    assert answer == (504, b"upstream request timeout")


async def test_retriable_status_codes_and_attempt_count_headers(nursery: trio.Nursery) -> None:
    calls: list[str | None] = []

    def handler(rec: Recorded) -> Reply:
        calls.append(rec.header("x-envoy-attempt-count"))
        return Reply(418) if len(calls) < 3 else Reply(body=b"tea")

    backend = Backend(handler=handler)
    port = await nursery.start(backend.serve)
    config = simple_config(
        [port],
        routes=retry_routes(
            "{retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 2}"
        ),
    ).replace(
        'domains: ["*"]',
        'domains: ["*"]\n              include_request_attempt_count: true\n'
        "              include_attempt_count_in_response: true",
    )
    proxy = await start_proxy(nursery, config)
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert (resp.status_code, body) == (200, b"tea")
    assert calls == ["1", "2", "3"]
    assert header(resp, "x-envoy-attempt-count") == "3"


async def test_the_retry_circuit_breaker_stops_retries(nursery: trio.Nursery) -> None:
    backend = Backend(handler=lambda rec: Reply(503, body=b"busy"))
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery,
        simple_config(
            [port],
            routes=retry_routes("{retry_on: 5xx}"),
            cluster_extra="""
    circuit_breakers:
      thresholds: [{max_retries: 0}]""",
        ),
    )
    client = await Client.connect(proxy.port)
    try:
        resp, _ = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert resp.status_code == 503
    assert len(backend.requests) == 1
    assert proxy.stat("cluster.backend.upstream_rq_retry_overflow") == 1


async def test_unbuilt_retry_fields_are_refused_by_name(tmp_path: Path) -> None:
    config = simple_config([1], routes=retry_routes("{retry_on: 5xx, retry_priority: {name: x}}"))
    path = tmp_path / "envoy.yaml"
    path.write_text(textwrap.dedent(config))
    done = await trio.run_process(
        [sys.executable, "-m", "trioproxy", "validate", str(path)],
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    assert ".routes[0].route.retry_policy.retry_priority: not supported yet" in err, err
    assert f"{path}:" in err  # with the line and column


async def test_a_retry_budget_replaces_max_retries(nursery: trio.Nursery) -> None:
    """budget 0 %, no minimum: no retry, though max_retries (3) alone would allow it; then a
    budget with a minimum of one lets the retry through."""
    cases = (
        ("{budget_percent: {value: 0}, min_retry_concurrency: 0}", 1),
        ("{budget_percent: {value: 20}, min_retry_concurrency: 1}", 2),
    )
    for budget, expected in cases:
        backend = Backend(handler=lambda rec: Reply(503, body=b"busy"))
        port = await nursery.start(backend.serve)
        proxy = await start_proxy(
            nursery,
            simple_config(
                [port],
                routes=retry_routes("{retry_on: 5xx}"),
                cluster_extra=f"""
    circuit_breakers:
      thresholds: [{{retry_budget: {budget}}}]""",
            ),
        )
        client = await Client.connect(proxy.port)
        try:
            resp, _ = await client.request("GET", "/")
        finally:
            await client.aclose()
        assert resp.status_code == 503
        assert len(backend.requests) == expected
