"""Micro-benchmark of HPACK: trioproxy.http.hpack against the ``hpack`` package (not a test).

µs per header block, on one connection (one encoder or decoder used for every block):

- encode a typical response (:status, server, date, content-type, content-length,
  x-envoy-upstream-service-time), the same fields every time, and with a new ``date`` in each
  block (a literal, Huffman coded and added to the table, evicting in the steady state);
- decode a typical h2load request (:method, :scheme, :authority, :path, accept-encoding,
  user-agent): the steady-state block (every field indexed) and the first block of a
  connection (literals, Huffman coded; a new decoder each time).

    python benchmarks/bench_hpack.py [N]

Which trioproxy.http.hpack ran (source or mypyc-compiled) is printed first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import hpack

from trioproxy.http import hpack as ours

RESPONSE = [
    (b":status", b"200"),
    (b"server", b"envoy"),
    (b"date", b"Tue, 24 Nov 2026 11:00:00 GMT"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
    (b"x-envoy-upstream-service-time", b"0"),
]
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:10000"),
    (b":path", b"/"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.59.0"),
]
DATES = [b"Tue, 24 Nov 2026 11:%02d:%02d GMT" % (i // 60, i % 60) for i in range(3600)]


def per_block(fn: Callable[[int], object], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def with_date(i: int) -> list[tuple[bytes, bytes]]:
    fields = list(RESPONSE)
    fields[2] = (b"date", DATES[i % len(DATES)])
    return fields


def bench_ours(n: int) -> dict[str, float]:
    enc = ours.Encoder()
    enc2 = ours.Encoder()
    first = hpack.Encoder().encode(REQUEST)
    dec = ours.Decoder()
    dec.decode(first)
    steady = hpack.Encoder()
    steady.encode(REQUEST)
    indexed = steady.encode(REQUEST)
    return {
        "encode response, same fields": per_block(lambda i: enc.encode(RESPONSE), n),
        "encode response, new date": per_block(lambda i: enc2.encode(with_date(i)), n),
        "decode request, indexed": per_block(lambda i: dec.decode(indexed), n),
        "decode request, first": per_block(lambda i: ours.Decoder().decode(first), n),
    }


def bench_hpack(n: int) -> dict[str, float]:
    enc = hpack.Encoder()
    enc2 = hpack.Encoder()
    first = hpack.Encoder().encode(REQUEST)
    dec = hpack.Decoder()
    dec.decode(first, raw=True)
    steady = hpack.Encoder()
    steady.encode(REQUEST)
    indexed = steady.encode(REQUEST)
    return {
        "encode response, same fields": per_block(lambda i: enc.encode(RESPONSE), n),
        "encode response, new date": per_block(lambda i: enc2.encode(with_date(i)), n),
        "decode request, indexed": per_block(lambda i: dec.decode(indexed, raw=True), n),
        "decode request, first": per_block(lambda i: hpack.Decoder().decode(first, raw=True), n),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(f"trioproxy.http.hpack: {ours.__file__}")
    mine = bench_ours(n)
    theirs = bench_hpack(n)
    print(f"{'µs per block':32} {'trioproxy':>10} {'hpack':>10} {'speed-up':>9}")
    for name, t in mine.items():
        print(f"{name:32} {t:10.2f} {theirs[name]:10.2f} {theirs[name] / t:8.1f}x")


if __name__ == "__main__":
    main()
