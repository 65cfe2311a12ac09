"""The local rate limit filter through real Envoy and trioproxy: a default bucket, descriptors
from route rate_limits actions, a per-route bucket, the x-ratelimit headers, not-enforced
requests; responses, upstream requests and the stats that moved. The buckets refill once a
minute, so the sequence of requests decides alone."""

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

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
CONFIG = http_config(
    routes="""
- match: {prefix: "/own"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.local_ratelimit:
      "@type": {lrl}
      stat_prefix: own_bucket
      token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
      filter_enabled: {default_value: {numerator: 100}}
      filter_enforced: {default_value: {numerator: 100}}
      response_headers_to_add:
      - header: {key: x-limited-by, value: own}
- match: {prefix: "/soft"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.local_ratelimit:
      "@type": {lrl}
      stat_prefix: soft_bucket
      token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
      filter_enabled: {default_value: {numerator: 100}}
      request_headers_to_add_when_not_enforced:
      - header: {key: x-would-be-limited, value: "true"}
- match: {prefix: "/"}
  route:
    cluster: backend
    rate_limits:
    - actions:
      - request_headers: {header_name: x-client, descriptor_key: client}
""",
    http_filters="""
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": {lrl}
    stat_prefix: main
    token_bucket: {max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}
    filter_enabled: {default_value: {numerator: 100}}
    filter_enforced: {default_value: {numerator: 100}}
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    descriptors:
    - entries: [{key: client, value: greedy}]
      token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
""",
)
CONFIG = CONFIG.replace("{lrl}", LRL)


async def test_local_rate_limit_matches_envoy() -> None:
    greedy = [("x-client", "greedy")]
    requests = [
        build_request("GET", "/a", headers=greedy),  # descriptor bucket 1 → 0, default 4 → 3
        build_request("GET", "/a", headers=greedy),  # descriptor empty: 429
        build_request("GET", "/b"),  # default 3 → 2
        build_request("GET", "/c", headers=[("x-client", "calm")]),  # no descriptor: 2 → 1
        build_request("GET", "/d"),  # 1 → 0
        build_request("GET", "/e"),  # empty: 429
        build_request("GET", "/own"),  # the route's own bucket
        build_request("GET", "/own"),
        build_request("GET", "/soft"),
        build_request("GET", "/soft"),  # limited, not enforced: through, with a header
    ]
    envoy = await run_case("envoy", CONFIG, requests, (Reply(),))
    assert [r.status for r in envoy.responses] == [200, 429, 200, 200, 200, 429, 200, 429, 200, 200]
    assert envoy.responses[1].body == b"local_rate_limited"
    ours = await run_case("trioproxy", CONFIG, requests, (Reply(),))
    allow = (*STAT_ALLOW_LIST, "*.http_local_rate_limit.*")
    diffs = compare(envoy, ours, stat_allow_list=allow)
    assert diffs == [], "\n".join(diffs)
