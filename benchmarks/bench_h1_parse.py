"""Micro-benchmark of the HTTP/1.1 parsers: µs per request for each backend (not a test).

Parses a typical proxied GET (a dozen headers) and a small chunked response, one request or
response per feed, as the connection manager and the upstream client do.

    /work/venv/bin/python benchmarks/bench_h1_parse.py [N]
"""

from __future__ import annotations

import sys
import time

from trioproxy.http import h1

REQUEST = (
    b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk/4.2\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en-US\r\n"
    b"Cookie: session=abcdef0123456789\r\nX-Request-Id: 5f0c7a1e-1111-2222-3333-444455556666\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\nCache-Control: no-cache\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 24 Nov 2026 11:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    b"d\r\nHello, world!\r\n0\r\n\r\n"
)


def bench_requests(codec: str, n: int) -> float:
    p = h1.make_server_parser(codec)
    NEED_DATA, PAUSED = h1.NEED_DATA, h1.PAUSED
    t0 = time.perf_counter()
    for _ in range(n):
        p.feed(REQUEST)
        while True:
            ev = p.next_event()
            if ev is PAUSED:
                p.start_next_cycle()
                break
            if ev is NEED_DATA:
                break
    return (time.perf_counter() - t0) / n * 1e6


def bench_responses(codec: str, n: int) -> float:
    p = h1.make_client_parser(codec)
    NEED_DATA, PAUSED = h1.NEED_DATA, h1.PAUSED
    t0 = time.perf_counter()
    for _ in range(n):
        p.expect("GET")
        p.feed(RESPONSE)
        while True:
            ev = p.next_event()
            if ev is PAUSED or ev is NEED_DATA:
                break
        p.start_next_cycle()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for codec in ("httptools", "h11"):
        count = n if codec == "httptools" else max(n // 10, 1000)
        req = bench_requests(codec, count)
        resp = bench_responses(codec, count)
        print(f"{codec:10s} request {req:7.2f} µs   response {resp:7.2f} µs")


if __name__ == "__main__":
    main()
