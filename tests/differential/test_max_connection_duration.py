"""An HTTP/1.1 connection's ``max_connection_duration`` through real Envoy and trioproxy
(HTTP/2's is in test_h2_graceful_close): once it passes, Envoy's drain starts. A response
from then on says ``connection: close`` (one under way too); a connection still idle
``drain_timeout`` later is closed with the delayed close. ``downstream_cx_max_duration_reached``
counts each connection once.

After a ``close`` response Envoy 1.40 leaves the connection for the client to close;
trioproxy closes it, as RFC 9112 §9.6 asks of a server that sends ``close``. And trioproxy's
delayed close half-closes first (the client sees the end ``delayed_close_timeout`` sooner)."""

from __future__ import annotations

import time

import pytest
import trio

from .harness import build_request, find_envoy, http_config, nonzero_stats, run_proxy
from .test_h2_graceful_close import upstream  # answers "ok"; /slow after 1.5 s

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

HCM = "common_http_protocol_options: {max_connection_duration: 1s}"


async def _response(stream: trio.SocketStream) -> list[str]:
    """One response's status line and headers, without the date (and its body, "ok")."""
    data = b""
    with trio.fail_after(5):
        while not (b"\r\n\r\n" in data and data.endswith(b"ok")):
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    return [line for line in head if not line.startswith(("date:", "x-envoy-upstream-service"))]


async def _outcomes(kind: str) -> tuple[list[list[str]], dict[str, str]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 5s}', hcm_extra=HCM
    )
    got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            idle = await trio.open_tcp_stream("127.0.0.1", proxy.listener_port)
            slow = await trio.open_tcp_stream("127.0.0.1", proxy.listener_port)
            async with idle, slow:
                await idle.send_all(build_request("GET", "/a").replace(b"close", b"keep-alive"))
                got.append(await _response(idle))
                await slow.send_all(build_request("GET", "/slow").replace(b"close", b"keep-alive"))
                await trio.sleep(1.3)  # past the duration: the idle connection is still open
                await idle.send_all(build_request("GET", "/b").replace(b"close", b"keep-alive"))
                got.append(await _response(idle))
                got.append(await _response(slow))
            await trio.sleep(0.2)
            stats = await nonzero_stats(proxy.admin_port, "http.ingress_http.downstream_cx_max")
        nursery.cancel_scope.cancel()
    return got, stats


async def test_max_connection_duration_closes_http1_connections_as_envoy() -> None:
    envoy = await _outcomes("envoy")
    assert [r[-1] for r in envoy[0]] == ["server: envoy", "connection: close", "connection: close"]
    assert await _outcomes("trioproxy") == envoy


async def _idle_outcome(kind: str) -> tuple[float, dict[str, str]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 5s}',
        hcm_extra=HCM + "\ndrain_timeout: 0.5s",
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            client = await trio.open_tcp_stream("127.0.0.1", proxy.listener_port)
            async with client:
                start = time.monotonic()
                await client.send_all(build_request("GET", "/a").replace(b"close", b"keep-alive"))
                await _response(client)
                with trio.fail_after(5):
                    while await client.receive_some(65536):
                        pass
                ended = time.monotonic() - start
                await trio.sleep(1.5)  # the client does not close first
            await trio.sleep(0.2)
            stats = await nonzero_stats(proxy.admin_port, "http.ingress_http.downstream_cx")
        nursery.cancel_scope.cancel()
    for name in list(stats):
        if name.endswith(("_bytes_total", "_length_ms")):
            del stats[name]
    return ended, stats


async def test_an_idle_connection_past_its_duration_is_drained_and_closed_as_envoy() -> None:
    envoy_end, envoy = await _idle_outcome("envoy")
    ours_end, ours = await _idle_outcome("trioproxy")
    assert envoy["http.ingress_http.downstream_cx_delayed_close_timeout"] == "1"
    assert ours == envoy
    # Envoy: the duration (1 s), drain_timeout (0.5 s), then delayed_close_timeout (1 s);
    # trioproxy half-closes as the delayed close starts
    assert 2.3 < envoy_end < 2.9, envoy_end
    assert 1.3 < ours_end < 1.9, ours_end
