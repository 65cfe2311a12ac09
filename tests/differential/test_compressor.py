"""The gzip compressor through real Envoy and trioproxy: which responses are compressed for
which Accept-Encoding, the headers around it (Vary, ETag, Content-Length), the bodies after
decompression, and the compressor stats with their values."""

from __future__ import annotations

import gzip

import pytest
import trio

from .harness import (
    RecordedRequest,
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    http_config,
    run_proxy,
    send_raw,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

CONFIG = http_config(
    routes="""
- match: {prefix: "/"}
  route: {cluster: backend}
""",
    http_filters="""
- name: envoy.filters.http.compressor
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
    compressor_library:
      name: text_optimized
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
""",
)
BIG = b"hello world " * 200


def script(req: RecordedRequest) -> Reply:
    text = (("content-type", "text/plain"),)
    replies = {
        "/small": Reply(200, text, b"tiny"),
        "/json": Reply(
            200, (("content-type", "application/json; charset=utf-8"), ("etag", '"abc"')), BIG
        ),
        "/weak": Reply(200, (*text, ("etag", 'W/"abc"')), BIG),
        "/png": Reply(200, (("content-type", "image/png"),), BIG),
        "/encoded": Reply(200, (*text, ("content-encoding", "br")), BIG),
        "/nt": Reply(200, (*text, ("cache-control", "no-transform")), BIG),
        "/vary": Reply(200, (("content-type", "text/html"), ("vary", "Cookie")), BIG),
        "/empty": Reply(204, (), b""),
    }
    return replies.get(req.target, Reply(200, text, BIG))


CASES = [
    ("/text", "gzip"),
    ("/text", None),
    ("/text", "br, gzip;q=0"),
    ("/text", "*"),
    ("/small", "gzip"),
    ("/json", "gzip, deflate"),
    ("/weak", "gzip"),
    ("/png", "gzip"),
    ("/encoded", "gzip"),
    ("/nt", "gzip"),
    ("/vary", "gzip"),
    ("/text", "identity"),
    ("/text", "deflate;q=1, gzip;q=0.5"),
    ("/empty", "gzip"),
]


async def observe(kind: str) -> dict[str, object]:
    upstream = RecordingUpstream(script=script)
    listeners = await upstream.listen()
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, listeners)
        async with run_proxy(kind, CONFIG, upstream.port) as proxy:
            responses = []
            for path, accept in CASES:
                headers = [("accept-encoding", accept)] if accept is not None else []
                r = await send_raw(proxy.listener_port, build_request("GET", path, headers))
                body = r.body
                if r.header("content-encoding") == "gzip":
                    body = b"gunzipped:" + gzip.decompress(body)
                skip = ("date", "x-envoy-upstream-service-time")
                responses.append((r.status, body, sorted(h for h in r.headers if h[0] not in skip)))
            stats = await send_raw(
                proxy.admin_port, build_request("GET", "/stats?filter=compressor", host="admin")
            )
        nursery.cancel_scope.cancel()
    counters = {}
    for line in stats.body.decode().splitlines():
        name, _, value = line.partition(": ")
        if "bytes" not in name:  # zlib and Envoy's zlib-ng make different bytes
            counters[name] = value
    return {"responses": responses, "stats": counters}


async def test_gzip_compression_matches_envoy() -> None:
    envoy = await observe("envoy")
    assert envoy["responses"][0][1] == b"gunzipped:" + BIG  # type: ignore[index]
    ours = await observe("trioproxy")
    assert ours["responses"] == envoy["responses"]
    assert ours["stats"] == envoy["stats"]
