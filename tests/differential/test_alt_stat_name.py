"""A cluster's ``alt_stat_name`` through real Envoy and trioproxy: its stats are
``cluster.<alt_stat_name>.*`` (none under its name), ``/clusters`` shows it as the
``observability_name``, ``%UPSTREAM_CLUSTER%`` logs it and ``%UPSTREAM_CLUSTER_RAW%`` the
cluster's own name (for a proxied request and for an upgrade refused with 403). (tcp_proxy
sets the same two names; not compared here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from .harness import build_request, find_envoy, http_config, nonzero_stats, run_proxy, send_raw
from .test_h2_graceful_close import upstream  # answers "ok"

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

LOG = """access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {path}
    log_format:
      text_format_source: {{inline_string: "%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%\\n"}}
"""


async def _admin(port: int, path: str) -> str:
    return (await send_raw(port, build_request("GET", path))).body.decode()


async def _outcome(kind: str, tmp: Path) -> tuple[int, dict[str, str], list[str], str, str]:
    log = tmp / f"{kind}.log"
    cfg = http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend}', hcm_extra=LOG.format(path=log)
    )
    cfg = cfg.replace(
        "    connect_timeout: 1s\n", "    connect_timeout: 1s\n    alt_stat_name: alt\n"
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            response = await send_raw(proxy.listener_port, build_request("GET", "/"))
            # an upgrade the route does not enable: 403, logged with the cluster's names too
            upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
            refused = await send_raw(proxy.listener_port, build_request("GET", "/ws", upgrade))
            assert refused.status == 403
            stats = await nonzero_stats(proxy.admin_port, "cluster.")
            text = await _admin(proxy.admin_port, "/clusters")
            js = json.loads(await _admin(proxy.admin_port, "/clusters?format=json"))
        nursery.cancel_scope.cancel()
    (status,) = [c for c in js["cluster_statuses"] if c["name"] == "backend"]
    names = [line for line in text.splitlines() if "::observability_name::" in line]
    return response.status, stats, names, status["observability_name"], log.read_text()


async def test_alt_stat_name_names_the_cluster_in_stats_admin_and_logs_as_envoy(
    tmp_path: Path,
) -> None:
    envoy = await _outcome("envoy", tmp_path)
    status, stats, names, observability, log = envoy
    assert status == 200
    assert stats["cluster.alt.upstream_rq_200"] == "1"
    assert not [name for name in stats if name.startswith("cluster.backend.")]
    assert names == ["backend::observability_name::alt"]
    assert (observability, log) == ("alt", "alt backend\nalt backend\n")
    ours = await _outcome("trioproxy", tmp_path)
    assert ours[0] == status
    assert ours[1]["cluster.alt.upstream_rq_200"] == "1"
    assert not [name for name in ours[1] if name.startswith("cluster.backend.")]
    assert ours[2:] == envoy[2:]
