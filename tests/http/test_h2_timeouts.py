"""Timeouts on HTTP/2 streams and connections, answered as Envoy 1.40 answers them (each case
was run side by side with Envoy): ``stream_idle_timeout``, ``request_timeout``, and the
connection's ``common_http_protocol_options.idle_timeout`` with the graceful close it starts
(two GOAWAYs ``drain_timeout`` apart, then the delayed close)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import hyperframe.frame as hf
import pytest
import trio

from tests.h2spec.raw import Raw, frame_bytes
from tests.support import Backend, Proxy, Reply, file_access_log, simple_config, start_proxy, until

INTERNAL_ERROR = 0x2
NO_ERROR = 0x0
REFUSED_STREAM = 0x7
#: the last stream id of the GOAWAY that announces a graceful close
MAX_STREAM_ID = 2**31 - 1
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%"


async def _raw_backend(
    nursery: trio.Nursery, respond: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """An HTTP/1.1 upstream that reads one request head, then runs ``respond``."""

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            await respond(stream)

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _stream_frames(client: Raw, sid: int) -> list[hf.Frame]:
    """The frames of stream ``sid`` until it ends (END_STREAM or RST_STREAM)."""
    frames: list[hf.Frame] = []
    with trio.fail_after(5):
        while True:
            f = await client.next_frame()
            assert f is not None, frames
            if f.stream_id != sid:
                continue
            frames.append(f)
            if isinstance(f, hf.RstStreamFrame) or "END_STREAM" in f.flags:
                return frames


@contextlib.asynccontextmanager
async def _proxy_and_client(
    nursery: trio.Nursery, upstream_port: int, hcm_extra: str
) -> AsyncIterator[tuple[Proxy, Raw]]:
    """A proxy to ``upstream_port`` with ``hcm_extra`` and an HTTP/2 client connected to it,
    closed on leaving; the proxy outlives the block, so its counters can be read after."""
    proxy = await start_proxy(nursery, simple_config([upstream_port], hcm_extra=hcm_extra))
    client = await Raw.connect(proxy.port)
    try:
        yield proxy, client
    finally:
        await client.aclose()


def _status(frames: list[hf.Frame]) -> str:
    return str(frames[0].decoded[":status"])  # type: ignore[attr-defined]


def _body(frames: list[hf.Frame]) -> bytes:
    return b"".join(f.data for f in frames if isinstance(f, hf.DataFrame))


def _log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _wait_log(path: Path, n: int) -> list[str]:
    with trio.fail_after(5):
        while len(_log_lines(path)) < n:  # noqa: ASYNC110 - a file
            await trio.sleep(0.02)
    return _log_lines(path)


async def test_stream_idle_timeout_on_a_whole_request_answers_504(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = Backend(handler=lambda r: Reply(delay=3.0))
    port = await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    hcm = "stream_idle_timeout: 0.3s" + file_access_log(log, LOG_FORMAT)
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        t0 = trio.current_time()
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "504" and _body(frames) == b"stream timeout"
        assert 0.25 <= trio.current_time() - t0 < 2
        assert await client.ping_answered()  # the connection goes on
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert await _wait_log(log, 1) == ["504 SI stream_idle_timeout"]


async def test_stream_idle_timeout_on_a_stalled_request_body_answers_408(
    nursery: trio.Nursery,
) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    async with _proxy_and_client(nursery, port, "stream_idle_timeout: 0.3s") as (proxy, client):
        await client.send(
            client.request_headers(
                1, end_stream=False, method="POST", extra=[("content-length", "10")]
            )
            + frame_bytes(0x0, 0, 1, b"ab")
        )
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "408" and _body(frames) == b"stream timeout"
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 0


async def test_request_timeout_ends_a_request_body_that_keeps_dripping(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Each DATA frame pushes the stream idle timeout back, not the request timeout."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    hcm = "stream_idle_timeout: 0.3s\nrequest_timeout: 0.6s" + file_access_log(log, LOG_FORMAT)
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        headers = client.request_headers(
            1, end_stream=False, method="POST", extra=[("content-length", "100")]
        )
        await client.send(headers)
        frames: list[hf.Frame] = []

        async def drip() -> None:
            while True:
                await client.send(frame_bytes(0x0, 0, 1, b"x"))
                await trio.sleep(0.1)

        async with trio.open_nursery() as inner:
            inner.start_soon(drip)
            t0 = trio.current_time()
            frames = await _stream_frames(client, 1)
            elapsed = trio.current_time() - t0
            inner.cancel_scope.cancel()
        assert _status(frames) == "408" and _body(frames) == b"request timeout"
        assert 0.55 <= elapsed < 2
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 0
    assert await _wait_log(log, 1) == ["408 - request_overall_timeout"]


async def test_stream_idle_timeout_after_the_response_started_resets_the_stream(
    nursery: trio.Nursery,
) -> None:
    async def partial(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
        await trio.sleep(5)

    port = await _raw_backend(nursery, partial)
    async with _proxy_and_client(nursery, port, "stream_idle_timeout: 0.3s") as (proxy, client):
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200" and _body(frames) == b"ab"
        assert isinstance(frames[-1], hf.RstStreamFrame)
        assert frames[-1].error_code == INTERNAL_ERROR
        assert await client.ping_answered()
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert proxy.stat("http.ingress_http.downstream_rq_tx_reset") == 1


async def test_response_data_keeps_a_slow_stream_alive(nursery: trio.Nursery) -> None:
    async def drip(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
        for _ in range(5):
            await trio.sleep(0.15)
            await stream.send_all(b"ab")

    port = await _raw_backend(nursery, drip)
    async with _proxy_and_client(nursery, port, "stream_idle_timeout: 0.3s") as (proxy, client):
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200" and _body(frames) == b"ab" * 5
        assert "END_STREAM" in frames[-1].flags
    assert proxy.stat("http.ingress_http.downstream_rq_idle_timeout") == 0


async def _until_closed(client: Raw, t0: float) -> list[tuple[float, hf.Frame | None]]:
    """The GOAWAY frames the proxy sends until it closes, and ``None`` for the close, each
    with its time since ``t0``."""
    got: list[tuple[float, hf.Frame | None]] = []
    with trio.fail_after(6):
        while not got or got[-1][1] is not None:
            f = await client.next_frame(timeout=6)
            if f is None or isinstance(f, hf.GoAwayFrame):
                got.append((trio.current_time() - t0, f))
    return got


def _goaway(f: hf.Frame | None) -> int | None:
    """The last stream id of a GOAWAY NO_ERROR; ``None`` for any other frame."""
    if isinstance(f, hf.GoAwayFrame) and f.error_code == NO_ERROR:
        return int(f.last_stream_id)
    return None


@pytest.mark.parametrize("delayed_close", [None, 0.4, 0.0])
async def test_an_idle_connection_is_closed_in_two_goaways_as_in_envoy(
    nursery: trio.Nursery, delayed_close: float | None
) -> None:
    """Envoy 1.40's graceful close: GOAWAY 2^31-1 when the idle timeout fires, the final
    GOAWAY (last stream id) ``drain_timeout`` later, and the close ``delayed_close_timeout``
    (1 s unless set; 0: at once) after that when the client does not close first."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    hcm = "common_http_protocol_options: {idle_timeout: 0.3s}\ndrain_timeout: 0.6s"
    if delayed_close is not None:
        hcm += f"\ndelayed_close_timeout: {delayed_close}s"
    delay = 1.0 if delayed_close is None else delayed_close
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200"
        got = await _until_closed(client, trio.current_time())
    (t1, first), (t2, final), (t3, end) = got
    assert _goaway(first) == MAX_STREAM_ID and _goaway(final) == 1 and end is None
    assert 0.25 <= t1 < 1
    assert 0.5 <= t2 - t1 < 1
    assert delay - 0.1 <= t3 - t2 < delay + 0.5
    assert proxy.stat("http.ingress_http.downstream_cx_idle_timeout") == 1
    assert proxy.stat("http.ingress_http.http2.goaway_sent") == 1  # the final GOAWAY
    assert proxy.stat("http.ingress_http.downstream_cx_delayed_close_timeout") == (delay > 0)
    assert proxy.stat("http.ingress_http.downstream_cx_drain_close") == 0


async def test_a_stream_opened_between_the_goaways_is_served(nursery: trio.Nursery) -> None:
    """The stream is served, the final GOAWAY names it and still comes ``drain_timeout``
    after the first; the idle timeout fires again meanwhile and is counted again, as in
    Envoy. A client that closes on the final GOAWAY is not waited for."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    hcm = "common_http_protocol_options: {idle_timeout: 0.3s}\ndrain_timeout: 0.8s"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        first = await client.wait_for(lambda f: isinstance(f, hf.GoAwayFrame), timeout=3)
        t1 = trio.current_time()
        assert _goaway(first) == MAX_STREAM_ID
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200"
        final = await client.wait_for(lambda f: isinstance(f, hf.GoAwayFrame), timeout=3)
        assert _goaway(final) == 1
        assert 0.7 <= trio.current_time() - t1 < 1.3
    await until(lambda: proxy.stat("http.ingress_http.downstream_cx_destroy") == 1)
    assert proxy.stat("http.ingress_http.downstream_cx_idle_timeout") == 2
    assert proxy.stat("http.ingress_http.downstream_cx_delayed_close_timeout") == 0
    assert len(backend.requests) == 1


async def test_a_stream_open_at_the_final_goaway_finishes_before_the_close(
    nursery: trio.Nursery,
) -> None:
    backend = Backend(handler=lambda r: Reply(delay=0.8))
    port = await nursery.start(backend.serve)
    hcm = "common_http_protocol_options: {idle_timeout: 0.3s}\ndrain_timeout: 0.3s"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        first = await client.wait_for(lambda f: isinstance(f, hf.GoAwayFrame), timeout=3)
        assert _goaway(first) == MAX_STREAM_ID
        await client.send(client.request_headers(1))
        final = await client.wait_for(lambda f: isinstance(f, hf.GoAwayFrame), timeout=3)
        assert _goaway(final) == 1
        await client.send(client.request_headers(3))  # after the final GOAWAY: refused
        refused = await client.wait_for(lambda f: isinstance(f, hf.RstStreamFrame), timeout=3)
        assert isinstance(refused, hf.RstStreamFrame)
        assert refused.stream_id == 3 and refused.error_code == REFUSED_STREAM
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200" and _body(frames) == b"ok"
        t0 = trio.current_time()
        assert await client.next_frame(timeout=3) is None and client.closed
        assert 0.9 <= trio.current_time() - t0 < 1.5  # the delayed close
    assert len(backend.requests) == 1


async def test_a_zero_drain_timeout_sends_both_goaways_at_once(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    hcm = "common_http_protocol_options: {idle_timeout: 0.3s}\ndrain_timeout: 0s"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        got = await _until_closed(client, trio.current_time())
    (t1, first), (t2, final), (_, end) = got
    assert _goaway(first) == MAX_STREAM_ID and _goaway(final) == 0 and end is None
    assert t2 - t1 < 0.2


async def test_an_open_stream_keeps_the_connection_from_idling_out(
    nursery: trio.Nursery,
) -> None:
    backend = Backend(handler=lambda r: Reply(delay=0.8))
    port = await nursery.start(backend.serve)
    hcm = "common_http_protocol_options: {idle_timeout: 0.3s}"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        await client.send(client.request_headers(1))
        frames = await _stream_frames(client, 1)  # GOAWAY would come first if it idled out
        assert _status(frames) == "200" and _body(frames) == b"ok"
    assert proxy.stat("http.ingress_http.downstream_cx_idle_timeout") == 0


async def test_request_timeout_stops_once_the_request_is_whole(nursery: trio.Nursery) -> None:
    backend = Backend(handler=lambda r: Reply(delay=0.8))
    port = await nursery.start(backend.serve)
    hcm = "stream_idle_timeout: 0s\nrequest_timeout: 0.3s"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        await client.send(
            client.request_headers(
                1, end_stream=False, method="POST", extra=[("content-length", "2")]
            )
            + frame_bytes(0x0, 0x1, 1, b"ab")  # DATA, END_STREAM
        )
        frames = await _stream_frames(client, 1)
        assert _status(frames) == "200" and _body(frames) == b"ok"
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 0


async def test_a_streaming_response_stops_the_request_timeout(nursery: trio.Nursery) -> None:
    """As Envoy: once the response has started, a request still streaming is not cut by
    ``request_timeout`` (a gRPC bidirectional stream, say)."""

    async def slow_answer(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(6):
            await trio.sleep(0.1)
            await stream.send_all(b"2\r\nab\r\n")
        await stream.send_all(b"0\r\n\r\n")

    port = await _raw_backend(nursery, slow_answer)
    hcm = "stream_idle_timeout: 0.3s\nrequest_timeout: 0.3s"
    async with _proxy_and_client(nursery, port, hcm) as (proxy, client):
        await client.send(
            client.request_headers(
                1, end_stream=False, method="POST", extra=[("content-length", "100")]
            )
            + frame_bytes(0x0, 0, 1, b"a")
        )
        frames = await _stream_frames(client, 1)  # the request never ends
        assert _status(frames) == "200" and _body(frames) == b"ab" * 6
        assert "END_STREAM" in frames[-1].flags
    assert proxy.stat("http.ingress_http.downstream_rq_timeout") == 0
