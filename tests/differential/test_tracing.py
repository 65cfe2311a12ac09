"""Envoy and trioproxy tracing side by side: the jaeger demo's span structure, and the trace
headers each sends upstream for the same incoming requests."""

from __future__ import annotations

import re

import pytest
import trio

from tests.differential.harness import RecordedRequest, build_request, find_envoy, run_case
from tests.examples.test_jaeger import (
    EXPECTED,
    get,
    one_trace,
    start_demo,
    stop_demo,
    structure,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.slow,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
TRACE_HEADERS = (
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
    "x-envoy-decorator-operation",
)


def _template(direction: str, shared: str) -> str:
    return f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {{listener_port}}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: ingress_http
          tracing:
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                shared_span_context: {shared}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/decorated"}}
                route: {{cluster: backend}}
                decorator: {{operation: checkStock}}
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {{upstream_port}}}}}}
  - name: zipkin
    load_assignment:
      cluster_name: zipkin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
"""


INCOMING = [
    ("/", []),
    ("/decorated", []),
    (
        "/",
        [
            ("x-b3-traceid", "0000000000000abc"),
            ("x-b3-spanid", "0000000000000def"),
            ("x-b3-parentspanid", "0000000000000111"),
            ("x-b3-sampled", "1"),
        ],
    ),
    ("/", [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
    ("/", [("x-b3-sampled", "0")]),
    ("/", [("b3", "0")]),
    ("/decorated", [("x-envoy-decorator-operation", "fromCaller")]),
]
_HEX = re.compile(r"\b[0-9a-f]{16}(?:[0-9a-f]{16})?\b")


def _shape(req: RecordedRequest, incoming: list[tuple[str, str]]) -> dict[str, str]:
    """The trace headers with fresh ids named by role, so the two proxies compare."""
    known = {v for _, v in incoming for v in v.split("-")}
    names: dict[str, str] = {}
    trace = req.header("x-b3-traceid")
    if trace and trace not in known:
        names[trace] = "<new trace id>"

    def name(m: re.Match[str]) -> str:
        value = m.group(0)
        if value in known:
            return value
        return names.setdefault(value, "<new id>")

    out = {h: _HEX.sub(name, v) for h in TRACE_HEADERS if (v := req.header(h)) is not None}
    rid = req.header("x-request-id") or ""
    out["x-request-id[14]"] = rid[14:15]
    return out


@pytest.mark.parametrize(("direction", "shared"), [("OUTBOUND", "false"), ("INBOUND", "true")])
async def test_trace_headers_sent_upstream_agree(direction: str, shared: str) -> None:
    requests = [
        build_request("GET", path, headers=[("connection", "keep-alive"), *hdrs])
        for path, hdrs in INCOMING
    ]
    results = {}
    for kind in ("envoy", "trioproxy"):
        result = await run_case(kind, _template(direction, shared), requests)
        assert [r.status for r in result.responses] == [200] * len(INCOMING)
        results[kind] = [
            _shape(req, hdrs)
            for req, (_, hdrs) in zip(result.upstream_requests, INCOMING, strict=True)
        ]
    assert results["trioproxy"] == results["envoy"]


async def test_jaeger_demo_same_spans() -> None:
    envoy = find_envoy()
    structures = {}
    tag_keys = {}
    for kind, proxy in (
        ("envoy", f"{envoy} --concurrency 1 --use-dynamic-base-id -l error"),
        ("trioproxy", None),
    ):
        proc, front, collector = start_demo(proxy)
        try:
            await trio.to_thread.run_sync(get, f"http://127.0.0.1:{front}/trace/1")
            spans = await trio.to_thread.run_sync(one_trace, collector)
        finally:
            stop_demo(proc)
        structures[kind] = structure(spans)
        tag_keys[kind] = sorted(
            (s["localEndpoint"]["serviceName"], s["name"], tuple(sorted(s["tags"]))) for s in spans
        )
    assert structures["envoy"] == EXPECTED
    assert structures["trioproxy"] == structures["envoy"]
    assert tag_keys["trioproxy"] == tag_keys["envoy"]
