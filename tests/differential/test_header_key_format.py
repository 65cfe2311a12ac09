"""``header_key_format: {proper_case_words: {}}`` through real Envoy and trioproxy: set on the
connection manager, HTTP/1.1 responses to the client carry proper-cased names; set in a
cluster's protocol options, requests to its hosts do. Compared as raw bytes on both sides
(names and order; values only where they do not depend on time or ids). An upstream's
``date`` is kept; the proxy adds one (before ``server``) only where there is none."""

from __future__ import annotations

import pytest
import trio

from .harness import find_envoy, http_config, run_proxy

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

PROPER = "header_key_format: {proper_case_words: {}}"
#: the cluster's HTTP/1.1 options, in the typed extension options as Envoy documents them
CLUSTER_OPTIONS = """
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http_protocol_options: {header_key_format: {proper_case_words: {}}}
"""
REQUESTS = [
    b"GET /a HTTP/1.1\r\nhost: example.com\r\nx-b3-traceid: 1\r\nuser-agent: t\r\n"
    b"x-with_underscore.and$dollar: v\r\nTE: trailers\r\n\r\n",
    b"POST /b HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n"
    b"content-type: text/plain\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /c HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n",
]
#: values that differ from run to run
VARYING = ("date", "x-request-id", "x-envoy-upstream-service-time", "x-forwarded-proto")


async def _head(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, bytes(buf)
            buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


def _lines(head: bytes) -> list[str]:
    out = []
    for line in head.decode().split("\r\n"):
        name, colon, _ = line.partition(":")
        varies = name.lower() in VARYING and "2001" not in line  # (not the upstream's date)
        out.append(name if colon and varies else line)
    return out


async def _exchange(kind: str, hcm: bool, cluster: bool) -> tuple[list[list[str]], list[str]]:
    """What the upstream received (request lines and headers) and the client (response)."""
    seen: list[list[str]] = []

    async def upstream(stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            while True:
                try:
                    head = await _head(stream, buf)
                except (AssertionError, trio.BrokenResourceError):
                    return
                seen.append(_lines(head))
                if b"chunked" in head.lower():
                    with trio.fail_after(5):
                        while not buf.endswith(b"0\r\n\r\n"):
                            buf += await stream.receive_some(65536)
                    buf.clear()
                # the last response has a date of its own, which both proxies keep
                date = b"date: Mon, 01 Jan 2001 00:00:00 GMT\r\n" if b" /c " in head else b""
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-app_thing: 1\r\n"
                    + date
                    + b"content-length: 2\r\n\r\nok"
                )

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend}',
        hcm_extra=("http_protocol_options: {" + PROPER + "}") if hcm else "",
        clusters="",
    )
    if cluster:
        cfg = cfg.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n" + "".join(
            "    " + line + "\n" for line in CLUSTER_OPTIONS.strip().splitlines()
        ), 1)  # fmt: skip
    responses = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:
            client = await trio.open_tcp_stream("127.0.0.1", proxy.listener_port)
            async with client:
                buf = bytearray()
                for raw in REQUESTS:
                    await client.send_all(raw)
                    responses += _lines(await _head(client, buf))
                    with trio.fail_after(5):
                        while len(buf) < 2:
                            buf += await client.receive_some(65536)
                    assert bytes(buf[:2]) == b"ok"
                    del buf[:2]
        nursery.cancel_scope.cancel()
    return seen, responses


@pytest.mark.parametrize(
    ("hcm", "cluster"), [(True, False), (False, True)], ids=["downstream", "upstream"]
)
async def test_proper_case_header_names_as_envoy(hcm: bool, cluster: bool) -> None:
    envoy = await _exchange("envoy", hcm, cluster)
    upstream_seen, client_seen = envoy
    assert len(upstream_seen) == len(REQUESTS)
    if hcm:
        assert "Content-Type: text/plain" in client_seen
        assert "X-App_Thing: 1" in client_seen
        assert "Date: Mon, 01 Jan 2001 00:00:00 GMT" in client_seen
        assert "host: example.com" in upstream_seen[0]
    else:
        assert "Host: example.com" in upstream_seen[0]
        assert "X-With_Underscore.And$Dollar: v" in upstream_seen[0]
        assert "Transfer-Encoding: chunked" in upstream_seen[1]
        assert "content-type: text/plain" in client_seen
    assert await _exchange("trioproxy", hcm, cluster) == envoy


HEALTH_CHECK = """
health_checks:
- timeout: 1s
  interval: 0.3s
  unhealthy_threshold: 1
  healthy_threshold: 1
  http_health_check:
    path: /hc
    request_headers_to_add: [{header: {key: x-hc-thing, value: v}}]
"""


async def _first_check(kind: str) -> list[str]:
    """The first health-check request head a proper-casing cluster's host receives."""
    heads: list[bytes] = []
    got = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            with trio.move_on_after(5):
                heads.append(await _head(stream, buf))
                got.set()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = http_config('- match: {prefix: "/"}\n  route: {cluster: backend}')
    block = "".join(
        "    " + line + "\n" for line in (HEALTH_CHECK + CLUSTER_OPTIONS).strip().splitlines()
    )
    cfg = cfg.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n" + block, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port):
            with trio.fail_after(5):
                await got.wait()
        nursery.cancel_scope.cancel()
    return _lines(heads[0])


async def test_health_check_requests_are_proper_cased_as_envoy() -> None:
    envoy = await _first_check("envoy")
    assert "X-Hc-Thing: v" in envoy
    assert await _first_check("trioproxy") == envoy
