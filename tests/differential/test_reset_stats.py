"""Failed upstream requests through real Envoy and trioproxy: the same misbehaving upstream
(HTTP/1.1 and HTTP/2), the same requests; the status each client got and how each proxy
counted the failures (``upstream_rq_{rx,tx}_reset``, ``upstream_rq_pending_failure_eject``,
``upstream_cx_destroy*``, ``upstream_cx_protocol_error``, the timeouts).

Each way of failing has its own cluster (all on the same upstream, routed by path), so one
proxy of each kind serves them all and the counters stay apart.
"""

from __future__ import annotations

import textwrap

import pytest
import trio

from tests.upstream.test_reset_stats import (
    COUNTERS,
    H2_OPTIONS,
    _request,
    http1_upstream,
    http2_upstream,
)

from .harness import (
    build_request,
    find_envoy,
    free_port,
    http_config,
    render,
    run_proxy,
    send_raw,
    static_cluster,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

#: path → the cluster it goes to; ``refused`` points at a port nothing listens on
CASES = {
    "/close": "close",
    "/cut": "cut",
    "/reset": "reset",
    "/garbage": "garbage",
    "/gone": "gone",
    "/timeout": "timeout",
    "/per-try": "per_try",
    "/refused": "refused",
}
#: and how each connection ended (a refused connect included)
COMPARED = (
    *COUNTERS,
    "upstream_cx_destroy",
    "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote",
)
ROUTE_EXTRA = {
    "timeout": "timeout: 0.5s",
    "per_try": (
        "timeout: 5s\n    retry_policy: {retry_on: reset, num_retries: 0, per_try_timeout: 0.5s}"
    ),
}


def _config(http2: bool) -> str:
    routes = "".join(
        f"""
- match: {{path: "{path}"}}
  route:
    cluster: {name}
    {ROUTE_EXTRA.get(name, "")}"""
        for path, name in CASES.items()
    )
    options = textwrap.indent(H2_OPTIONS, "  ") if http2 else ""  # under the cluster's name
    clusters = "".join(
        static_cluster(name, "{refused_port}" if name == "refused" else "{upstream_port}") + options
        for name in CASES.values()
    )
    return http_config(routes, clusters=clusters)


async def _outcomes(kind: str, http2: bool) -> dict[str, tuple[str, dict[str, int]]]:
    """Per path: the client's status and the path's cluster counters, as ``kind`` has them."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    template = render(_config(http2), refused_port=free_port())
    out: dict[str, tuple[str, dict[str, int]]] = {}
    async with trio.open_nursery() as nursery:
        handler = http2_upstream if http2 else http1_upstream
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        async with run_proxy(kind, template, port) as proxy:
            statuses = {}
            for path in CASES:
                if path == "/reset" and not http2:
                    continue  # (no stream to reset)
                statuses[path] = await _request(proxy.listener_port, path)
            await trio.sleep(1.0)  # connections noticed closed, client gone
            resp = await send_raw(proxy.admin_port, build_request("GET", "/stats", host="a"))
        nursery.cancel_scope.cancel()
    stats = {}
    for line in resp.body.decode().splitlines():
        name, _, value = line.partition(": ")
        stats[name] = value
    for path, status in statuses.items():
        cluster = CASES[path]
        counters = {c: int(stats.get(f"cluster.{cluster}.{c}", "0")) for c in COMPARED}
        out[path] = (status, counters)
    return out


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_failed_upstream_requests_count_as_in_envoy(http2: bool) -> None:
    envoy = await _outcomes("envoy", http2)
    ours = await _outcomes("trioproxy", http2)
    assert ours == envoy
