"""The graceful close of an HTTP/2 connection through real Envoy and trioproxy: the
connection ``idle_timeout`` fires (or ``max_connection_duration`` passes), a GOAWAY
announces the close (last stream id 2^31-1), the
final GOAWAY follows ``drain_timeout`` later, and the connection closes once no stream is left
— when the client closes, or 1 s later. Compared, per connection: the frames the client got
(responses, GOAWAYs with their last stream ids, the close; not their times nor how DATA was
split), and the counters."""

from __future__ import annotations

import hyperframe.frame as hf
import pytest
import trio

from tests.h2spec.raw import Raw
from tests.support import RawRequests

from .harness import build_request, find_envoy, http_config, run_proxy, send_raw

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

IDLE = "common_http_protocol_options: {idle_timeout: 0.5s}\ndrain_timeout: 1s"
MAX_DURATION = "common_http_protocol_options: {max_connection_duration: 0.7s}\ndrain_timeout: 1s"
COUNTERS = (
    "downstream_cx_idle_timeout",
    "downstream_cx_max_duration_reached",
    "downstream_cx_drain_close",
    "downstream_cx_delayed_close_timeout",
    "downstream_cx_destroy_local",
    "downstream_cx_destroy_remote",
)


async def upstream(stream: trio.SocketStream) -> None:
    """Answers each request "ok"; /slow after 1.5 s."""
    requests = RawRequests(stream)
    with trio.move_on_after(10):
        while (head := await requests.next()) is not None:
            if head.split(b" ", 2)[1] == b"/slow":
                await trio.sleep(1.5)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def _connection(
    port: int, between: str | None, close_on_final: bool, first: str = "/"
) -> list[str]:
    """One connection: a request, then idle until the proxy closes it. ``between``: the path
    of a request sent once the first GOAWAY is in; ``close_on_final``: the client closes on
    the final GOAWAY instead of waiting for the proxy's close."""
    client = await Raw.connect(port)
    seen: list[str] = []
    bodies: dict[int, bytes] = {}
    try:
        await client.send(client.request_headers(1, path=first))
        with trio.fail_after(8):
            while True:
                f = await client.next_frame(timeout=8)
                if f is None:
                    seen.append("closed")
                    break
                if isinstance(f, hf.DataFrame):
                    bodies[f.stream_id] = bodies.get(f.stream_id, b"") + f.data
                if isinstance(f, hf.HeadersFrame):
                    bodies[f.stream_id] = f.decoded[":status"].encode() + b" "  # type: ignore[attr-defined]
                if isinstance(f, hf.HeadersFrame | hf.DataFrame) and "END_STREAM" in f.flags:
                    seen.append(f"stream {f.stream_id}: {bodies[f.stream_id].decode()}")
                elif isinstance(f, hf.RstStreamFrame):
                    seen.append(f"RST_STREAM {f.stream_id} {f.error_code}")
                elif isinstance(f, hf.GoAwayFrame):
                    seen.append(f"GOAWAY {f.last_stream_id} {f.error_code}")
                    if f.last_stream_id == 2**31 - 1 and between is not None:
                        await client.send(client.request_headers(3, path=between))
                    elif f.last_stream_id != 2**31 - 1 and close_on_final:
                        seen.append("client closes")
                        break
    finally:
        await client.aclose()
    return seen


async def _outcomes(kind: str, hcm: str) -> tuple[list[list[str]], dict[str, int]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = http_config(
        '- match: {prefix: "/"}\n  route: {cluster: backend, timeout: 10s}', hcm_extra=hcm
    )
    cases = [
        (None, False),  # idle after one request; the proxy closes (the delayed close)
        ("/", True),  # a stream opened between the GOAWAYs is served
        ("/slow", False),  # a stream still open at the final GOAWAY finishes first
        # the first stream outlasts max_connection_duration (which does not wait for it)
        (None, False, "/slow"),
    ]
    got: list[list[str]] = [[] for _ in cases]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream, listeners)
        async with run_proxy(kind, cfg, port) as proxy:

            async def one(
                i: int, between: str | None, close_on_final: bool, first: str = "/"
            ) -> None:
                got[i] = await _connection(proxy.listener_port, between, close_on_final, first)

            async with trio.open_nursery() as clients:
                for i, case in enumerate(cases):
                    clients.start_soon(one, i, *case)
            await trio.sleep(0.3)  # the last connection's end is counted
            page = await send_raw(proxy.admin_port, build_request("GET", "/stats", host="a"))
        nursery.cancel_scope.cancel()
    stats = dict(line.partition(": ")[::2] for line in page.body.decode().splitlines())
    counters = {c: int(stats.get(f"http.ingress_http.{c}", "0")) for c in COUNTERS}
    # Envoy's HTTP/2 codec stats are http2.*; trioproxy keeps them under the connection
    # manager's prefix (http.ingress_http.http2.*).
    counters["http2.goaway_sent"] = sum(
        int(v) for k, v in stats.items() if k.endswith("http2.goaway_sent")
    )
    return got, counters


@pytest.mark.parametrize("hcm", [IDLE, MAX_DURATION], ids=["idle", "max-duration"])
async def test_an_http2_connection_closes_gracefully_as_in_envoy(hcm: str) -> None:
    envoy = await _outcomes("envoy", hcm)
    ours = await _outcomes("trioproxy", hcm)
    assert envoy[0][0] == ["stream 1: 200 ok", "GOAWAY 2147483647 0", "GOAWAY 1 0", "closed"]
    assert ours[0] == envoy[0]  # what each connection got
    assert ours[1] == envoy[1]  # the counters
