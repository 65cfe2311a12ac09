"""The HTTP RBAC filter through real Envoy and trioproxy: ALLOW and DENY engines, and/or/not,
headers, paths (after normalisation), methods, ports and addresses, shadow rules, per-route
overrides; responses, upstream requests and the rbac stats that moved."""

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

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
CONFIG = http_config(
    routes="""
- match: {prefix: "/open"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.rbac:
      "@type": {per_route}
- match: {prefix: "/admin"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.rbac:
      "@type": {per_route}
      rbac:
        rules:
          action: DENY
          policies:
            no-admin:
              permissions: [{any: true}]
              principals:
              - not_id: {header: {name: x-role, string_match: {exact: root}}}
- match: {prefix: "/"}
  route: {cluster: backend}
""",
    http_filters="""
- name: envoy.filters.http.rbac
  typed_config:
    "@type": {rbac_type}
    rules_stat_prefix: "main_"
    rules:
      action: ALLOW
      policies:
        readers:
          permissions:
          - and_rules:
              rules:
              - header: {name: ":method", string_match: {exact: GET}}
              - url_path: {path: {prefix: "/api/"}}
          principals:
          - direct_remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}
        writers:
          permissions:
          - or_rules:
              rules:
              - header: {name: ":method", string_match: {exact: POST}}
              - header: {name: ":method", string_match: {exact: PUT}}
          principals:
          - header: {name: x-token, string_match: {exact: secret}}
        port-check:
          permissions:
          - and_rules:
              rules:
              - destination_port: {listener_port}
              - url_path: {path: {exact: "/port"}}
          principals: [{any: true}]
    shadow_rules:
      action: DENY
      policies:
        shadow-ua:
          permissions: [{header: {name: user-agent, string_match: {contains: bot}}}]
          principals: [{any: true}]
""",
    hcm_extra="""
normalize_path: true  # trioproxy's default; Envoy's is false
""",
)
CONFIG = CONFIG.replace("{rbac_type}", RBAC_TYPE).replace("{per_route}", PER_ROUTE)


async def test_rbac_matches_envoy() -> None:
    requests = [
        build_request("GET", "/api/items"),
        build_request("GET", "/api/../secret"),  # normalised to /secret: no policy
        build_request("GET", "/other"),
        build_request("POST", "/api/items", body=b"x"),
        build_request("POST", "/api/items", headers=[("x-token", "secret")], body=b"x"),
        build_request("PUT", "/x", headers=[("x-token", "secret")], body=b"x"),
        build_request("DELETE", "/x", headers=[("x-token", "secret")]),
        build_request("GET", "/port"),
        build_request("GET", "/open/anything"),
        build_request("GET", "/admin"),
        build_request("GET", "/admin", headers=[("x-role", "root")]),
        build_request("GET", "/api/x", headers=[("user-agent", "crawler-bot")]),
    ]
    envoy = await run_case("envoy", CONFIG, requests, (Reply(),))
    assert [r.status for r in envoy.responses] == [
        200, 403, 403, 403, 200, 200, 403, 200, 200, 403, 200, 200
    ]  # fmt: skip
    assert envoy.responses[1].body == b"RBAC: access denied"
    ours = await run_case("trioproxy", CONFIG, requests, (Reply(),))
    allow = (*STAT_ALLOW_LIST, "http.*.rbac.*")
    diffs = compare(envoy, ours, stat_allow_list=allow)
    assert diffs == [], "\n".join(diffs)
