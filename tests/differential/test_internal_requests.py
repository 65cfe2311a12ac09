"""Which requests are internal, and what Envoy does to the others' headers: the same requests
through Envoy and trioproxy, with and without use_remote_address and internal_address_config."""

from __future__ import annotations

import pytest

from .harness import CaseResult, build_request, compare, find_envoy, run_case
from .test_http1_basic import CONFIG, HCM_TYPE

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

BASE = CONFIG.replace("{hcm_type}", HCM_TYPE)
HCM_LINE = "          stat_prefix: ingress_http\n"
RID = "12345678-1234-4234-8234-123456789012"
CONTROL = [
    ("x-envoy-force-trace", "true"),
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-decorator-operation", "op"),
    ("x-envoy-downstream-service-cluster", "peer"),
    ("x-envoy-internal", "true"),
    ("x-envoy-foo", "kept"),
    ("x-request-id", RID),
]


def with_hcm(extra: str) -> str:
    return BASE.replace(
        HCM_LINE, HCM_LINE + "".join(f"          {ln}\n" for ln in extra.splitlines())
    )


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "use_remote_address: true",
        "internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
        "use_remote_address: true\n"
        "internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
        "use_remote_address: true\nskip_xff_append: true",
    ],
    ids=["default", "remote-address", "internal-xff", "internal-remote", "skip-append"],
)
async def test_internal_and_external_requests_match_envoy(extra: str) -> None:
    config = with_hcm(extra)
    requests = [
        build_request("GET", "/api/a", headers=CONTROL),
        build_request("GET", "/api/b", headers=[("x-forwarded-for", "10.1.2.3"), *CONTROL]),
        build_request(
            "GET", "/api/c", headers=[("x-forwarded-for", "8.8.8.8, 10.1.2.3"), *CONTROL]
        ),
    ]
    envoy = await run_case("envoy", config, requests)
    ours = await run_case("trioproxy", config, requests)
    diffs = compare(envoy, ours)
    assert diffs == [], "\n".join(diffs)


EXTRA_CASES = [
    "add_user_agent: true",
    "add_user_agent: true\nuse_remote_address: true",
    "add_user_agent: true\nuse_remote_address: true\n"
    "internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
    "append_x_forwarded_port: true",
    "append_x_forwarded_port: true\nuse_remote_address: true",
    "append_x_forwarded_port: true\nuse_remote_address: true\nxff_num_trusted_hops: 1",
    "use_remote_address: true\nxff_num_trusted_hops: 1",
]


@pytest.mark.parametrize("extra", EXTRA_CASES)
@pytest.mark.parametrize("internal_only", [False, True], ids=["", "internal-only"])
async def test_user_agent_forwarded_port_and_internal_only_headers_match_envoy(
    extra: str, internal_only: bool
) -> None:
    config = "node: {id: node-7, cluster: front}\n" + with_hcm(extra)
    if internal_only:
        config = config.replace(
            "          route_config:\n",
            "          route_config:\n            internal_only_headers: [x-secret, x-other]\n",
        )
    requests = [
        build_request("GET", "/api/a", headers=[("x-secret", "s"), ("x-kept", "k")]),
        build_request(
            "GET",
            "/api/b",
            headers=[
                ("user-agent", "curl/8"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-envoy-downstream-service-cluster", "peer"),
                ("x-envoy-downstream-service-node", "peer-node"),
                ("X-Other", "o"),
            ],
        ),
        build_request("GET", "/api/c", headers=[("user-agent", "")]),
    ]
    envoy = await run_case("envoy", config, requests)
    ours = await run_case("trioproxy", config, requests)
    # x-forwarded-port names the listener's port, which differs between the two proxies:
    # compared as "the client's value" or "the listener's", and then by presence
    assert _forwarded_ports(ours) == _forwarded_ports(envoy)
    diffs = compare(envoy, ours, ignore=["x-forwarded-port"])
    assert diffs == [], "\n".join(diffs)


def _forwarded_ports(result: CaseResult) -> list[str | None]:
    values = [r.header("x-forwarded-port") for r in result.upstream_requests]
    own = {v for v in values if v is not None and v != "8443"}
    assert len(own) <= 1 and all(v.isdigit() for v in own), values
    return [v if v in (None, "8443") else "<listener port>" for v in values]
