"""The harness itself, without any proxy: client ↔ recording upstream, and ``compare``."""

from __future__ import annotations

from functools import partial

import trio

from .harness import (
    CaseResult,
    RecordedRequest,
    RecordingUpstream,
    Reply,
    Response,
    build_request,
    compare,
    render,
    send_raw,
)


async def test_client_and_recording_upstream_talk_http1() -> None:
    upstream = RecordingUpstream(
        script=[Reply(status=201, body=b"first"), Reply(headers=(("x-a", "1"),), body=b"")]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        r1 = await send_raw(upstream.port, build_request("POST", "/p?q=1", [("X-T", "v")], b"abc"))
        r2 = await send_raw(upstream.port, build_request("GET", "/g"))
        r3 = await send_raw(upstream.port, build_request("GET", "/again"))
        nursery.cancel_scope.cancel()
    assert (r1.status, r1.body) == (201, b"first")
    assert (r2.status, r2.body, r2.header("x-a")) == (200, b"", "1")
    assert r3.header("x-a") == "1"  # the last reply repeats
    first = upstream.requests[0]
    assert (first.method, first.target, first.body) == ("POST", "/p?q=1", b"abc")
    assert first.header("x-t") == "v"
    assert first.header("host") == "example.com"
    assert [r.target for r in upstream.requests] == ["/p?q=1", "/g", "/again"]


async def test_client_reads_chunked_and_close_delimited_bodies() -> None:
    async def server(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await stream.aclose()

    async def server_close(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [lst] = await nursery.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        [lst2] = await nursery.start(partial(trio.serve_tcp, server_close, 0, host="127.0.0.1"))
        chunked = await send_raw(lst.socket.getsockname()[1], build_request())
        eof = await send_raw(lst2.socket.getsockname()[1], build_request())
        nursery.cancel_scope.cancel()
    assert chunked.body == b"abcde"
    assert eof.body == b"until-eof"


def result(
    status: int = 200,
    resp_headers: tuple[tuple[str, str], ...] = (("server", "envoy"),),
    up_headers: tuple[tuple[str, str], ...] = (("x-request-id", "1"),),
    stats: frozenset[str] = frozenset({"cluster.backend.upstream_rq_total"}),
) -> CaseResult:
    return CaseResult(
        kind="x",
        responses=(Response(status, resp_headers, b"body"),),
        upstream_requests=(RecordedRequest("GET", "/", up_headers, b""),),
        stat_names=stats,
    )


def test_compare_equal_runs_have_no_differences() -> None:
    assert compare(result(), result()) == []


def test_compare_ignores_request_id_values_but_not_their_absence() -> None:
    assert compare(result(up_headers=(("x-request-id", "a"),)), result()) == []
    [diff] = compare(result(), result(up_headers=()))
    assert diff.startswith("upstream[0].headers: only envoy [('x-request-id'")


def test_compare_reports_status_and_header_differences() -> None:
    diffs = compare(result(), result(status=503, resp_headers=(("server", "trioproxy"),)))
    assert diffs[0] == "response[0].status: envoy 200, trioproxy 503"
    assert "only envoy [('server', 'envoy')]" in diffs[1]


def test_compare_stats_only_on_the_allow_list() -> None:
    extra = frozenset({"cluster.backend.upstream_rq_total", "server.live", "runtime.load_success"})
    assert compare(result(), result(stats=extra)) == []
    [diff] = compare(result(), result(stats=frozenset()))
    assert "only envoy ['cluster.backend.upstream_rq_total']" in diff


def test_compare_extra_ignored_headers() -> None:
    a = result(resp_headers=(("x-t", "1"),))
    b = result(resp_headers=(("x-t", "2"),))
    assert compare(a, b) != []
    assert compare(a, b, ignore=["X-T"]) == []


def test_render_fills_only_the_placeholders() -> None:
    template = "a: {x: 1}\nport: {listener_port}\nup: {upstream_port}"
    assert render(template, listener_port=1, upstream_port=2) == "a: {x: 1}\nport: 1\nup: 2"
