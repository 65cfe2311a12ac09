"""ClusterConfig.from_proto: what is accepted, defaults, and errors with field paths."""

from __future__ import annotations

from typing import Any

import pytest

from trioproxy.errors import ConfigError
from trioproxy.upstream.config import ClusterConfig


def cluster(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "backend",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 8080}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    d.update(extra)
    return d


def test_defaults_are_the_edge_defaults() -> None:
    c = ClusterConfig.from_proto(cluster())
    assert c.name == "backend"
    assert c.type == "STATIC"
    assert c.lb_policy == "ROUND_ROBIN"
    assert c.connect_timeout == 5.0
    assert c.dns_refresh_rate == 5.0
    assert c.dns_lookup_family == "AUTO"
    assert c.idle_timeout == 50.0
    assert c.per_connection_buffer_limit_bytes == 32 * 1024
    assert c.max_requests_per_connection == 0
    cb = c.circuit_breakers
    assert (cb.max_connections, cb.max_pending_requests, cb.max_requests, cb.max_retries) == (
        1024,
        1024,
        1024,
        3,
    )
    assert c.endpoints[0].address == "127.0.0.1"
    assert c.endpoints[0].port == 8080
    assert c.endpoints[0].weight == 1
    assert not c.http2
    assert c.tls is None
    assert c.raw["name"] == "backend"


def test_full_config() -> None:
    d = cluster(
        connect_timeout="0.250s",
        lb_policy="LEAST_REQUEST",
        least_request_lb_config={"choice_count": 3},
        dns_refresh_rate="10s",
        respect_dns_ttl=True,
        dns_lookup_family="V4_ONLY",
        circuit_breakers={
            "thresholds": [
                {"priority": "HIGH", "max_connections": 7},
                {"max_connections": 10, "max_pending_requests": "20", "max_requests": 30},
            ]
        },
        per_connection_buffer_limit_bytes={"value": 1024},
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
                "common_http_protocol_options": {
                    "idle_timeout": "30s",
                    "max_requests_per_connection": 100,
                },
            }
        },
        transport_socket={
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "x",
            },
        },
    )
    d["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 5
    d["load_assignment"]["endpoints"].append(
        {
            "priority": 1,
            "locality": {"zone": "b"},
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": "::1", "port_value": 81}}
                    },
                    "health_status": "UNHEALTHY",
                }
            ],
        }
    )
    c = ClusterConfig.from_proto(d)
    assert c.connect_timeout == 0.25
    assert c.lb_policy == "LEAST_REQUEST"
    assert c.choice_count == 3
    assert c.dns_refresh_rate == 10.0
    assert c.respect_dns_ttl
    assert c.dns_lookup_family == "V4_ONLY"
    assert c.circuit_breakers.max_connections == 10
    assert c.circuit_breakers.max_pending_requests == 20
    assert c.circuit_breakers.max_requests == 30
    assert c.circuit_breakers.max_retries == 3
    assert c.per_connection_buffer_limit_bytes == 1024
    assert c.idle_timeout == 30.0
    assert c.max_requests_per_connection == 100
    assert c.http2
    assert c.tls is not None and c.tls["sni"] == "x"
    assert c.endpoints[0].weight == 5
    assert c.endpoints[1].priority == 1
    assert c.endpoints[1].locality.zone == "b"
    assert not c.endpoints[1].healthy
    assert [(e.address, e.priority) for e in c.endpoints] == [("127.0.0.1", 0), ("::1", 1)]


def test_older_hosts_field() -> None:
    d = {"name": "x", "hosts": [{"socket_address": {"address": "10.0.0.1", "port_value": 80}}]}
    c = ClusterConfig.from_proto(d)
    assert [(e.address, e.port) for e in c.endpoints] == [("10.0.0.1", 80)]


def test_zero_idle_timeout_disables_it() -> None:
    c = ClusterConfig.from_proto(cluster(common_http_protocol_options={"idle_timeout": "0s"}))
    assert c.idle_timeout is None


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"type": "ORIGINAL_DST"}, "lb_policy", "Only 'CLUSTER_PROVIDED' is allowed"),
        (
            {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"},
            "load_assignment",
            "must have no load assignment",
        ),
        ({"lb_policy": "CLUSTER_PROVIDED"}, "lb_policy", "did not provide one"),
        (
            {"upstream_bind_config": {"source_address": {"address": "here"}}},
            "upstream_bind_config.source_address.address",
            "malformed IP address",
        ),
        ({"type": "EDS"}, "load_assignment", "takes its endpoints from EDS"),
        ({"type": "BOGUS"}, "type", "unknown"),
        (
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}},
            "maglev_lb_config.table_size",
            "must be prime",
        ),
        (
            {
                "lb_policy": "RING_HASH",
                "ring_hash_lb_config": {"minimum_ring_size": 4096, "maximum_ring_size": 1024},
            },
            "ring_hash_lb_config.minimum_ring_size",
            "> maximum_ring_size",
        ),
        (
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "CRC32"}},
            "ring_hash_lb_config.hash_function",
            "unknown hash_function",
        ),
        (
            {
                "lb_policy": "MAGLEV",
                "common_lb_config": {
                    "consistent_hashing_lb_config": {"use_hostname_for_hashing": True}
                },
            },
            "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
            "for cluster of type: 'envoy.cluster.static'",
        ),
        (
            {
                "lb_policy": "RING_HASH",
                "common_lb_config": {"consistent_hashing_lb_config": {"hash_balance_factor": 150}},
            },
            "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
            "not supported yet",
        ),
        ({"lb_policy": "LEAST_LOADED"}, "lb_policy", "unknown"),
        ({"dns_lookup_family": "V5"}, "dns_lookup_family", "unknown"),
        ({"connect_timeout": "soon"}, "connect_timeout", "invalid duration"),
        ({"connect_timeout": "0s"}, "connect_timeout", "greater than 0"),
        ({"name": ""}, "name", "required"),
        (
            {"circuit_breakers": {"thresholds": [{"max_connections": -1}]}},
            "circuit_breakers.thresholds[0].max_connections",
            "unsigned",
        ),
        (
            {"least_request_lb_config": {"choice_count": 1}},
            "least_request_lb_config.choice_count",
            "at least 2",
        ),
        (
            {"common_http_protocol_options": {"idle_timeout": 5j}},
            "common_http_protocol_options.idle_timeout",
            "invalid duration",
        ),
    ],
)
def test_errors_name_the_field(extra: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(cluster(**extra))
    assert info.value.path == path
    assert reason in info.value.reason


def test_static_cluster_takes_ip_addresses_only() -> None:
    d = cluster()
    sa = d["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    sa["socket_address"]["address"] = "example.com"
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(d)
    assert "malformed IP address" in info.value.reason
    assert info.value.path == (
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
    )
    d["type"] = "STRICT_DNS"
    assert ClusterConfig.from_proto(d).endpoints[0].address == "example.com"


def test_bad_port_and_weight_paths() -> None:
    d = cluster()
    lbe = d["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    lbe["endpoint"]["address"]["socket_address"]["port_value"] = 70000
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(d)
    assert info.value.path.endswith("lb_endpoints[0].endpoint.address.socket_address.port_value")
    lbe["endpoint"]["address"]["socket_address"]["port_value"] = 80
    lbe["load_balancing_weight"] = 0
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(d)
    assert info.value.path == "load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight"


def test_logical_dns_needs_exactly_one_endpoint() -> None:
    d = cluster(type="LOGICAL_DNS")
    eps = d["load_assignment"]["endpoints"][0]["lb_endpoints"]
    eps.append(eps[0])
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(d)
    assert info.value.path == "load_assignment"


def test_error_prefix_with_at() -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(cluster(type="EDS"))
    err = info.value.at("static_resources.clusters[2]")
    assert err.path == "static_resources.clusters[2].load_assignment"


def test_typed_load_balancing_policy() -> None:
    lr = (
        "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
    )
    d = cluster(
        load_balancing_policy={
            "policies": [
                {"typed_extension_config": {"name": "x", "typed_config": {"@type": "unknown"}}},
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.least_request",
                        "typed_config": {"@type": lr, "choice_count": 4},
                    }
                },
            ]
        },
        common_lb_config={"healthy_panic_threshold": {"value": 0}},
    )
    c = ClusterConfig.from_proto(d)
    assert (c.lb_policy, c.choice_count, c.healthy_panic_threshold) == ("LEAST_REQUEST", 4, 0.0)
    d["load_balancing_policy"]["policies"].pop()
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(d)
    assert info.value.path == "load_balancing_policy.policies"


def test_consistent_hashing_settings() -> None:
    d = cluster(
        type="STRICT_DNS",
        lb_policy="RING_HASH",
        ring_hash_lb_config={"hash_function": "MURMUR_HASH_2"},
        common_lb_config={"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}},
    )
    h = ClusterConfig.from_proto(d).hash_lb
    assert (h.hash_function, h.use_hostname_for_hashing) == ("MURMUR_HASH_2", True)
    maglev = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev"
    typed = {
        "@type": maglev,
        "table_size": 13,
        "consistent_hashing_lb_config": {"use_hostname_for_hashing": True},
    }
    d = cluster(
        load_balancing_policy={
            "policies": [{"typed_extension_config": {"name": "m", "typed_config": typed}}]
        }
    )
    # Envoy checks the cluster type only for the cluster-level field
    h = ClusterConfig.from_proto(d).hash_lb
    assert (h.table_size, h.use_hostname_for_hashing) == (13, True)
    assert ClusterConfig.from_proto(cluster(lb_policy="MAGLEV")).hash_lb.hash_function == "XX_HASH"


def test_auto_config_without_tls_is_refused_as_envoy_refuses_it() -> None:
    """Without TLS there is no ALPN to pick HTTP/2 or HTTP/1.1 with: Envoy 1.40 refuses the
    cluster ("ALPN configured for cluster backend which has a non-ALPN transport socket")."""
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    raw = {
        "name": "backend",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            options: {"@type": f"type.googleapis.com/{options}", "auto_config": {}}
        },
    }
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_proto(raw)
    assert info.value.reason == (
        "ALPN configured for cluster backend which has a non-ALPN transport socket"
    )
