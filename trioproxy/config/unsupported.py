"""Fields of the Envoy v3 API that change what Envoy does and that trioproxy does not do yet.

A config that sets one is refused while it is checked against the schema (``schema.py``), with
the field's path and line, instead of being served as if the field were absent. A field whose
value is listed is accepted with that value (it is Envoy's default, spelt out).

``ACCEPTED_WITHOUT_EFFECT`` lists the fields of the same messages that trioproxy accepts and
does not act on, because what a client or an upstream sees does not depend on them (API
versions, resolver and allocator tuning, TLS session caches, ...). Every other field of these
messages is read somewhere in trioproxy (tests/config/test_unsupported.py holds the three lists
together, so a field added by a newer Envoy API is classified, not silently accepted). Other
modules still refuse a few values themselves where the reason needs more words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TLS = "envoy.extensions.transport_sockets.tls.v3."
_LB = "envoy.extensions.load_balancing_policies."

#: message full name -> {field name: accepted canonical values (Envoy's default spelt out)}
NOT_SUPPORTED: Final[Mapping[str, Mapping[str, tuple[Any, ...]]]] = {
    _HCM: {
        # 100-continue is answered by the proxy, as Envoy's default
        "proxy_100_continue": (False,),
        "http1_safe_max_connection_duration": (False,),
        "scheme_header_transformation": (),
        "stream_flush_timeout": (),
        "access_log_options": (),
        "original_ip_detection_extensions": (),
        "early_header_mutation_extensions": (),
        "forward_client_cert_matcher": (),
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6": (),
        "request_id_extension": (),
        "stream_error_on_invalid_http_message": (False,),
        "path_normalization_options": (),
        "proxy_status_config": (),
        "typed_header_validation_config": (),
    },
    "envoy.config.route.v3.RouteConfiguration": {
        "vhds": (),
        "cluster_specifier_plugins": (),
        "vhost_header": (),
        "ignore_path_parameters_in_path_matching": (),
    },
    "envoy.config.route.v3.VirtualHost": {
        "virtual_clusters": (),
        "retry_policy_typed_config": (),
        "hedge_policy": (),
        "include_is_timeout_retry_header": (),
        "request_body_buffer_limit": (),
    },
    "envoy.config.route.v3.Route": {
        "filter_action": (),
        "non_forwarding_action": (),
        "request_body_buffer_limit": (),
    },
    "envoy.config.route.v3.RouteMatch": {
        "tls_context": (),
        "dynamic_metadata": (),
    },
    "envoy.config.route.v3.RouteAction": {
        "cluster_specifier_plugin": (),
        "inline_cluster_specifier_plugin": (),
        "path_rewrite_policy": (),
        "path_rewrite": (),
        "host_rewrite_path_regex": (),
        "host_rewrite": (),
        "flush_timeout": (),
        "retry_policy_typed_config": (),
        "hedge_policy": (),
    },
    "envoy.extensions.filters.http.router.v3.Router": {
        "suppress_grpc_request_failure_code_stats": (),
    },
    "envoy.config.core.v3.HttpProtocolOptions": {
        # (no limit on an upstream's response head yet: Envoy's default, spelt out, is
        # accepted as leaving the field out is)
        "max_response_headers_kb": (60,),
    },
    "envoy.config.core.v3.Http1ProtocolOptions": {
        "allow_absolute_url": (True,),
        "enable_trailers": (),
        "allow_chunked_length": (),
        "send_fully_qualified_url": (),
        "allow_custom_methods": (),
        "ignore_http_11_upgrade": (),
        # an invalid message closes the connection, as the connection manager's default
        "override_stream_error_on_invalid_http_message": (False,),
    },
    "envoy.config.core.v3.Http1ProtocolOptions.HeaderKeyFormat": {
        # (the preserve-case formatter: names as the peer wrote them)
        "stateful_formatter": (),
    },
    "envoy.config.core.v3.Http2ProtocolOptions": {
        "hpack_table_size": (4096,),
        "allow_connect": (),
        "allow_metadata": (),
        # Envoy's defaults, which are ours (the priority and WINDOW_UPDATE floods are not
        # counted yet: the README says so)
        "max_outbound_frames": (10000,),
        "max_outbound_control_frames": (1000,),
        "max_consecutive_inbound_frames_with_empty_payload": (1,),
        "max_inbound_priority_frames_per_stream": (100,),
        "max_inbound_window_update_frames_per_data_frame_sent": (10,),
        "override_stream_error_on_invalid_http_message": (False,),
        "custom_settings_parameters": (),
    },
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "upstream_http_protocol_options": (),
        "header_validation_config": (),
    },
    "envoy.config.cluster.v3.Cluster": {
        # (names are resolved by the system's resolver, not by resolvers named here)
        "typed_dns_resolver_config": (),
        # (a match could make a connection TLS that would go out in plaintext)
        "transport_socket_matches": (),
        "transport_socket_matcher": (),
        "lb_subset_config": (),
        "round_robin_lb_config": (),
        "close_connections_on_host_health_failure": (),
        "ignore_health_on_host_removal": (),
        "lrs_server": (),
        "lrs_report_endpoint_metrics": (),
        "upstream_config": (),
        "track_cluster_stats": (),
        "connection_pool_per_downstream_connection": (),
    },
    "envoy.config.cluster.v3.UpstreamConnectionOptions": {
        "set_local_interface_name_on_upstream_connections": (),
        "happy_eyeballs_config": (),
    },
    "envoy.config.endpoint.v3.Endpoint": {"health_check_config": ()},
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {"leds_cluster_locality_config": ()},
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": {
        "drop_overloads": (),
        "endpoint_stale_after": (),
        "weighted_priority_health": (),
    },
    "envoy.config.core.v3.HealthCheck": {
        "alt_port": (),
        "event_service": (),
    },
    "envoy.config.listener.v3.Listener": {
        "fcds_config": (),
        "transparent": (False,),
        "freebind": (False,),
        "socket_options": (),
        "tcp_fast_open_queue_length": (),
        "api_listener": (),
        "internal_listener": (),
        "enable_mptcp": (),
    },
    "envoy.config.listener.v3.FilterChain": {"transport_socket_connect_timeout": ()},
    "envoy.config.listener.v3.FilterChainMatch": {
        "address_suffix": (),
        "suffix_len": (),
    },
    "envoy.config.bootstrap.v3.Bootstrap": {
        "hds_config": (),
        "header_prefix": (),
        "bootstrap_extensions": (),
        "config_sources": (),
        "default_config_source": (),
        "certificate_provider_instances": (),
        "xds_delegate_extension": (),
        "listener_manager": (),
        "typed_dns_resolver_config": (),
    },
    "envoy.config.bootstrap.v3.Admin": {
        "socket_options": (),
        "allow_paths": (),
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
        "downstream_idle_timeout": (),
        "upstream_idle_timeout": (),
        "max_downstream_connection_duration_jitter_percentage": (),
        "access_log_options": (),
        "upstream_connect_mode": (),
        "max_early_data_bytes": (),
    },
    "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig": {"access_log_options": ()},
    _TLS + "UpstreamTlsContext": {
        "auto_host_sni": (),
        "auto_sni_san_validation": (),
        "allow_renegotiation": (False,),
    },
    _TLS + "DownstreamTlsContext": {"require_sni": (False,)},
    _TLS + "CommonTlsContext": {
        "tls_certificate_provider_instance": (),
        "custom_tls_certificate_selector": (),
        "custom_handshaker": (),
        "key_log": (),
    },
    _TLS + "CertificateValidationContext": {
        "ca_certificate_provider_instance": (),
        "system_root_certs": (),
        "require_signed_certificate_timestamp": (False,),
        "trust_chain_verification": (),
        "only_verify_leaf_cert_crl": (),
        "max_verify_depth": (),
    },
    "envoy.config.core.v3.ApiConfigSource": {"config_validators": ()},
    "envoy.config.endpoint.v3.ClusterLoadAssignment": {"named_endpoints": ()},
    "envoy.extensions.filters.http.compressor.v3.Compressor": {"choose_first": (False,)},
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": {
        "bootstrap_metadata_labels_key": (),
        "max_denied_response_body_bytes": (),
        "enforce_response_header_limits": (False,),
    },
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {
        "close_connection_on_client_hello_parsing_errors": (False,),
        "max_client_hello_size": (),
    },
    _LB + "round_robin.v3.RoundRobin": {"slow_start_config": (), "locality_lb_config": ()},
    _LB + "least_request.v3.LeastRequest": {
        "slow_start_config": (),
        "locality_lb_config": (),
        "selection_method": (),
    },
    _LB + "random.v3.Random": {"locality_lb_config": ()},
}


#: message full name -> fields accepted and not acted on, with why that is harmless
ACCEPTED_WITHOUT_EFFECT: Final[Mapping[str, Mapping[str, str]]] = {
    _HCM: {
        "append_local_overload": "there is no overload manager, so never overloaded",
        "add_proxy_protocol_connection_state": "only feeds filter state no filter here reads",
    },
    "envoy.config.route.v3.RouteConfiguration": {
        "max_direct_response_body_size_bytes": "direct response bodies are not capped",
    },
    "envoy.config.route.v3.RouteAction": {"early_data_policy": "there is no TLS early data"},
    "envoy.config.core.v3.Http2ProtocolOptions": {
        "use_oghttp2_codec": "a choice of Envoy's codec library",
        "max_metadata_size": "METADATA frames are not supported (allow_metadata is refused)",
    },
    "envoy.config.cluster.v3.Cluster": {
        "wait_for_warm_on_init": "clusters are warmed before the listeners start",
        "preconnect_policy": "connections are opened on demand (speed only)",
    },
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {"proximity": "unused by Envoy too"},
    "envoy.config.core.v3.HealthCheck": {
        "always_log_health_check_failures": "there is no health check event log",
        "always_log_health_check_success": "there is no health check event log",
    },
    "envoy.config.listener.v3.Listener": {
        "drain_type": "listeners drain on update and shutdown alike",
        "connection_balance_config": "the kernel balances SO_REUSEPORT workers",
        "enable_reuse_port": "workers always share a port with SO_REUSEPORT",
        "tcp_backlog_size": "the listen backlog is the system's default",
        "ignore_global_conn_limit": "there is no global connection limit",
        "bypass_overload_manager": "there is no overload manager",
    },
    "envoy.config.bootstrap.v3.Bootstrap": {
        name: "tuning of Envoy's own process"
        for name in (
            "node_context_params",
            "flags_path",
            "deferred_stat_options",
            "stats_flush_on_admin",
            "stats_eviction_interval",
            "enable_dispatcher_stats",
            "stats_server_version_override",
            "fatal_actions",
            "default_socket_interface",
            "inline_headers",
            "perf_tracing_file_path",
            "default_regex_engine",
            "xds_config_tracker_extension",
            "application_log_config",
            "grpc_async_client_manager_config",
            "memory_allocator_manager",
        )
    },
    "envoy.config.bootstrap.v3.Admin": {
        "profile_path": "there is no CPU profiler endpoint",
        "ignore_global_conn_limit": "there is no global connection limit",
    },
    _TLS + "UpstreamTlsContext": {
        "max_session_keys": "TLS session caching (speed only)",
        "enforce_rsa_key_usage": "left to the TLS library",
    },
    _TLS + "DownstreamTlsContext": {
        name: "TLS session caching and cipher preference (speed only)"
        for name in (
            "disable_stateless_session_resumption",
            "disable_stateful_session_resumption",
            "session_timeout",
            "full_scan_certs_on_sni_mismatch",
            "prefer_client_ciphers",
        )
    },
    "envoy.config.trace.v3.OpenTelemetryConfig": {
        "max_cache_size": "spans are sent as they end (delivery, not content)",
    },
    "envoy.extensions.compression.gzip.compressor.v3.Gzip": {
        "chunk_size": "how the compressor buffers; the bytes inflate to the same body",
    },
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": {
        "transport_api_version": "v3 is the only version",
    },
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {
        "enable_ja3_fingerprinting": "no JA3 fingerprint is computed or logged",
        "enable_ja4_fingerprinting": "no JA4 fingerprint is computed or logged",
        "initial_read_buffer_size": "how the ClientHello is read (speed only)",
    },
    _TLS + "Secret": {"generic_secret": "no filter here reads generic secrets"},
    "envoy.config.core.v3.ApiConfigSource": {
        "transport_api_version": "v3 is the only version",
        "cluster_names": "the gRPC service names its cluster",
        "refresh_delay": "REST polling is not offered",
        "rate_limit_settings": "xDS requests are not rate limited",
    },
}


def refused(message: str, fields: Mapping[str, Any]) -> str | None:
    """The first field of ``fields`` (a canonical ``message``) that trioproxy cannot honour."""
    table = NOT_SUPPORTED.get(message)
    if table is None:
        return None
    for name, accepted in table.items():
        if name in fields and fields[name] not in accepted:
            return name
    return None
