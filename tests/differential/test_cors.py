"""The CORS filter through real Envoy and trioproxy: preflights answered at the proxy, simple
requests decorated on the way back, origins that do not match; responses, upstream requests
and the cors stats that moved."""

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

POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
CONFIG = http_config(
    routes="""
- match: {prefix: "/api"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": {policy}
      allow_origin_string_match:
      - exact: https://app.example.com
      - suffix: .trusted.example
      allow_methods: GET, POST
      allow_headers: content-type, x-token
      expose_headers: x-request-cost
      max_age: "600"
      allow_credentials: true
- match: {prefix: "/"}
  route: {cluster: backend}
""",
    http_filters="""
- name: envoy.filters.http.cors
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
""",
)
CONFIG = CONFIG.replace("{policy}", POLICY)


def preflight(path: str, origin: str) -> bytes:
    return build_request(
        "OPTIONS",
        path,
        headers=[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-token"),
        ],
    )


async def test_cors_matches_envoy() -> None:
    requests = [
        preflight("/api/items", "https://app.example.com"),
        preflight("/api/items", "https://evil.example.com"),
        preflight("/other", "https://app.example.com"),  # no policy on this route
        build_request("GET", "/api/items", headers=[("origin", "https://a.trusted.example")]),
        build_request("GET", "/api/items", headers=[("origin", "https://nope.example")]),
        build_request("GET", "/api/items"),  # no origin: not a CORS request
        build_request("OPTIONS", "/api/items", headers=[("origin", "https://app.example.com")]),
    ]
    envoy = await run_case("envoy", CONFIG, requests, (Reply(),))
    assert [r.status for r in envoy.responses] == [200, 200, 200, 200, 200, 200, 200]
    assert envoy.responses[0].header("access-control-max-age") == "600"
    ours = await run_case("trioproxy", CONFIG, requests, (Reply(),))
    allow = (*STAT_ALLOW_LIST, "http.*.cors.*")
    diffs = compare(envoy, ours, stat_allow_list=allow)
    assert diffs == [], "\n".join(diffs)
