"""HTTP/2 ``connection_keepalive`` on the connection manager through real Envoy and trioproxy:
a PING every ``interval`` (counted from the last answer); a client that answers keeps its
connection; one that does not is closed ``timeout`` after the PING, counted in
``http2.keepalive_timeout`` (Envoy roots it at ``http2.``, trioproxy under the connection
manager's prefix, as its other HTTP/2 counters)."""

from __future__ import annotations

import time

import hyperframe.frame as hf
import pytest
import trio

from tests.h2spec.raw import Raw, frame_bytes

from .harness import find_envoy, http_config, nonzero_stats, run_proxy

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

KEEPALIVE = (
    "http2_protocol_options:\n"
    "  connection_keepalive: {interval: 0.5s, timeout: 0.3s, interval_jitter: {value: 0}}"
)


async def _watch(kind: str, answer: bool) -> tuple[list[tuple[float, str]], tuple[int, int]]:
    """The PINGs and the close a client sees in 2.2 s (seconds since it connected), and the
    keepalive_timeout and downstream_cx_destroy_local counters."""
    cfg = http_config('- match: {prefix: "/"}\n  route: {cluster: backend}', hcm_extra=KEEPALIVE)
    async with run_proxy(kind, cfg, 1) as proxy:
        client = await Raw.connect(proxy.listener_port)
        start = time.monotonic()
        seen: list[tuple[float, str]] = []
        try:
            with trio.move_on_after(2.2):
                while True:
                    f = await client.next_frame(timeout=3)
                    at = time.monotonic() - start
                    if f is None:
                        seen.append((at, "closed"))
                        break
                    if isinstance(f, hf.PingFrame) and "ACK" not in f.flags:
                        seen.append((at, "PING"))
                        if answer:
                            await client.send(frame_bytes(0x6, 0x1, 0, f.opaque_data))
        finally:
            await client.aclose()
        stats = await nonzero_stats(proxy.admin_port, "http")
    timeouts = sum(int(v) for k, v in stats.items() if k.endswith("http2.keepalive_timeout"))
    local = int(stats.get("http.ingress_http.downstream_cx_destroy_local", 0))
    return seen, (timeouts, local)


def _within(seen: list[tuple[float, str]], expected: list[tuple[float, str]]) -> bool:
    return [what for _, what in seen] == [what for _, what in expected] and all(
        abs(at - want) < 0.2 for (at, _), (want, _) in zip(seen, expected, strict=True)
    )


@pytest.mark.parametrize("answer", [False, True], ids=["unanswered", "answered"])
async def test_keepalive_pings_and_closes_as_envoy(answer: bool) -> None:
    if answer:
        expected = [(0.5, "PING"), (1.0, "PING"), (1.5, "PING"), (2.0, "PING")]
    else:
        expected = [(0.5, "PING"), (0.8, "closed")]
    envoy, envoy_timeouts = await _watch("envoy", answer)
    assert _within(envoy, expected), envoy
    assert envoy_timeouts == ((0, 0) if answer else (1, 1))
    ours, our_timeouts = await _watch("trioproxy", answer)
    assert _within(ours, expected), ours
    assert our_timeouts == envoy_timeouts
