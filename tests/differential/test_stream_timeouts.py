"""Stream timeouts through real Envoy and trioproxy: ``stream_idle_timeout`` and
``request_timeout`` on HTTP/2 streams and HTTP/1.1 requests, against an upstream that is slow
to answer, stops halfway through its body, or trickles it. Compared: what each client got
(status, body, how the stream ended; on HTTP/1.1, whether the connection then carries a next
request), the timeout and reset counters, and the access log's code, flags and details."""

from __future__ import annotations

from pathlib import Path

import hyperframe.frame as hf
import pytest
import trio

from tests.h2spec.raw import Raw, frame_bytes
from tests.support import RawRequests

from .harness import build_request, find_envoy, http_config, run_proxy, send_raw

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

LOG_FORMAT = "%PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%"
COUNTERS = ("downstream_rq_idle_timeout", "downstream_rq_timeout", "downstream_rq_tx_reset")


async def upstream(stream: trio.SocketStream) -> None:
    """Reads each request's head (never a body), then: /slow answers after 3 s; /partial
    sends 2 of 10 body bytes and stops; /trickle sends its 10 bytes 2 at a time, 0.1 s apart,
    and keeps the connection for the next request."""
    requests = RawRequests(stream)
    with trio.move_on_after(10):
        while (head := await requests.next(body=False)) is not None:
            path = head.split(b" ", 2)[1]
            start = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
            if path == b"/partial":
                await stream.send_all(start + b"ab")
                await trio.sleep(3)
                return
            if path != b"/trickle":
                await trio.sleep(3)
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                return
            await stream.send_all(start)
            for _ in range(5):
                await trio.sleep(0.1)
                await stream.send_all(b"ab")


def _config(log: Path) -> str:
    hcm = f"""
stream_idle_timeout: 0.3s
request_timeout: 0.6s
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {log}
    log_format: {{text_format_source: {{inline_string: "{LOG_FORMAT}\\n"}}}}
"""
    return http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 10s}', hcm_extra=hcm
    )


async def _h2_case(port: int, method: str, path: str, body: bytes, length: int, drip: bool) -> str:
    """One stream on its own connection: its status, body and how it ended."""
    client = await Raw.connect(port)
    try:
        extra = [("content-length", str(length))] if method == "POST" else []
        await client.send(
            client.request_headers(
                1, end_stream=method == "GET", method=method, path=path, extra=extra
            )
            + (frame_bytes(0x0, 0, 1, body) if body else b"")
        )
        frames: list[hf.Frame] = []
        async with trio.open_nursery() as nursery:
            if drip:

                async def trickle() -> None:
                    while True:
                        await trio.sleep(0.1)
                        await client.send(frame_bytes(0x0, 0, 1, b"x"))

                nursery.start_soon(trickle)
            with trio.fail_after(5):
                while True:
                    f = await client.next_frame()
                    if f is None:
                        frames.append(f)  # type: ignore[arg-type]
                        break
                    if f.stream_id != 1:
                        continue
                    frames.append(f)
                    if isinstance(f, hf.RstStreamFrame) or "END_STREAM" in f.flags:
                        break
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    status = next(
        (f.decoded[":status"] for f in frames if isinstance(f, hf.HeadersFrame)),  # type: ignore[attr-defined]
        None,
    )
    data = b"".join(f.data for f in frames if isinstance(f, hf.DataFrame))
    last = frames[-1]
    if last is None:
        end = "closed"
    elif isinstance(last, hf.RstStreamFrame):
        end = f"RST_STREAM {last.error_code}"
    else:
        end = "END_STREAM"
    return f"{status} {data!r} {end}"


async def _h1_response(stream: trio.SocketStream) -> str:
    """One response with a Content-Length (all of them here): status, Connection header and
    body; or "closed" if the connection ends (or is reset) first."""
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return "closed"
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            data = await stream.receive_some(65536)
            if not data:
                break
            body += data
    except trio.BrokenResourceError:
        return "closed"
    return f"{lines[0].split(' ')[1]} connection={headers.get('connection')} {body!r}"


async def _h1_case(port: int, raw: bytes) -> str:
    """``raw`` on a new connection, then a next request on the same connection: both answers
    (or "closed"). A stream timeout ends its stream; whether the connection goes on after it
    is what Envoy decides from the request's state."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(5):
            await stream.send_all(raw)
            first = await _h1_response(stream)
            try:
                await stream.send_all(b"GET /trickle HTTP/1.1\r\nhost: a\r\n\r\n")
            except trio.BrokenResourceError:
                return f"HTTP/1.1 {first}, then closed"
            return f"HTTP/1.1 {first}, then {await _h1_response(stream)}"


async def _outcomes(kind: str, tmp: Path) -> tuple[list[str], dict[str, int], list[str]]:
    log = tmp / f"{kind}.log"
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, _config(log), port) as proxy:
            lp = proxy.listener_port
            got.append(await _h2_case(lp, "GET", "/slow", b"", 0, False))
            got.append(await _h2_case(lp, "GET", "/partial", b"", 0, False))
            got.append(await _h2_case(lp, "GET", "/trickle", b"", 0, False))
            got.append(await _h2_case(lp, "POST", "/slow", b"ab", 10, False))
            got.append(await _h2_case(lp, "POST", "/slow", b"a", 100, True))
            got.append(await _h2_case(lp, "POST", "/trickle", b"a", 100, False))
            for raw in (
                build_request("GET", "/slow", host="a"),  # (Connection: close)
                b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n",
                b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nab",
                b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab",
            ):
                got.append(await _h1_case(lp, raw))
            await trio.sleep(0.3)  # the access log is written
            stats_page = await send_raw(proxy.admin_port, build_request("GET", "/stats", host="a"))
        nursery.cancel_scope.cancel()
    stats = dict(line.partition(": ")[::2] for line in stats_page.body.decode().splitlines())
    counters = {c: int(stats.get(f"http.ingress_http.{c}", "0")) for c in COUNTERS}
    return got, counters, log.read_text().splitlines()


async def test_stream_timeouts_answer_as_in_envoy(tmp_path: Path) -> None:
    envoy = await _outcomes("envoy", tmp_path)
    ours = await _outcomes("trioproxy", tmp_path)
    assert ours[0] == envoy[0]  # what the clients got, case by case
    assert ours[1] == envoy[1]  # the counters
    assert ours[2] == envoy[2]  # the access log
