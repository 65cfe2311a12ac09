"""OpenTelemetry tracing: W3C trace context through the proxy, OTLP/HTTP protobuf export
(decoded here with opentelemetry-proto, an independent implementation)."""

from __future__ import annotations

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import Backend, Client, simple_config, start_proxy

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def config(backend: int, collector: int, direction: str) -> str:
    hcm = f"""
tracing:
  provider:
    name: envoy.tracers.opentelemetry
    typed_config:
      "@type": {OTEL}
      service_name: edge-proxy
      http_service:
        http_uri: {{uri: "http://otel-collector:4318/v1/traces", cluster: otel, timeout: 2s}}
        request_headers_to_add:
        - header: {{key: authorization, value: token-1}}
"""
    text = simple_config([backend], hcm_extra=hcm)
    text = text.replace("  - name: main\n", f"  - name: main\n    traffic_direction: {direction}\n")
    return text.replace(
        "  clusters:\n",
        f"""  clusters:
  - name: otel
    load_assignment:
      cluster_name: otel
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {collector}}}}}}}
""",
    )


async def test_traceparent_is_joined_and_spans_exported_as_otlp(nursery: trio.Nursery) -> None:
    backend, collector = Backend(), Backend()
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    trace = "0af7651916cd43dd8448eb211c80319c"
    async with trio.open_nursery() as inner:
        proxy = await start_proxy(inner, config(backend.port, collector.port, "INBOUND"))
        client = await Client.connect(proxy.port)
        try:
            resp, _ = await client.request(
                "GET",
                "/otel",
                [("traceparent", f"00-{trace}-b7ad6b7169203331-01"), ("tracestate", "k=v")],
            )
            assert resp.status_code == 200
            resp, _ = await client.request("GET", "/fresh")
            assert resp.status_code == 200
        finally:
            await client.aclose()
        inner.cancel_scope.cancel()  # stopping flushes the reporter
    joined, fresh = backend.requests
    version, trace_id, span_id, flags = (joined.header("traceparent") or "").split("-")
    assert (version, trace_id, flags) == ("00", trace, "01")
    assert span_id != "b7ad6b7169203331"
    assert joined.header("tracestate") == "k=v"
    assert (fresh.header("traceparent") or "").split("-")[1] != trace

    (report,) = collector.requests
    assert report.method == "POST" and report.target == "/v1/traces"
    assert report.header("content-type") == "application/x-protobuf"
    assert report.header("authorization") == "token-1"
    assert report.header("host") == "otel-collector:4318"
    export = ExportTraceServiceRequest.FromString(report.body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "edge-proxy"}
    spans = [s for ss in resource_spans.scope_spans for s in ss.spans]
    assert len(spans) == 2
    first = spans[0]
    assert first.trace_id.hex() == trace
    assert first.parent_span_id.hex() == "b7ad6b7169203331"
    assert first.span_id.hex() == span_id
    assert first.trace_state == "k=v"
    assert first.kind == first.SPAN_KIND_SERVER
    assert first.name == "example.com"
    assert first.end_time_unix_nano > first.start_time_unix_nano > 1_600_000_000 * 10**9
    attrs = {a.key: a.value.string_value for a in first.attributes}
    assert attrs["http.status_code"] == "200"
    assert attrs["http.url"] == "http://example.com/otel"
    assert attrs["upstream_cluster"] == "backend"
    assert spans[1].parent_span_id == b""
