"""trioproxy.testing.FilterHarness, exercised on the built-in plugins as a filter author
would use it on theirs."""

from __future__ import annotations

import time

import trio
import trio.testing

from trioproxy.testing import FilterHarness, Scripted

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


async def test_a_local_reply_never_reaches_the_upstream() -> None:
    h = FilterHarness(f"""
      - name: envoy.filters.http.fault
        typed_config:
          "@type": {FAULT}
          abort: {{http_status: 503, percentage: {{numerator: 100}}}}
    """)
    result = await h.request("GET", "/orders")
    assert (result.status, result.body) == (503, b"fault filter abort")
    assert result.local_reply is not None and result.local_reply.flag == "FI"
    assert "FI" in result.info.response_flags
    assert h.upstream.requests == []
    assert h.stat("http.test.fault.aborts_injected") == 1


async def test_what_reaches_the_upstream_and_comes_back() -> None:
    h = FilterHarness(f"""
      - name: envoy.filters.http.rbac
        typed_config:
          "@type": {RBAC}
          rules:
            action: ALLOW
            policies:
              posts:
                permissions: [{{header: {{name: ":method", string_match: {{exact: POST}}}}}}]
                principals: [{{remote_ip: {{address_prefix: 10.0.0.0, prefix_len: 8}}}}]
    """)
    h.upstream.respond(201, [("x-id", "7")], [b"cre", b"ated"], trailers=[("x-sum", "1")])
    result = await h.request("POST", "/items?x=1", [("X-Trace", "a")], [b"ab", b"cd"])
    assert (result.status, result.body) == (201, b"created")
    assert result.header("x-id") == "7"
    assert result.trailers is not None and result.trailers.get("x-sum") == "1"
    [seen] = h.upstream.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/items?x=1", b"abcd")
    assert seen.headers.get("x-trace") == "a"
    denied = await h.request("GET", "/items")
    assert denied.status == 403
    assert denied.info.response_code_details == "rbac_access_denied_matched_policy[none]"
    assert h.stat("http.test.rbac.allowed") == h.stat("http.test.rbac.denied") == 1


async def test_per_route_configs_and_scripted_replies_in_turn() -> None:
    routes = f"""
    virtual_hosts:
    - name: test
      domains: ["*"]
      routes:
      - match: {{prefix: "/quiet"}}
        route: {{cluster: upstream}}
        typed_per_filter_config:
          envoy.filters.http.fault:
            "@type": {FAULT}
            abort: {{http_status: 418, percentage: {{numerator: 0}}}}
      - match: {{prefix: "/"}}
        route: {{cluster: upstream}}
    """
    h = FilterHarness(
        f"""
      - name: envoy.filters.http.fault
        typed_config:
          "@type": {FAULT}
          abort: {{http_status: 418, percentage: {{numerator: 100}}}}
    """,
        routes=routes,
    )
    h.upstream.replies = [Scripted(200, body=[b"first"]), Scripted(500, body=[b"then"])]
    assert (await h.request("GET", "/")).status == 418
    results = [await h.request("GET", "/quiet") for _ in range(3)]
    assert [(r.status, r.body) for r in results] == [
        (200, b"first"),
        (500, b"then"),
        (500, b"then"),  # the last reply repeats
    ]


async def test_delays_run_on_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    h = FilterHarness(f"""
      - name: envoy.filters.http.fault
        typed_config:
          "@type": {FAULT}
          delay: {{fixed_delay: 30s, percentage: {{numerator: 100}}}}
    """)
    wall, start = time.monotonic(), trio.current_time()
    result = await h.request("GET", "/")
    assert result.status == 200
    assert trio.current_time() - start >= 30  # thirty seconds of trio's time
    assert time.monotonic() - wall < 5  # and almost none of the wall clock's
    assert "DI" in result.info.response_flags
