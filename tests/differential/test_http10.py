"""HTTP/1.0 requests (``accept_http_10``) through real Envoy and trioproxy: the status line says
``HTTP/1.0`` for proxied, direct and routing-failure replies alike, the connection closes
unless the client asked for keep-alive, which is then said back (not by a reply without a
body: it closes). Compared per response: the status line, the headers in order (an empty
local reply's ``content-length: 0`` comes last) and the body."""

from __future__ import annotations

import pytest
import trio

from .harness import find_envoy, http_config, run_proxy
from .test_h2_graceful_close import upstream  # answers "ok"

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

ROUTES = """
- match: {prefix: "/api"}
  route: {cluster: backend}
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: hi}}
- match: {prefix: "/empty"}
  direct_response: {status: 200}
"""
REQUESTS = [
    b"GET /api HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /direct HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /api HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET /direct HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET /nowhere HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET /empty HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
]
VARYING = ("date:", "x-envoy-upstream-service-time:")


async def _responses(kind: str) -> list[tuple[str, list[str], bytes]]:
    cfg = http_config(ROUTES, hcm_extra="http_protocol_options: {accept_http_10: true}")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    out = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            for raw in REQUESTS:
                client = await trio.open_tcp_stream("127.0.0.1", proxy.listener_port)
                async with client:
                    await client.send_all(raw)
                    data = b""
                    # a keep-alive response is not followed by the close: read what comes
                    with trio.move_on_after(1.0 if b"keep-alive" in raw else 5):
                        while chunk := await client.receive_some(65536):
                            data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                status, *fields = head.decode().split("\r\n")
                kept = [f for f in fields if not f.lower().startswith(VARYING)]
                out.append((status, kept, body))
        nursery.cancel_scope.cancel()
    return out


async def test_http10_requests_are_answered_as_envoy_answers_them() -> None:
    envoy = await _responses("envoy")
    assert [status for status, _, _ in envoy] == [
        "HTTP/1.0 200 OK",
        "HTTP/1.0 200 OK",
        "HTTP/1.0 404 Not Found",
        "HTTP/1.0 200 OK",
        "HTTP/1.0 200 OK",
        "HTTP/1.0 404 Not Found",
        "HTTP/1.0 200 OK",
    ]
    # keep-alive is said back when asked for, except by a reply without a body (Envoy's
    # codec has no length to frame HTTP/1.0 by, and closes)
    assert [("connection: keep-alive" in fields) for _, fields, _ in envoy] == [
        False, False, False, True, True, False, False,
    ]  # fmt: skip
    assert await _responses("trioproxy") == envoy
