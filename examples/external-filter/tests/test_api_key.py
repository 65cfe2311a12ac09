"""The API key filter, tested with trioproxy's harness: no sockets, no proxy process."""

from __future__ import annotations

from trioproxy.testing import FilterHarness

FILTER = """
- name: example.filters.http.api_key
  typed_config:
    "@type": type.googleapis.com/example.filters.http.api_key.v1.ApiKey
    clients:
    - {name: billing, key: s3cret-billing}
    - {name: reports, key: s3cret-reports}
"""


async def test_a_known_key_passes_as_the_clients_name() -> None:
    h = FilterHarness(FILTER)
    result = await h.request("GET", "/invoices", [("x-api-key", "s3cret-billing")])
    assert result.status == 200
    [seen] = h.upstream.requests
    assert seen.headers.get("x-api-client") == "billing"
    assert "x-api-key" not in seen.headers  # the secret stops at the proxy
    assert h.stat("http.test.api_key.allowed") == 1


async def test_missing_and_unknown_keys_are_answered_by_the_proxy() -> None:
    h = FilterHarness(FILTER)
    missing = await h.request("GET", "/invoices")
    unknown = await h.request("GET", "/invoices", [("x-api-key", "guess")])
    assert (missing.status, missing.header("www-authenticate")) == (
        401,
        'ApiKey header="x-api-key"',
    )
    assert (unknown.status, unknown.body) == (403, b"unknown API key\n")
    assert h.upstream.requests == []
    assert h.stat("http.test.api_key.missing") == h.stat("http.test.api_key.denied") == 1


async def test_a_route_can_switch_the_check_off() -> None:
    routes = """
    virtual_hosts:
    - name: test
      domains: ["*"]
      routes:
      - match: {prefix: "/health"}
        route: {cluster: upstream}
        typed_per_filter_config:
          example.filters.http.api_key:
            "@type": type.googleapis.com/example.filters.http.api_key.v1.ApiKey
            disabled: true
      - match: {prefix: "/"}
        route: {cluster: upstream}
    """
    h = FilterHarness(FILTER, routes=routes)
    assert (await h.request("GET", "/health")).status == 200
    assert (await h.request("GET", "/orders")).status == 401


def test_a_bad_config_names_the_field() -> None:
    import pytest

    from trioproxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"clients\[1\].key"):
        FilterHarness("""
        - name: example.filters.http.api_key
          typed_config:
            "@type": type.googleapis.com/example.filters.http.api_key.v1.ApiKey
            clients: [{name: a, key: same}, {name: b, key: same}]
        """)
