"""What happens to a request's host, against Envoy 1.40: a virtual host's ``require_tls``
redirect, ``strip_trailing_host_dot``, and a host or path rewrite's ``x-envoy-original-*``
and ``append_x_forwarded_host`` (with the router's ``suppress_envoy_headers`` off and on)."""

from __future__ import annotations

import pytest

from .harness import ROUTER_TYPE, build_request, compare, find_envoy, http_config, run_case

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

ROUTES = """
- match: {prefix: "/api"}
  route: {cluster: backend}
"""


async def differences(config: str, requests: list[bytes]) -> list[str]:
    envoy = await run_case("envoy", config, requests)
    ours = await run_case("trioproxy", config, requests)
    assert [r.status for r in ours.responses] == [r.status for r in envoy.responses]
    return compare(envoy, ours)


@pytest.mark.parametrize(
    "require_tls,hcm_extra",
    [
        ("ALL", ""),
        ("EXTERNAL_ONLY", ""),
        ("EXTERNAL_ONLY", "use_remote_address: true"),
        (
            "EXTERNAL_ONLY",
            "use_remote_address: true\n"
            "internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
        ),
    ],
    ids=["all", "external-only", "external-only-edge", "external-only-edge-internal"],
)
async def test_require_tls_redirects_requests_not_forwarded_as_https(
    require_tls: str, hcm_extra: str
) -> None:
    config = http_config(ROUTES, vhost_extra=f"require_tls: {require_tls}", hcm_extra=hcm_extra)
    requests = [
        build_request("GET", "/api/a?b=1", host="example.com:8080"),
        build_request("GET", "/nowhere", host="example.com"),  # redirected before routing
        build_request("GET", "/api/a", headers=[("x-forwarded-proto", "https")]),
        build_request("GET", "/api/a", headers=[("x-forwarded-proto", "HTTPS")]),
        build_request("POST", "/api/b", body=b"x"),
        build_request("OPTIONS", "*"),  # refused before routing (absolute_path_rejected)
    ]
    diffs = await differences(config, requests)
    assert diffs == [], "\n".join(diffs)


async def test_strip_trailing_host_dot_matches_envoy() -> None:
    named = """
- name: named
  domains: ["example.com", "example.com:8080"]
  routes:
  - match: {prefix: "/"}
    direct_response: {status: 200, body: {inline_string: "named"}}
"""
    for extra in ("", "strip_any_host_port: true"):
        config = http_config(
            '- match: {prefix: "/"}\n  route: {cluster: backend}',
            virtual_hosts=named,
            hcm_extra="strip_trailing_host_dot: true\n" + extra,
        )
        requests = [
            build_request(host=host)
            for host in (
                "example.com.",
                "example.com.:8080",
                "example.com..",
                "example.com",
                "other.example.",
                "[::1]:80",
                "127.0.0.1.:80",
                "",  # an empty Host is routed (by the "*" domain)
            )
        ]
        diffs = await differences(config, requests)
        assert diffs == [], f"{extra}:\n" + "\n".join(diffs)


@pytest.mark.parametrize("suppress", [False, True], ids=["envoy-headers", "suppressed"])
async def test_host_and_path_rewrites_record_the_original(suppress: bool) -> None:
    routes = """
- match: {prefix: "/literal"}
  route: {cluster: backend, host_rewrite_literal: new.example, append_x_forwarded_host: true}
- match: {prefix: "/header"}
  route: {cluster: backend, host_rewrite_header: x-new-host, append_x_forwarded_host: true}
- match: {prefix: "/plain"}
  route: {cluster: backend, host_rewrite_literal: new.example, prefix_rewrite: /p}
"""
    requests = [
        build_request("GET", "/literal", host="old.example"),
        build_request("GET", "/literal", host="old.example:81"),
        build_request("GET", "/literal", headers=[("x-forwarded-host", "a.example")]),
        build_request(
            "GET", "/literal", host="old.example", headers=[("x-forwarded-host", "old.example")]
        ),
        build_request(
            "GET",
            "/literal",
            host="old.example",
            headers=[("x-forwarded-host", "old.example, b.example")],
        ),
        build_request(  # the last entry compared as it is, space and all (as Envoy)
            "GET", "/literal", headers=[("x-forwarded-host", "a, example.com")]
        ),
        build_request("GET", "/header", headers=[("x-new-host", "h.example")]),
        build_request("GET", "/header"),  # no header: no rewrite, nothing appended
        build_request("GET", "/plain", headers=[("x-forwarded-host", "a.example")]),
    ]
    config = http_config(routes)
    if suppress:
        config = config.replace(
            f'"@type": {ROUTER_TYPE}',
            f'"@type": {ROUTER_TYPE}\n              suppress_envoy_headers: true',
        )
    diffs = await differences(config, requests)
    assert diffs == [], "\n".join(diffs)


@pytest.mark.parametrize("suppress", [False, True], ids=["envoy-headers", "suppressed"])
async def test_auto_host_rewrite_uses_the_upstream_hosts_name(suppress: bool) -> None:
    """A STRICT_DNS cluster's hosts are named by the DNS name, a STATIC endpoint by its
    ``hostname``; a host without a name leaves the authority alone."""
    routes = """
- match: {prefix: "/named"}
  route: {cluster: named, auto_host_rewrite: true}
- match: {prefix: "/dns"}
  route: {cluster: dns, auto_host_rewrite: true, append_x_forwarded_host: true}
- match: {prefix: "/plain"}
  route: {cluster: backend, auto_host_rewrite: true}
"""
    clusters = """
- name: named
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: named
    endpoints:
    - lb_endpoints:
      - endpoint:
          hostname: up.example
          address: {socket_address: {address: 127.0.0.1, port_value: {upstream_port}}}
- name: dns
  type: STRICT_DNS
  dns_lookup_family: V4_ONLY
  connect_timeout: 1s
  load_assignment:
    cluster_name: dns
    endpoints:
    - lb_endpoints:
      - endpoint:
          address: {socket_address: {address: localhost, port_value: {upstream_port}}}
"""
    config = http_config(routes, clusters=clusters)
    if suppress:
        config = config.replace(
            f'"@type": {ROUTER_TYPE}',
            f'"@type": {ROUTER_TYPE}\n              suppress_envoy_headers: true',
        )
    requests = [
        build_request("GET", "/named"),
        build_request("GET", "/dns", headers=[("x-forwarded-host", "a.example")]),
        build_request("GET", "/plain"),
    ]
    diffs = await differences(config, requests)
    assert diffs == [], "\n".join(diffs)
