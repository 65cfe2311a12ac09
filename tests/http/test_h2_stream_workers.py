"""One HTTP/2 connection serves stream after stream whatever became of the ones before: a
stream reset by the client (before or after the proxy started on it), or ended by its
timeout, leaves the next streams untouched, and more streams at once than the connection
keeps workers for are all answered. (The connection's streams share worker tasks and their
cancel scopes, ``trioproxy.http.h2_connection``: a cancellation must end its own stream
only.)"""

from __future__ import annotations

import gc
from pathlib import Path

import hyperframe.frame as hf
import trio

from tests.h2client import H2Client
from tests.h2spec.raw import Raw, frame_bytes
from tests.support import (
    Backend,
    Recorded,
    Reply,
    file_access_log,
    simple_config,
    start_proxy,
    until,
)
from trioproxy.hookspecs import hookimpl
from trioproxy.http.filter import HttpFilter, HttpStream
from trioproxy.http.h2_connection import IDLE_STREAM_WORKERS
from trioproxy.http.headers import Headers
from trioproxy.registry import HttpFilterFactory

CANCEL = 0x8


def _slow_or_quick(rec: Recorded) -> Reply:
    return Reply(delay=3.0) if rec.target.startswith("/slow") else Reply(body=rec.target.encode())


async def _answer(client: Raw, sid: int) -> tuple[str, bytes]:
    """The status and body of stream ``sid``, once it ended."""
    status, body = "", b""
    with trio.fail_after(5):
        while True:
            f = await client.next_frame()
            assert f is not None
            if f.stream_id != sid:
                continue
            assert not isinstance(f, hf.RstStreamFrame), f
            if isinstance(f, hf.HeadersFrame):
                status = f.decoded[":status"]  # type: ignore[attr-defined]
            elif isinstance(f, hf.DataFrame):
                body += f.data
            if "END_STREAM" in f.flags:
                return status, body


async def _log(path: Path, n: int) -> list[str]:
    await until(lambda: path.exists() and path.read_text().count("\n") >= n)
    return _sorted_lines(path)


def _sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


async def test_reset_and_timed_out_streams_leave_the_next_streams_alone(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = Backend(handler=_slow_or_quick)
    port = await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    hcm = "stream_idle_timeout: 0.3s" + file_access_log(
        log, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%"
    )
    proxy = await start_proxy(nursery, simple_config([port], hcm_extra=hcm))
    client = await Raw.connect(proxy.port)
    try:
        # reset by the client while the proxy waits for the upstream
        await client.send(client.request_headers(1, path="/slow/reset"))
        await until(lambda: any(r.target == "/slow/reset" for r in backend.requests))
        await client.send(frame_bytes(0x3, 0, 1, CANCEL.to_bytes(4, "big")))
        await client.send(client.request_headers(3, path="/after-reset"))
        assert await _answer(client, 3) == ("200", b"/after-reset")
        # reset in the same write as its HEADERS: before the proxy started on it
        await client.send(
            client.request_headers(5, path="/reset-at-once")
            + frame_bytes(0x3, 0, 5, CANCEL.to_bytes(4, "big"))
            + client.request_headers(7, path="/after-early-reset")
        )
        assert await _answer(client, 7) == ("200", b"/after-early-reset")
        # ended by the stream idle timeout
        await client.send(client.request_headers(9, path="/slow/timeout"))
        assert await _answer(client, 9) == ("504", b"stream timeout")
        await client.send(client.request_headers(11, path="/after-timeout"))
        assert await _answer(client, 11) == ("200", b"/after-timeout")
    finally:
        await client.aclose()
    assert await _log(log, 6) == sorted(
        [
            "/slow/reset 0 DC",
            "/after-reset 200 -",
            "/reset-at-once 0 DC",
            "/after-early-reset 200 -",
            "/slow/timeout 504 SI",
            "/after-timeout 200 -",
        ]
    )
    assert proxy.stat("http.ingress_http.downstream_rq_rx_reset") == 2
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 3


async def test_more_streams_at_once_than_workers_kept_are_all_answered(
    nursery: trio.Nursery,
) -> None:
    async def handler(rec: Recorded) -> Reply:
        return Reply(delay=0.2, body=rec.target.encode())

    backend = Backend(handler=handler)
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await H2Client.connect(proxy.port)
    answers: dict[str, tuple[int, bytes]] = {}

    async def get(path: str, headers: list[tuple[str, str]]) -> None:
        status, _, body = await client.request("GET", path, b"", headers)
        answers[path] = (status, body)

    n = 3 * IDLE_STREAM_WORKERS
    async with trio.open_nursery() as inner:
        inner.start_soon(client.reader)
        for burst in range(2):
            async with trio.open_nursery() as many:
                for i in range(n):
                    many.start_soon(get, f"/{burst}/{i}", [("x-big", "v" * 20_000)])
        await until(lambda: proxy.stat("http.ingress_http.downstream_rq_active") == 0)
        # the workers waiting for the connection's next streams hold nothing of the last ones
        gc.collect()
        held = [o for o in gc.get_objects() if type(o) is HttpStream]
        assert not [o for o in held if (o.request_headers.get(":path") or "").startswith("/1/")]
        await client.aclose()
    assert answers == {f"/{b}/{i}": (200, f"/{b}/{i}".encode()) for b in range(2) for i in range(n)}
    assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 2 * n
    assert proxy.stat("http.ingress_http.downstream_rq_active") == 0


class KeepAndCancel(HttpFilter):
    """Keeps the stream of ``/first``; on ``/second`` cancels that (finished) stream."""

    def __init__(self) -> None:
        self.kept: HttpStream | None = None

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> None:
        if headers.get(":path") == "/first":
            self.kept = stream
        elif self.kept is not None and self.kept.cancel_scope is not None:
            self.kept.cancel_scope.cancel()
            await trio.sleep(0.01)  # a checkpoint: a cancellation that hit this stream shows


class KeepAndCancelPlugin:
    def __init__(self) -> None:
        self.filter = KeepAndCancel()

    @hookimpl
    def trioproxy_http_filters(self) -> list[HttpFilterFactory]:
        url = "type.googleapis.com/test.KeepAndCancel"
        return [HttpFilterFactory("test.keep", (url,), create=lambda cfg, ctx: self.filter)]


async def test_cancelling_a_finished_stream_leaves_the_next_ones_alone(
    nursery: trio.Nursery,
) -> None:
    """``HttpStream.cancel_scope`` ends its own stream only, even when a filter cancels it
    after the stream is over and the worker serves another."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    filters = """
    - name: test.keep
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/test.KeepAndCancel
        value: {}
    """
    plugin = KeepAndCancelPlugin()
    proxy = await start_proxy(
        nursery, simple_config([port], http_filters=filters), plugins=[plugin]
    )
    client = await H2Client.connect(proxy.port)
    async with trio.open_nursery() as inner:
        inner.start_soon(client.reader)
        with trio.fail_after(5):
            assert (await client.request("GET", "/first"))[0] == 200
            assert (await client.request("GET", "/second"))[0] == 200
        await client.aclose()
    assert plugin.filter.kept is not None and plugin.filter.kept.cancel_scope.cancel_called
    assert proxy.stat("http.ingress_http.downstream_rq_rx_reset") == 0
