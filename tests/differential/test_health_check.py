"""HTTP health checks through real Envoy and trioproxy: the check request an upstream sees,
the first response it gets through the proxy, and the health_check stats that exist."""

from __future__ import annotations

import fnmatch

import pytest
import trio

from .harness import (
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    get_stat_names,
    run_proxy,
    send_raw,
)
from .test_http1_basic import CONFIG

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

HEALTH_CHECKED = CONFIG.replace(
    "    connect_timeout: 1s\n",
    """    connect_timeout: 1s
    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check:
        path: /healthz
        request_headers_to_add: [{header: {key: x-probe, value: "1"}}]
""",
)


async def observe(kind: str) -> tuple[tuple[str, str, tuple[tuple[str, str], ...]], int, set[str]]:
    upstream = RecordingUpstream(script=(Reply(),))
    listeners = await upstream.listen()
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, listeners)
        async with run_proxy(kind, HEALTH_CHECKED, upstream.port) as proxy:
            first = await send_raw(proxy.listener_port, build_request("GET", "/api/x"))
            await trio.sleep(0.5)
            names = await get_stat_names(proxy.admin_port)
        nursery.cancel_scope.cancel()
    check = next(r for r in upstream.requests if r.target == "/healthz")
    stats = {n for n in names if fnmatch.fnmatchcase(n, "cluster.backend.health_check.*")}
    return (check.method, check.target, check.headers), first.status, stats


async def test_http_health_checks_match_envoy() -> None:
    envoy = await observe("envoy")
    probe_headers = (("host", "backend"), ("user-agent", "Envoy/HC"), ("x-probe", "1"))
    assert envoy[0] == ("GET", "/healthz", probe_headers)
    assert envoy[1] == 200  # the cluster waited for its first check: the host is in
    ours = await observe("trioproxy")
    assert ours == envoy
