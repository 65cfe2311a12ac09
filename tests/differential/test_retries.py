"""Retry policies through real Envoy and trioproxy: the same failing upstream, the same
requests; what the client and the upstream saw, and which retry stats moved."""

from __future__ import annotations

import pytest

from .harness import (
    STAT_ALLOW_LIST,
    RecordedRequest,
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

CONFIG = http_config(
    routes="""
- match: {prefix: "/flaky"}
  route:
    cluster: backend
    retry_policy: {retry_on: 5xx, num_retries: 2}
- match: {prefix: "/teapot"}
  route:
    cluster: backend
    retry_policy:
      retry_on: retriable-status-codes
      retriable_status_codes: [418]
- match: {prefix: "/conflict"}
  route:
    cluster: backend
    retry_policy: {retry_on: retriable-4xx}
- match: {prefix: "/"}
  route: {cluster: backend}
""",
    vhost_extra="""
include_request_attempt_count: true
include_attempt_count_in_response: true
retry_policy: {retry_on: gateway-error, num_retries: 1}
""",
)


def script(req: RecordedRequest) -> Reply:
    """Fails by path and attempt number, so both proxies meet the same failures."""
    attempt = int(req.header("x-envoy-attempt-count") or "0")
    path = req.target
    if path.startswith("/flaky"):
        return Reply(503, body=b"try again\n") if attempt < 3 else Reply(body=b"third\n")
    if path.startswith("/teapot"):
        return Reply(418, body=b"teapot\n") if attempt == 1 else Reply(body=b"tea\n")
    if path.startswith("/conflict"):
        return Reply(409, body=b"conflict\n")
    if path.startswith("/down"):
        return Reply(502, body=b"bad gateway\n")
    if path.startswith("/error"):
        return Reply(500, body=b"error\n")  # not a gateway error: not retried here
    return Reply(body=b"ok\n")


async def test_retries_match_envoy() -> None:
    requests = [
        build_request("GET", "/flaky"),
        build_request("POST", "/flaky/post", body=b"payload " * 100),
        build_request("GET", "/teapot"),
        build_request("GET", "/conflict"),
        build_request("GET", "/down"),
        build_request("GET", "/error"),
        build_request("GET", "/fine"),
    ]
    envoy = await run_case("envoy", CONFIG, requests, script)
    # what Envoy did, so a changed Envoy or a broken script shows here first
    assert [r.status for r in envoy.responses] == [200, 200, 200, 409, 502, 500, 200]
    assert [r.header("x-envoy-attempt-count") for r in envoy.responses] == [
        "3", "3", "2", "2", "2", "1", "1"
    ]  # fmt: skip
    ours = await run_case("trioproxy", CONFIG, requests, script)
    allow = (*STAT_ALLOW_LIST, "cluster.*.upstream_rq_retry*", "cluster.*.retry.*")
    # a retry carries what is left of the route timeout: a value that depends on timing
    diffs = compare(envoy, ours, stat_allow_list=allow, ignore=["x-envoy-expected-rq-timeout-ms"])
    assert diffs == [], "\n".join(diffs)
    first, retry = ours.upstream_requests[0], ours.upstream_requests[1]
    assert first.header("x-envoy-expected-rq-timeout-ms") == "15000"
    assert int(retry.header("x-envoy-expected-rq-timeout-ms") or 0) < 15000
