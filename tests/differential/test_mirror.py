"""Request mirroring through real Envoy and trioproxy: what the mirror cluster receives (host
with -shadow, body, the async client's headers), that the client only sees the main answer,
and the mirror cluster's request stats."""

from __future__ import annotations

import fnmatch

import pytest
import trio

from .harness import (
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    get_stat_names,
    http_config,
    run_proxy,
    send_raw,
    static_cluster,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

CONFIG = http_config(
    routes="""
- match: {prefix: "/"}
  route:
    cluster: backend
    request_mirror_policies:
    - cluster: shadow
""",
    clusters=static_cluster("shadow", "{shadow_port}"),
)

REQUESTS = [
    build_request("GET", "/a?x=1", headers=[("x-t", "1")]),
    build_request("POST", "/b", body=b"payload"),
    build_request("GET", "/c", host="example.com:8080"),
    build_request("GET", "/d", headers=[("x-forwarded-for", "203.0.113.9")]),
]


def _multiset(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return sorted((k, "<id>" if k == "x-request-id" else v) for k, v in headers)


async def observe(kind: str) -> dict[str, object]:
    main = RecordingUpstream(script=(Reply(body=b"main\n"),))
    shadow = RecordingUpstream(script=(Reply(500, body=b"shadow broke\n"),))
    main_listeners, shadow_listeners = await main.listen(), await shadow.listen()
    async with trio.open_nursery() as nursery:
        await nursery.start(main.serve, main_listeners)
        await nursery.start(shadow.serve, shadow_listeners)
        config = CONFIG.replace("{shadow_port}", str(shadow.port))
        async with run_proxy(kind, config, main.port) as proxy:
            responses = [await send_raw(proxy.listener_port, raw) for raw in REQUESTS]
            with trio.fail_after(5):  # the mirrors arrive on their own time
                while True:
                    if len(shadow.requests) >= len(REQUESTS):
                        break
                    await trio.sleep(0.02)
            names = await get_stat_names(proxy.admin_port)
        nursery.cancel_scope.cancel()
    counters = ("cluster.shadow.*upstream_rq_[1-5]*", "cluster.shadow.*upstream_rq_completed")
    return {
        "responses": [(r.status, r.body) for r in responses],
        "shadow": sorted(
            (q.method, q.target, _multiset(q.headers), q.body) for q in shadow.requests
        ),
        "main": [(q.method, q.target, _multiset(q.headers), q.body) for q in main.requests],
        "stats": sorted(n for n in names if any(fnmatch.fnmatchcase(n, c) for c in counters)),
    }


async def test_request_mirroring_matches_envoy() -> None:
    envoy = await observe("envoy")
    assert envoy["responses"] == [(200, b"main\n")] * 4
    ours = await observe("trioproxy")
    for key in ("responses", "shadow", "main", "stats"):
        assert ours[key] == envoy[key], (key, ours[key], envoy[key])
