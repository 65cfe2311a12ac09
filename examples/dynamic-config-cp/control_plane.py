"""The demo's control plane: one snapshot for node ``test-id``, served over ADS and RDS.

    python examples/dynamic-config-cp/control_plane.py                      # service1, v1
    python examples/dynamic-config-cp/control_plane.py --service service2 --version 2

As in the Envoy sandbox, switching is done by restarting it with the other service and a new
version: the proxy keeps its last configuration while the control plane is away, reconnects,
and applies version 2. The snapshot is the sandbox's: cluster ``example_proxy_cluster``
(LOGICAL_DNS, one endpoint), listener ``listener_0`` on port 10000 whose routes come by RDS
on their own gRPC stream (``api_config_source``), route configuration ``local_route``.
Needs grpcio (``pip install grpcio``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from trioproxy.testing.xds_server import AdsServer
from trioproxy.xds import resources as R

SERVICE_PORTS = {"service1": 8081, "service2": 8082}
HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def snapshot(service_port: int, listen_port: int) -> dict[str, list[dict[str, Any]]]:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": service_port}}}
    return {
        R.CLUSTER: [
            {
                "name": "example_proxy_cluster",
                "type": "LOGICAL_DNS",
                "connect_timeout": "5s",
                "dns_lookup_family": "V4_ONLY",
                "load_assignment": {
                    "cluster_name": "example_proxy_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                },
            }
        ],
        R.LISTENER: [
            {
                "name": "listener_0",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": listen_port}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": {
                                    "@type": HCM,
                                    "codec_type": "AUTO",
                                    "stat_prefix": "http",
                                    "rds": {
                                        "route_config_name": "local_route",
                                        "config_source": {
                                            "resource_api_version": "V3",
                                            "api_config_source": {
                                                "api_type": "GRPC",
                                                "transport_api_version": "V3",
                                                "set_node_on_first_message_only": True,
                                                "grpc_services": [
                                                    {"envoy_grpc": {"cluster_name": "xds_cluster"}}
                                                ],
                                            },
                                        },
                                    },
                                    "http_filters": [
                                        {
                                            "name": "envoy.filters.http.router",
                                            "typed_config": {
                                                "@type": "type.googleapis.com/"
                                                "envoy.extensions.filters.http.router.v3.Router"
                                            },
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
            }
        ],
        R.ROUTE: [
            {
                "name": "local_route",
                "virtual_hosts": [
                    {
                        "name": "local_service",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": "example_proxy_cluster"},
                            }
                        ],
                    }
                ],
            }
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service", choices=sorted(SERVICE_PORTS), default="service1")
    parser.add_argument("--version", default="1")
    parser.add_argument("--port", type=int, default=18000, help="gRPC port")
    parser.add_argument("--service-port", type=int, help="the echo service's port")
    parser.add_argument("--listen-port", type=int, default=10000, help="listener_0's port")
    args = parser.parse_args()
    server = AdsServer()
    port = args.service_port or SERVICE_PORTS[args.service]
    for type_url, resources in snapshot(port, args.listen_port).items():
        server.set(type_url, args.version, resources)
    server.start(args.port)
    print(
        f"control plane on 127.0.0.1:{args.port}: version {args.version}, "
        f"example_proxy_cluster -> {args.service} (127.0.0.1:{port})",
        flush=True,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
