"""HTTP/2 ``connection_keepalive`` on a cluster through real Envoy and trioproxy: an upstream
that answers, then stops reading (``/hang``) gets a PING ``interval`` after the connection
opened, no answer comes, and ``timeout`` later the connection is closed: the request waiting
on it is answered 503, ``cluster.backend.http2.keepalive_timeout`` counts it. Compared: the
client's answer (status, body), when it came, and the counter."""

from __future__ import annotations

import time

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from .harness import build_request, find_envoy, http_config, nonzero_stats, run_proxy, send_raw

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

KEEPALIVE = """
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options:
        connection_keepalive: {interval: 1s, timeout: 0.5s, interval_jitter: {value: 0}}
"""


async def _upstream(stream: trio.SocketStream) -> None:
    """HTTP/2: answers "ok" (and PINGs, as h2 does) until a request for /hang, then reads
    nothing more."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    with trio.move_on_after(8):
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    if dict(ev.headers).get(b":path") == b"/hang":
                        await trio.sleep_forever()
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
            await stream.send_all(conn.data_to_send())


async def _outcome(kind: str) -> tuple[int, bytes, float, int]:
    cfg = http_config('- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 5s}')
    block = "".join(f"    {line}\n" for line in KEEPALIVE.strip().splitlines())
    cfg = cfg.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n" + block, 1)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            start = time.monotonic()  # (about when the upstream connection opens)
            first = await send_raw(proxy.listener_port, build_request("GET", "/a"))
            assert first.status == 200
            hung = await send_raw(proxy.listener_port, build_request("GET", "/hang"))
            took = time.monotonic() - start
            stats = await nonzero_stats(proxy.admin_port, "cluster.backend.http2.")
        nursery.cancel_scope.cancel()
    timeouts = int(stats.get("cluster.backend.http2.keepalive_timeout", 0))
    return hung.status, hung.body, took, timeouts


async def test_an_unanswered_keepalive_ping_closes_the_upstream_connection_as_envoy() -> None:
    status, body, took, timeouts = await _outcome("envoy")
    assert (status, timeouts) == (503, 1)
    assert 1.3 < took < 1.9, took  # the PING at 1 s, then 0.5 s without an answer
    ours = await _outcome("trioproxy")
    assert (ours[0], ours[1], ours[3]) == (status, body, timeouts)
    assert 1.3 < ours[2] < 1.9, ours[2]


async def _upstream_closing(stream: trio.SocketStream) -> None:
    """HTTP/2: answers "ok" until a request for /close, then closes without a GOAWAY."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    with trio.move_on_after(8):
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers).get(b":path", b"")
                    _closing_seen.append(path)
                    if path == b"/close":
                        await stream.aclose()
                        return
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
            await stream.send_all(conn.data_to_send())


_closing_seen: list[bytes] = []


async def _closed_under(kind: str) -> tuple[int, int, list[bytes]]:
    cfg = http_config('- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 5s}')
    plain = KEEPALIVE.replace(
        "      http2_protocol_options:\n"
        "        connection_keepalive: {interval: 1s, timeout: 0.5s, interval_jitter: {value: 0}}",
        "      http2_protocol_options: {}",
    )
    block = "".join(f"    {line}\n" for line in plain.strip().splitlines())
    cfg = cfg.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n" + block, 1)
    _closing_seen.clear()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _upstream_closing, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            first = await send_raw(proxy.listener_port, build_request("GET", "/a"))
            closed = await send_raw(proxy.listener_port, build_request("GET", "/close"))
        nursery.cancel_scope.cancel()
    return first.status, closed.status, list(_closing_seen)


async def test_a_request_under_an_upstream_close_is_not_sent_again_as_envoy() -> None:
    """An HTTP/2 upstream that closes its (reused) connection under a request, without a
    GOAWAY, gets that request once: it fails with 503, as in Envoy (an HTTP/1.1 keep-alive
    race is another matter: tests/upstream/test_pool_dead_connections.py)."""
    envoy = await _closed_under("envoy")
    assert envoy == (200, 503, [b"/a", b"/close"])
    assert await _closed_under("trioproxy") == envoy
