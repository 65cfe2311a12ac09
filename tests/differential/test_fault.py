"""The fault filter through real Envoy and trioproxy: fixed and header-controlled aborts and
delays, per-route overrides, header matchers, gRPC aborts; responses, upstream requests and
the fault stats that moved."""

from __future__ import annotations

import pytest

from .harness import (
    STAT_ALLOW_LIST,
    Reply,
    build_request,
    compare,
    find_envoy,
    http_config,
    run_case,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CONFIG = http_config(
    routes="""
- match: {prefix: "/broken"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": {fault_type}
      abort: {http_status: 418, percentage: {numerator: 100}}
- match: {prefix: "/grpc"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": {fault_type}
      abort: {grpc_status: 14, percentage: {numerator: 100}}
- match: {prefix: "/matched"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": {fault_type}
      abort: {http_status: 503, percentage: {numerator: 100}}
      headers: [{name: x-chaos, string_match: {exact: "on"}}]
- match: {prefix: "/"}
  route: {cluster: backend}
""",
    http_filters="""
- name: envoy.filters.http.fault
  typed_config:
    "@type": {fault_type}
    abort: {header_abort: {}, percentage: {numerator: 100}}
    delay: {header_delay: {}, percentage: {numerator: 100}}
""",
).replace("{fault_type}", FAULT_TYPE)


async def test_fault_injection_matches_envoy() -> None:
    requests = [
        build_request("GET", "/plain"),
        build_request("GET", "/broken"),
        build_request("POST", "/grpc/Svc/M", headers=[("content-type", "application/grpc")]),
        build_request("GET", "/matched/a"),
        build_request("GET", "/matched/b", headers=[("x-chaos", "on")]),
        build_request("GET", "/h", headers=[("x-envoy-fault-abort-request", "429")]),
        build_request(
            "GET",
            "/h0",
            headers=[
                ("x-envoy-fault-abort-request", "500"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
        ),
        build_request("GET", "/d", headers=[("x-envoy-fault-delay-request", "50")]),
        build_request(
            "GET",
            "/g",
            headers=[
                ("x-envoy-fault-abort-grpc-request", "5"),
                ("content-type", "application/grpc"),
            ],
        ),
        build_request("GET", "/bad", headers=[("x-envoy-fault-abort-request", "99")]),
    ]
    envoy = await run_case("envoy", CONFIG, requests, (Reply(),))
    assert [r.status for r in envoy.responses] == [200, 418, 200, 200, 503, 429, 200, 200, 200, 200]
    ours = await run_case("trioproxy", CONFIG, requests, (Reply(),))
    allow = (*STAT_ALLOW_LIST, "http.*.fault.*")
    diffs = compare(envoy, ours, stat_allow_list=allow)
    assert diffs == [], "\n".join(diffs)
