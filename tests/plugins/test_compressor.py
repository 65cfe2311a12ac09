"""The gzip compressor on streamed bodies, over HTTP/1.1 and HTTP/2 (curl --compressed)."""

from __future__ import annotations

import gzip
import shutil

import pytest
import trio

from tests.support import Backend, Client, Reply, header, simple_config, start_proxy

FILTER = """
- name: envoy.filters.http.compressor
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
    compressor_library:
      name: text
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
        compression_level: BEST_SPEED"""
PARTS = [f"line {i}: the quick brown fox\n".encode() * 50 for i in range(40)]


def chunked(rec: object) -> Reply:
    return Reply(headers=[("content-type", "text/plain")], body=PARTS, chunked=True)


async def test_a_streamed_body_is_compressed_as_it_goes(nursery: trio.Nursery) -> None:
    port = await nursery.start(Backend(handler=chunked).serve)
    proxy = await start_proxy(nursery, simple_config([port], http_filters=FILTER))
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/log", [("accept-encoding", "gzip")])
    finally:
        await client.aclose()
    assert header(resp, "content-encoding") == "gzip"
    assert gzip.decompress(body) == b"".join(PARTS)
    assert len(body) < len(b"".join(PARTS)) // 5
    stats = "http.ingress_http.compressor.text.gzip."
    assert proxy.stat(stats + "total_uncompressed_bytes") == len(b"".join(PARTS))
    assert proxy.stat(stats + "total_compressed_bytes") == len(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_over_http2_gets_it_compressed(nursery: trio.Nursery) -> None:
    port = await nursery.start(Backend(handler=chunked).serve)
    proxy = await start_proxy(nursery, simple_config([port], http_filters=FILTER))
    done = await trio.run_process(
        [
            "curl", "-sS", "--http2-prior-knowledge", "--compressed", "-D", "-",
            f"http://127.0.0.1:{proxy.port}/log",
        ],
        capture_stdout=True,
    )  # fmt: skip
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body == b"".join(PARTS)  # curl decompressed it
