#!/usr/bin/env python3
"""HTTP/2 proxy benchmark with h2load: h2c → HTTP/1.1 and h2 → h2 (cleartext, and TLS in),
Envoy, nginx and trioproxy beside a direct connection, measured in one run.

Not a test. Run ``python benchmarks/bench_h2.py [--duration S] [--clients 50] [--streams 10]``;
``bench_suite.py`` runs the same measurements beside the HTTP/1.1 and idle-memory ones.

What it measures: requests/s, h2load's mean time per request (it reports no percentiles per
request) and the proxy's CPU time per request from /proc, with ``-c`` clients of ``-m``
concurrent streams each (``h2load -t1``, ``--warm-up-time``, ``-D``), 100-byte responses. The
routes (``benchlib.ROLES``):

- ``h2c → HTTP/1.1``: prior-knowledge h2c in, HTTP/1.1 keep-alive to the backend;
- ``h2 → h2 (h2c both sides)``: h2c in, h2c upstream (``http2_protocol_options``);
- ``h2 → h2 (TLS in, h2c out)``: h2 over TLS (ALPN h2, a trustme certificate) in, h2c upstream.

nginx appears in the first route only: it proxies HTTP/1.1 upstream, and HTTP/2 upstream only
through grpc_pass. "direct" is the nginx backend's own h2c (or h2 TLS) listener, so there is
none for h2c → HTTP/1.1. Pinning and configs: ``benchlib.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from benchlib import (
    ROLES,
    Load,
    Pinning,
    Rig,
    Target,
    h2load,
    markdown_table,
    ratio,
    require,
    text_table,
    tree_cpu_seconds,
)

H2_ROLES = ("h2c_h1", "h2c_h2c", "h2tls_h2c")
PROXIES = ("envoy", "nginx", "trioproxy")


@dataclass(frozen=True)
class Result:
    target: Target
    role: str
    load: Load
    cpu_us_per_req: float | None


def measure(target: Target, role: str, args: argparse.Namespace, core: int | None) -> Result:
    scheme = "https" if ROLES[role].alpn else "http"
    url = f"{scheme}://127.0.0.1:{target.ports[role]}/"
    cpu0 = tree_cpu_seconds(target.pid) if target.pid else 0.0
    load = h2load(url, args.clients, args.streams, args.duration, args.warmup, core)
    cpu = tree_cpu_seconds(target.pid) - cpu0 if target.pid else None
    # The CPU figure spans warm-up and measurement, but h2load counts only the measured
    # requests: scale by the measured share of the time.
    share = args.duration / (args.duration + args.warmup)
    per_req = cpu * share / load.requests * 1e6 if cpu is not None and load.requests else None
    return Result(target, role, load, per_req)


def run(targets: Sequence[Target], args: argparse.Namespace, pinning: Pinning) -> list[Result]:
    results = []
    for role in H2_ROLES:
        for t in targets:
            if role in t.ports:
                r = measure(t, role, args, pinning.load_core)
                results.append(r)
                note = f"  ({r.load.errors})" if r.load.errors else ""
                print(
                    f"  {ROLES[role].title:<26} {t.name:<10} {r.load.rps:>10,.0f} req/s{note}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def table(results: Sequence[Result]) -> list[list[str]]:
    rows = [["route", "target", "req/s", "mean ms", "CPU µs/req", "÷ envoy", "÷ direct"]]
    by = {(r.role, r.target.name): r.load.rps for r in results}
    for r in results:
        name = r.target.name
        rows.append(
            [
                ROLES[r.role].title,
                name + (f" ({r.load.errors})" if r.load.errors else ""),
                f"{r.load.rps:,.0f}",
                f"{r.load.p50_ms:.2f}",
                f"{r.cpu_us_per_req:.1f}" if r.cpu_us_per_req is not None else "-",
                ratio(r.load.rps, by.get((r.role, "envoy")))
                if name not in ("envoy", "direct")
                else "",
                ratio(r.load.rps, by.get((r.role, "direct"))) if name != "direct" else "",
            ]
        )
    return rows


def report(results: Sequence[Result], markdown: bool) -> str:
    rows = table(results)
    return markdown_table(rows, left=2) if markdown else text_table(rows, left=2)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options bench_suite.py shares (it adds --duration, --warmup and --quick itself)."""
    ap.add_argument("--clients", type=int, default=50, help="h2load -c")
    ap.add_argument("--streams", type=int, default=10, help="h2load -m: streams per client")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 s runs, no warm-up")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma-separated proxies")
    add_arguments(ap)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = 1.0, 0.0
    require("h2load", "nghttp2-client")
    pinning = Pinning.choose(args.no_pin)
    with Rig(pinning) as rig:
        targets = [rig.start_backend()]
        targets += [rig.start_proxy(kind, H2_ROLES) for kind in args.only.split(",") if kind]
        print(
            f"# h2load -t1 -c{args.clients} -m{args.streams}, {args.duration:g} s after "
            f"{args.warmup:g} s warm-up; 100-byte responses from nginx; {pinning.note()}",
            flush=True,
        )
        results = run(targets, args, pinning)
    print()
    print(report(results, markdown=False))
    print("\nMarkdown:\n")
    print(report(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
