"""Zipkin tracing through the proxy: sampling, B3 propagation, span contents, reporting."""

from __future__ import annotations

import trio

from tests.support import Backend, Client, Proxy, simple_config, start_proxy
from tests.tracing.conftest import Collector

ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


def config(
    backend: int,
    collector: int,
    *,
    direction: str = "OUTBOUND",
    tracing: str = "",
    zipkin: str = "",
    routes: str = "",
) -> str:
    hcm = f"""
tracing:
  provider:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": {ZIPKIN}
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON
{zipkin}
  {tracing}
"""
    text = simple_config([backend], hcm_extra=hcm, routes=routes)
    text = text.replace("  - name: main\n", f"  - name: main\n    traffic_direction: {direction}\n")
    return text.replace(
        "  clusters:\n",
        f"""  clusters:
  - name: zipkin
    load_assignment:
      cluster_name: zipkin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {collector}}}}}}}
""",
    )


async def spans_arrive(collector: Collector, n: int, timeout: float = 8.0) -> list[dict]:
    with trio.fail_after(timeout):
        while len(collector.spans()) < n:  # noqa: ASYNC110 - another thread fills it
            await trio.sleep(0.05)
    return collector.spans()


async def get(proxy: Proxy, path: str = "/", headers: list[tuple[str, str]] | None = None) -> int:
    client = await Client.connect(proxy.port)
    try:
        resp, _ = await client.request("GET", path, headers or [])
        return int(resp.status_code)
    finally:
        await client.aclose()


async def test_a_new_trace_is_reported_and_propagated(
    nursery: trio.Nursery, collector: Collector
) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    routes = """
              - match: {prefix: "/"}
                route: {cluster: backend}
                decorator: {operation: checkAvailability}"""
    proxy = await start_proxy(
        nursery,
        config(backend.port, collector.port, routes=routes),
        service_cluster="front-proxy",
        service_node="node-1",
    )
    assert await get(proxy, "/trace/1?x=1", [("user-agent", "test-agent")]) == 200
    (span,) = await spans_arrive(collector, 1)
    rec = backend.requests[0]
    # the upstream got the root span's context; a root span's id is its trace id
    assert rec.header("x-b3-traceid") == span["traceId"] == span["id"]
    assert rec.header("x-b3-spanid") == span["id"]
    assert rec.header("x-b3-sampled") == "1"
    assert rec.header("x-b3-parentspanid") is None
    assert rec.header("x-envoy-decorator-operation") == "checkAvailability"
    rid = rec.header("x-request-id")
    assert rid is not None and rid[14] == "9"  # the sampling decision travels in the id
    assert span["name"] == "checkAvailability"
    assert span["kind"] == "CLIENT"
    assert span["localEndpoint"]["serviceName"] == "front-proxy"
    assert span["duration"] > 0 and span["timestamp"] > 1_600_000_000_000_000
    assert span["annotations"][0]["value"] == "cr"
    tags = span["tags"]
    assert tags["http.url"] == "http://example.com/trace/1?x=1"
    assert tags["http.method"] == "GET"
    assert tags["http.status_code"] == "200"
    assert tags["http.protocol"] == "HTTP/1.1"
    assert tags["upstream_cluster"] == "backend"
    assert tags["guid:x-request-id"] == rid
    assert tags["node_id"] == "node-1"
    assert tags["user_agent"] == "test-agent"
    assert tags["component"] == "proxy"
    assert tags["response_flags"] == "-"
    assert "error" not in tags
    assert proxy.stat("http.ingress_http.tracing.random_sampling") == 1
    assert proxy.stat("tracing.zipkin.spans_sent") == 1


async def test_server_spans_share_or_child_the_incoming_context(
    nursery: trio.Nursery, collector: Collector
) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    incoming = [
        ("x-b3-traceid", "0000000000000abc"),
        ("x-b3-spanid", "0000000000000def"),
        ("x-b3-parentspanid", "0000000000000111"),
        ("x-b3-sampled", "1"),
    ]
    for shared in ("true", "false"):
        async with trio.open_nursery() as inner:
            proxy = await start_proxy(
                inner,
                config(
                    backend.port,
                    collector.port,
                    direction="INBOUND",
                    zipkin=f"      shared_span_context: {shared}",
                ),
            )
            assert await get(proxy, "/", incoming) == 200
            inner.cancel_scope.cancel()  # a stopping proxy flushes its reporter
    shared_span, child_span = await spans_arrive(collector, 2)
    if shared_span.get("shared") is None:
        shared_span, child_span = child_span, shared_span
    assert shared_span["kind"] == child_span["kind"] == "SERVER"
    assert shared_span["traceId"] == child_span["traceId"] == "0000000000000abc"
    assert (shared_span["id"], shared_span["parentId"]) == ("0000000000000def", "0000000000000111")
    assert shared_span["shared"] is True
    assert child_span["parentId"] == "0000000000000def"
    assert child_span["id"] not in ("0000000000000def", "0000000000000abc")
    assert [r.header("x-b3-spanid") for r in backend.requests] == [
        shared_span["id"],
        child_span["id"],
    ]


async def test_single_b3_header_goes_on_as_a_single_header(
    nursery: trio.Nursery, collector: Collector
) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, config(backend.port, collector.port))
    b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
    assert await get(proxy, "/", [("b3", b3)]) == 200
    (span,) = await spans_arrive(collector, 1)
    rec = backend.requests[0]
    assert rec.header("x-b3-traceid") is None
    assert rec.header("b3") == f"80f198ee56343ba864fe8b2a57d3eff7-{span['id']}-1-e457b5a2e4d86bd1"
    assert span["traceId"] == "80f198ee56343ba864fe8b2a57d3eff7"
    assert span["parentId"] == "e457b5a2e4d86bd1"


async def test_unsampled_requests_propagate_but_are_not_reported(
    nursery: trio.Nursery, collector: Collector
) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery,
        config(backend.port, collector.port, tracing="random_sampling: {value: 0}"),
    )
    assert await get(proxy, "/") == 200  # not sampled by random_sampling 0
    assert await get(proxy, "/", [("x-b3-sampled", "0")]) == 200
    assert await get(proxy, "/", [("x-b3-traceid", "zz"), ("x-b3-spanid", "1")]) == 200
    first, second, malformed = backend.requests
    assert first.header("x-b3-sampled") == "0"
    assert (first.header("x-request-id") or "")[14] == "4"
    assert second.header("x-b3-sampled") == "0"
    # a malformed context is neither joined nor replaced: the request is not traced
    assert malformed.header("x-b3-traceid") == "zz"
    assert proxy.stat("http.ingress_http.tracing.not_traceable") == 3
    await trio.sleep(0.2)
    assert collector.spans() == []


async def test_forced_traces_and_error_tags(nursery: trio.Nursery, collector: Collector) -> None:
    backend = Backend(handler=lambda rec: __import__("tests.support").support.Reply(status=503))
    await nursery.start(backend.serve)
    text = config(backend.port, collector.port, tracing="random_sampling: {value: 0}")
    internal = """          use_remote_address: true
          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1}]}
"""
    text = text.replace(
        "          stat_prefix: ingress_http\n", "          stat_prefix: ingress_http\n" + internal
    )
    proxy = await start_proxy(nursery, text)
    # x-envoy-force-trace is honoured from an internal client (127.0.0.1 is one here)
    assert await get(proxy, "/", [("x-envoy-force-trace", "true")]) == 503
    assert await get(proxy, "/", [("x-client-trace-id", "client-1")]) == 503
    spans = await spans_arrive(collector, 2)
    assert proxy.stat("http.ingress_http.tracing.service_forced") == 1
    assert proxy.stat("http.ingress_http.tracing.client_enabled") == 1
    assert [r.header("x-request-id")[14] for r in backend.requests] == ["a", "b"]  # type: ignore[index]
    for span in spans:
        assert span["tags"]["error"] == "true"
        assert span["tags"]["http.status_code"] == "503"
    assert {s["tags"].get("guid:x-client-trace-id") for s in spans} == {None, "client-1"}


async def test_five_spans_flush_at_once_and_a_dead_collector_costs_nothing(
    nursery: trio.Nursery, collector: Collector
) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, config(backend.port, collector.port))
    client = await Client.connect(proxy.port)
    try:
        for _ in range(5):
            resp, _ = await client.request("GET", "/")
            assert resp.status_code == 200
    finally:
        await client.aclose()
    await spans_arrive(collector, 5, timeout=2.0)  # well before the 5 s timer
    assert proxy.stat("tracing.zipkin.reports_sent") == 1
    assert proxy.stat("tracing.zipkin.spans_sent") == 5


async def test_a_dead_collector_fails_reports_not_requests(nursery: trio.Nursery) -> None:
    backend = Backend()
    await nursery.start(backend.serve)
    from tests.support import free_ports

    (dead,) = free_ports(1)
    proxy = await start_proxy(nursery, config(backend.port, dead))
    for _ in range(5):
        assert await get(proxy) == 200
    with trio.fail_after(5):
        while proxy.stat("tracing.zipkin.reports_failed") < 1:  # noqa: ASYNC110
            await trio.sleep(0.05)


def test_each_server_gets_its_own_tracer_and_stats() -> None:
    """A tracer is shared by the listeners of one server only: a server built after another
    is gone reports into its own stats. (Tracers were cached by ``id()`` of the server's
    background object; a new server whose object reused a freed one's address got the old
    tracer, counting into a store nobody reads.)"""
    from trioproxy_plugins.zipkin import _create
    from trioproxy_plugins.zipkin.config import ZipkinConfig

    from trioproxy.background import Background
    from trioproxy.stats import Store
    from trioproxy.tracing import TracerContext

    cfg = ZipkinConfig.from_proto(
        {"collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans"}
    )

    def context(store: Store, background: Background) -> TracerContext:
        return TracerContext("front", "node", "127.0.0.1", None, background, store)

    stores = []
    for _ in range(20):  # freed objects' addresses come back quickly in CPython
        store, background = Store(), Background()
        tracer = _create(cfg, context(store, background))
        assert _create(cfg, context(store, background)) is tracer  # shared within a server
        tracer.reporter.stats.reports_failed.value += 1
        assert any(
            c.name == "tracing.zipkin.reports_failed" and c.value == 1 for c in store.counters()
        )
        stores.append(store)
        del tracer, background
