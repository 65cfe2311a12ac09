#!/usr/bin/env python3
"""HTTP/1.1 proxy benchmark: direct nginx vs Envoy vs nginx as a proxy vs trioproxy, one run.

Not a test. Run ``python benchmarks/bench_http.py [--duration S] [--warmup S] [--quick]
[--connections 1,50,200] [--tls-connections 1,50] [--tracing]``; ``bench_suite.py`` runs the
same measurements beside the HTTP/2 and idle-memory ones.

What it measures: requests/s, wrk's p50 and p99 latency, and the proxy's CPU time per request
(user + system of its process tree from /proc, steadier than requests/s on a shared machine)
for HTTP/1.1 keep-alive with 100-byte responses, cleartext at each ``--connections`` count and
over TLS (wrk's https, handshakes only at connection start) at each ``--tls-connections``
count. Targets: the nginx backend itself ("direct"), Envoy ``--concurrency 1``, nginx with one
worker reverse-proxying with a keep-alive upstream pool, and trioproxy; Envoy and trioproxy
load the same Envoy config (router only, access logs off). Every target is started once;
wrk (``-t1``) warms each up and then measures it, target after target, so all figures come
from the same machine state. Pinning and configs: ``benchlib.py``.

``--tracing`` adds Envoy and trioproxy with Zipkin tracing of every request (reported to the
collector stand-in of examples/jaeger) and a column comparing each with its untraced run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from benchlib import (
    Load,
    Pinning,
    Rig,
    Target,
    free_port,
    markdown_table,
    pinned,
    ratio,
    require,
    text_table,
    tree_cpu_seconds,
    wait_http_ok,
    wrk,
)

HTTP_ROLES = ("h1", "h1_tls")
PROXIES = ("envoy", "nginx", "trioproxy")


@dataclass(frozen=True)
class Result:
    target: Target
    role: str  # "h1" or "h1_tls"
    connections: int
    load: Load
    cpu_us_per_req: float | None


def measure(
    target: Target, role: str, connections: int, seconds: float, warmup: float, core: int | None
) -> Result:
    scheme = "https" if role == "h1_tls" else "http"
    url = f"{scheme}://127.0.0.1:{target.ports[role]}/"
    if warmup > 0:
        wrk(url, connections, warmup, core)
    cpu0 = tree_cpu_seconds(target.pid) if target.pid else 0.0
    load = wrk(url, connections, seconds, core)
    cpu = tree_cpu_seconds(target.pid) - cpu0 if target.pid else None
    per_req = cpu / load.requests * 1e6 if cpu is not None and load.requests else None
    return Result(target, role, connections, load, per_req)


def run(
    targets: Sequence[Target],
    plan: Sequence[tuple[str, Sequence[int]]],
    seconds: float,
    warmup: float,
    pinning: Pinning,
) -> list[Result]:
    """Each (role, connection counts) of ``plan``, every target that has the role, in turn."""
    results = []
    for role, counts in plan:
        for c in counts:
            for t in targets:
                if role not in t.ports:
                    continue
                r = measure(t, role, c, seconds, warmup, pinning.load_core)
                results.append(r)
                note = f"  ({r.load.errors})" if r.load.errors else ""
                print(
                    f"  {role:<7} {t.name:<18} -c{c:<4} {r.load.rps:>10,.0f} req/s{note}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def _envoy_peer(name: str) -> str:
    """The Envoy row a row is compared with: the same worker count and tracing
    (``trioproxy-c2`` with ``envoy-c2``, ``trioproxy+tracing`` with ``envoy+tracing``,
    ``trioproxy-pure`` with ``envoy``)."""
    base, plus, suffix = name.partition("+")
    workers = [p for p in base.split("-")[1:] if p[:1] == "c" and p[1:].isdigit()]
    return "envoy" + "".join(f"-{w}" for w in workers[:1]) + plus + suffix


def table(results: Sequence[Result]) -> list[list[str]]:
    """Rows for one role: ÷ envoy for the other proxies (traced ones against traced Envoy)."""
    rows = [["target", "conns", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "÷ envoy", "÷ direct"]]
    traced = any(r.target.name.endswith("+tracing") for r in results)
    if traced:
        rows[0].append("÷ untraced")
    by = {(r.target.name, r.connections): r.load.rps for r in results}
    for r in results:
        name, c = r.target.name, r.connections
        base, _, suffix = name.partition("+")
        envoy = by.get((_envoy_peer(name), c))
        row = [
            name + (f" ({r.load.errors})" if r.load.errors else ""),
            str(c),
            f"{r.load.rps:,.0f}",
            f"{r.load.p50_ms:.3f}",
            f"{r.load.p99_ms:.3f}" if not math.isnan(r.load.p99_ms) else "-",
            f"{r.cpu_us_per_req:.1f}" if r.cpu_us_per_req is not None else "-",
            ratio(r.load.rps, envoy) if r.target.kind not in ("envoy", "direct") else "",
            ratio(r.load.rps, by.get(("direct", c))) if name != "direct" else "",
        ]
        if traced:
            row.append(ratio(r.load.rps, by.get((base, c))) if suffix else "")
        rows.append(row)
    return rows


def report(results: Sequence[Result], markdown: bool) -> str:
    """A table per role, titled, as aligned text or markdown."""
    out = []
    for role, title in (("h1", "HTTP/1.1 cleartext"), ("h1_tls", "HTTP/1.1 over TLS")):
        mine = [r for r in results if r.role == role]
        if not mine:
            continue
        rows = table(mine)
        body = markdown_table(rows) if markdown else text_table(rows)
        out.append(f"{'**' if markdown else '# '}{title}{'**' if markdown else ''}\n\n{body}")
    return "\n\n".join(out)


def start_floor(rig: Rig) -> Target:
    """The trio + llhttp floor (floor_forwarder.py), pinned like the proxies, HTTP/1.1 only."""
    assert rig.backend is not None
    port = free_port()
    script = Path(__file__).with_name("floor_forwarder.py")
    cmd = [sys.executable, str(script), str(port), str(rig.backend.h1)]
    proc = rig.spawn("trio-floor", pinned(cmd, rig.pinning.proxy_core))
    if err := wait_http_ok(proc, port, 10):
        sys.exit(f"floor_forwarder failed: {err}\n{proc.tail()}")
    return Target("trio-floor", "floor", proc.popen.pid, {"h1": port})


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options bench_suite.py shares."""
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 1 s runs without warm-up, 50 connections only",
    )
    ap.add_argument("--connections", default="1,50,200", help="wrk -c values, cleartext")
    ap.add_argument("--tls-connections", default="1,50", help="wrk -c values over TLS")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run benchmarks/floor_forwarder.py, the least a trio forwarder does (HTTP/1.1)",
    )
    ap.add_argument(
        "--pure-python",
        metavar="PYTHON",
        help="also run trioproxy with this interpreter (a pure-Python install) as 'trioproxy-pure'",
    )
    ap.add_argument(
        "--only",
        default=",".join(PROXIES),
        help="comma-separated proxies to run beside direct (default: envoy,nginx,trioproxy)",
    )


def plan(args: argparse.Namespace) -> list[tuple[str, list[int]]]:
    if args.quick:
        args.duration, args.warmup = 1.0, 0.0
        return [("h1", [50]), ("h1_tls", [50])]
    counts = [("h1", args.connections), ("h1_tls", args.tls_connections)]
    return [(role, [int(c) for c in spec.split(",") if c]) for role, spec in counts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument(
        "--tracing",
        action="store_true",
        help="also run Envoy and trioproxy with Zipkin tracing of every request ('+tracing')",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="also run Envoy and trioproxy with --concurrency N, unpinned (rows '-cN')",
    )
    args = ap.parse_args()
    require("wrk", "wrk")
    steps = plan(args)
    proxies = [p for p in args.only.split(",") if p]
    pinning = Pinning.choose(args.no_pin)
    with Rig(pinning) as rig:
        targets = [rig.start_backend()]
        targets += [rig.start_proxy(kind, HTTP_ROLES) for kind in proxies]
        if args.pure_python and "trioproxy" in proxies:
            targets.append(
                rig.start_proxy("trioproxy", ["h1"], "trioproxy-pure", python=args.pure_python)
            )
        if args.floor:
            targets.append(start_floor(rig))
        if args.workers > 1:
            for kind in ("envoy", "trioproxy"):
                if kind in proxies:
                    name = f"{kind}-c{args.workers}"
                    targets.append(rig.start_proxy(kind, ["h1"], name, concurrency=args.workers))
        if args.tracing:
            collector = free_port()
            script = Path(__file__).parents[1] / "examples" / "jaeger" / "collector.py"
            cmd = [sys.executable, str(script), "--quiet", "--port", str(collector)]
            rig.spawn("collector", pinned(cmd, pinning.load_core))
            for kind in ("envoy", "trioproxy"):
                if kind in proxies:
                    t = rig.start_proxy(kind, ["h1"], f"{kind}+tracing", collector=collector)
                    targets.append(t)
        print(
            f"# HTTP/1.1 keep-alive, 100-byte responses, wrk -t1, {args.duration:g} s per run "
            f"after {args.warmup:g} s warm-up; {pinning.note()}; access logs off",
            flush=True,
        )
        results = run(targets, steps, args.duration, args.warmup, pinning)
    print()
    print(report(results, markdown=False))
    print("\nMarkdown:\n")
    print(
        f"_{pinning.note()}; wrk -t1, {args.duration:g} s per run after {args.warmup:g} s "
        "warm-up; CPU is the proxy's user+system time per request from /proc._\n"
    )
    print(report(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
