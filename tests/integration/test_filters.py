"""HTTP filters inside a running proxy: phases, pausing, local replies, failures."""

from __future__ import annotations

import trio
import trio.testing

from tests.support import Backend, Client, header, simple_config, start_proxy
from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.registry import HttpFilterFactory

TYPE = "type.googleapis.com/test.Probe"


class Probe(HttpFilter):
    """Answers /teapot locally, raises on /boom, upper-cases response bodies on /shout."""

    def __init__(self) -> None:
        self.logged: list[int] = []

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        path = headers.get(":path")
        if path == "/teapot":
            await trio.sleep(0.01)  # pausing is awaiting
            return LocalReply(418, b"short and stout", headers=(("x-probe", "1"),))
        if path == "/boom":
            raise RuntimeError("filter bug")
        headers.add("x-probe-seen", "yes")
        return None

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        if stream.request_headers.get(":path") == "/boom-late":
            raise RuntimeError("response filter bug")

    async def on_response_data(self, stream: HttpStream, data: bytes, end_stream: bool) -> bytes:
        if stream.request_headers.get(":path") == "/shout":
            return data.upper()
        return data

    def on_log(self, stream: HttpStream) -> None:
        self.logged.append(stream.info.response_code)


class ProbePlugin:
    def __init__(self) -> None:
        self.probe = Probe()

    @hookimpl
    def trioproxy_http_filters(self) -> list[HttpFilterFactory]:
        return [HttpFilterFactory("test.probe", (TYPE,), create=lambda cfg, ctx: self.probe)]


FILTERS = """
- name: test.probe
  typed_config:
    "@type": type.googleapis.com/xds.type.v3.TypedStruct
    type_url: type.googleapis.com/test.Probe
    value: {}
"""


async def _setup(nursery: trio.Nursery):  # type: ignore[no-untyped-def]
    backend = Backend()
    await nursery.start(backend.serve)
    plugin = ProbePlugin()
    proxy = await start_proxy(
        nursery, simple_config([backend.port], http_filters=FILTERS), plugins=[plugin]
    )
    return backend, proxy, plugin


async def test_filter_sees_and_changes_request_headers(nursery: trio.Nursery) -> None:
    backend, proxy, plugin = await _setup(nursery)
    client = await Client.connect(proxy.port)
    resp, _ = await client.request("GET", "/")
    assert resp.status_code == 200
    assert backend.requests[0].header("x-probe-seen") == "yes"
    await client.aclose()


async def test_local_reply_from_a_filter(nursery: trio.Nursery) -> None:
    backend, proxy, plugin = await _setup(nursery)
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/teapot")
    assert resp.status_code == 418 and body == b"short and stout"
    assert header(resp, "x-probe") == "1"
    assert backend.requests == []
    assert plugin.probe.logged == [418]
    await client.aclose()


async def test_response_body_filter_rewrites_and_reframes(nursery: trio.Nursery) -> None:
    backend, proxy, plugin = await _setup(nursery)
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/shout")
    assert body == b"BACKEND"
    assert header(resp, "transfer-encoding") == "chunked"  # the filter may change the length
    await client.aclose()


async def test_a_raising_filter_fails_only_its_stream(nursery: trio.Nursery) -> None:
    backend, proxy, plugin = await _setup(nursery)
    other = await Client.connect(proxy.port)
    client = await Client.connect(proxy.port)
    resp, _ = await client.request("GET", "/boom")
    assert resp.status_code == 500
    assert proxy.stat("http.ingress_http.downstream_rq_filter_error") == 1
    resp, _ = await other.request("GET", "/fine")  # other connections are untouched
    assert resp.status_code == 200
    await client.aclose()
    await other.aclose()


async def test_a_response_phase_failure_releases_the_upstream_request(
    nursery: trio.Nursery,
) -> None:
    """The upstream is still sending its body when a response filter raises: the client gets
    500 and the upstream request is settled (no request or connection left active)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def slow_body(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        with trio.move_on_after(2):
            await stream.receive_some(65536)  # until the proxy gives up on us
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, slow_body, listeners)
    plugin = ProbePlugin()
    proxy = await start_proxy(
        nursery, simple_config([port], http_filters=FILTERS), plugins=[plugin]
    )
    client = await Client.connect(proxy.port)
    resp, _ = await client.request("GET", "/boom-late")
    assert resp.status_code == 500
    await trio.testing.wait_all_tasks_blocked()
    assert proxy.stat("cluster.backend.upstream_rq_active") == 0
    assert proxy.stat("cluster.backend.upstream_cx_active") == 0
    await client.aclose()
