#!/usr/bin/env python3
"""The benchmark suite of issue 8: HTTP/1.1, TLS, HTTP/2 and idle memory in one run.

Not a test. Run ``nox -s bench`` (which runs this) or ``python benchmarks/bench_suite.py
[--duration 8 --warmup 2] [--quick] [--write-docs]``; ``--quick`` is a smoke check of the whole
pipeline in well under a minute (1 s runs, 500 idle connections), not figures to quote.

What it runs, against one nginx backend and one process each of Envoy (``--concurrency 1``),
nginx (one worker, as a reverse proxy) and trioproxy, access logs off, proxies pinned to core 0
and the backend and load generators to core 1:

1. ``bench_http``: wrk HTTP/1.1 keep-alive at 1, 50 and 200 connections, and over TLS at 1
   and 50, with the backend itself as the "direct" row;
2. ``bench_h2``: h2load ``-c50 -m10``: h2c → HTTP/1.1, h2 → h2 with h2c on both sides, and
   h2 over TLS → h2c;
3. ``bench_idle``: with the throughput proxies stopped, each proxy started afresh and 5,000 idle
   keep-alive connections opened to it (RSS per connection), then trioproxy under tracemalloc
   with 1,000 (what holds that memory).

It prints the done-when figures of issue 8 (trioproxy ÷ Envoy at 50 HTTP/1.1 connections and
for h2c → HTTP/1.1, p50 at one connection, KiB per idle connection), every table as text, and
with ``--write-docs`` replaces the "Suite" section of docs/benchmarks.md with this run's
markdown: the command, the date, the versions and the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_h2
import bench_http
import bench_idle
from benchlib import (
    Pinning,
    Rig,
    find_envoy,
    find_nginx,
    markdown_table,
    raise_nofile,
    require,
    text_table,
    tool_version,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
IDLE_TARGET_KIB = 4.0


def done_when(
    http: Sequence[bench_http.Result],
    h2: Sequence[bench_h2.Result],
    idle: Sequence[bench_idle.Idle],
) -> list[list[str]]:
    """Issue 8's figures: trioproxy beside Envoy and nginx, from this run's results."""
    names = ("trioproxy", "trioproxy-pure", "envoy", "nginx")

    def h1(conns: int, p50: bool = False) -> dict[str, float | None]:
        found = {r.target.name: r for r in http if r.role == "h1" and r.connections == conns}
        return {
            n: (r.load.p50_ms if p50 else r.load.rps) if (r := found.get(n)) else None
            for n in names
        }

    def h2c_h1() -> dict[str, float | None]:
        found = {r.target.name: r.load.rps for r in h2 if r.role == "h2c_h1"}
        return {n: found.get(n) for n in names}

    def kib() -> dict[str, float | None]:
        found = {r.target: r.rss_per_conn_kib() for r in idle}
        return {n: found.get(n) for n in names}

    def row(label: str, values: dict[str, float | None], unit: str, digits: int) -> list[str]:
        cells = [f"{v:,.{digits}f} {unit}" if v is not None else "not run" for v in values.values()]
        t, e = values["trioproxy"], values["envoy"]
        return [label, *cells, f"**{t / e:.2f}x**" if t and e else "not run"]

    rows = [["figure", "trioproxy", "trioproxy-pure", "Envoy", "nginx", "trioproxy ÷ Envoy"]]
    rows.append(row("HTTP/1.1, 50 connections (wrk)", h1(50), "req/s", 0))
    rows.append(row("h2c → HTTP/1.1 (h2load -c50 -m10)", h2c_h1(), "req/s", 0))
    rows.append(row("p50 latency, 1 connection (wrk)", h1(1, p50=True), "ms", 3))
    opened = f"{idle[0].opened:,} open, " if idle else ""
    memory = kib()
    rows.append(row(f"memory per idle keep-alive connection ({opened}RSS)", memory, "KiB", 1))
    if (t := memory["trioproxy"]) is not None:
        met = "met" if t <= IDLE_TARGET_KIB else "not met"
        rows[-1][1] += f" (target ≤ {IDLE_TARGET_KIB:g} KiB: {met})"
    return rows


def git_describe() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--", ".") else "")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "?"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else "?"


def run_details(args: argparse.Namespace, pinning: Pinning) -> str:
    from trioproxy import __version__, compiled_modules

    build = "compiled by mypyc (setup.py)" if compiled_modules() else "pure Python"
    pure = (
        f"; trioproxy-pure: the same code, pure Python (`{args.pure_python}`)"
        if args.pure_python
        else ""
    )

    codec = os.environ.get("TRIOPROXY_H1_CODEC", "httptools (default)")
    envoy = tool_version([find_envoy(), "--version"], r"version: \S+?/([\d.]+)/")
    nginx = tool_version([find_nginx(), "-v"], r"nginx/([\d.]+)")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"- run: {when}, trioproxy {__version__} at {git_describe()}, HTTP/1.1 codec {codec}, "
        f"Python {platform.python_version()}\n"
        f"- trioproxy: {build}{pure}\n"
        f"- proxies: Envoy {envoy} (`--concurrency 1`), nginx {nginx} "
        "(one worker), trioproxy (one process); access logs off; the backend is nginx answering "
        "100 bytes\n"
        f"- machine: {os.cpu_count()} x {cpu_model()}, Linux {platform.release()}; "
        f"{pinning.note()}; load average {os.getloadavg()[0]:.2f} when the run started\n"
        f"- load: wrk -t1 and h2load -t1 -c{args.clients} -m{args.streams}, {args.duration:g} s "
        f"per run after {args.warmup:g} s of warm-up; CPU is the proxy's user+system time per "
        "request from /proc"
    )


def section(
    command: str,
    minutes: float,
    details: str,
    summary: list[list[str]],
    http: Sequence[bench_http.Result],
    h2: Sequence[bench_h2.Result],
    idle: Sequence[bench_idle.Idle],
    bd: bench_idle.Breakdown | None,
) -> str:
    """The docs' "Suite" section for this run, between the markers that --write-docs finds."""
    parts = [
        BEGIN,
        "## Suite: everything of issue 8 in one run",
        f"Written by the suite itself; to reproduce ({minutes:.0f} minutes):\n\n"
        f"```sh\n{command}\n```",
        details,
        "Figures from one run on a shared 2-core machine where other work runs at the same "
        "time: expect ±10 % between runs, more at 200 connections and in p99.",
        "### Issue 8's figures\n\n" + markdown_table(summary),
        "### HTTP/1.1 (wrk)\n\n" + bench_http.report(http, markdown=True),
        "### HTTP/2 (h2load)\n\n"
        '"mean ms" is h2load\'s mean time per request. nginx proxies HTTP/1.1 upstream only, '
        'so it has no h2 → h2 rows; "direct" is the backend\'s own h2c or h2 listener.\n\n'
        + bench_h2.report(h2, markdown=True),
        "### Idle keep-alive connections\n\n"
        "Each proxy freshly started; every connection made one request and stays open; "
        "(RSS after - RSS before) ÷ connections. USS counts only pages no other process "
        "maps.\n\n" + bench_idle.report(idle, None, markdown=True),
    ]
    if bd is not None:
        parts.append(
            "### What holds an idle trioproxy connection (tracemalloc)\n\n"
            "A line that `await`s a call is where that coroutine (object and frame) was "
            "created: the figure is the suspended coroutine's size. The second table charges "
            "every allocation to the innermost line of trioproxy's own code on its stack, so "
            "trio's per-task and per-wait objects land on the call that caused them.\n\n"
            + bench_idle.report([], bd, markdown=True)
        )
    parts.append(END)
    return "\n\n".join(parts) + "\n"


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace the suite section (or insert it before the first ``## `` heading)."""
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        at = doc.find("\n## ")
        at = len(doc) if at < 0 else at + 1
        doc = doc[:at] + text + "\n" + doc[at:]
    path.write_text(doc)


def nox_args(argv: list[str]) -> str:
    """The suite's arguments as ``nox -s bench`` takes them: nox adds ``--floor`` and a
    pure-Python install of its own for ``--pure-python``, so a run's own paths stay out."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--pure-python":
            skip = True
        elif arg != "--floor" and not arg.startswith("--pure-python="):
            out.append(arg)
    return " ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_http.add_arguments(ap)
    bench_h2.add_arguments(ap)
    bench_idle.add_arguments(ap)
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help=f"replace the Suite section of {DOCS.relative_to(REPO)} with this run",
    )
    args = ap.parse_args()
    started = time.monotonic()
    argv = " ".join(sys.argv[1:])
    command = (
        f"python benchmarks/bench_suite.py {argv}\n"
        f"# or: python3 -m nox -s bench -- {nox_args(sys.argv[1:])}"
    )
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("taskset", "util-linux")):
        require(tool, package)
    http_plan = bench_http.plan(args)  # --quick shortens the runs here
    if args.quick:
        http_plan = [("h1", [1, 50]), ("h1_tls", [50])]
        args.idle_connections, args.traced = 500, min(args.traced, 200)
    proxies = [p for p in args.only.split(",") if p]
    raise_nofile(args.idle_connections + 1024)
    pinning = Pinning.choose(args.no_pin)
    details = run_details(args, pinning)
    print(details.replace("- ", "# ", 1).replace("\n- ", "\n# "), flush=True)
    with Rig(pinning) as rig:
        targets = [rig.start_backend()]
        roles = [*bench_http.HTTP_ROLES, *bench_h2.H2_ROLES]
        targets += [rig.start_proxy(kind, roles) for kind in proxies]
        if args.pure_python and "trioproxy" in proxies:
            pure = rig.start_proxy("trioproxy", roles, "trioproxy-pure", python=args.pure_python)
            targets.append(pure)
        if args.floor:
            targets.append(bench_http.start_floor(rig))
        http = bench_http.run(targets, http_plan, args.duration, args.warmup, pinning)
        h2 = bench_h2.run(targets, args, pinning)
        for t in targets[1:]:
            rig.stop_target(t)
        idle, bd = bench_idle.run(rig, proxies, args.idle_connections, args.traced)
    summary = done_when(http, h2, idle)
    print()
    for title, body in (
        ("Issue 8's figures", text_table(summary)),
        ("HTTP/1.1", bench_http.report(http, markdown=False)),
        ("HTTP/2", bench_h2.report(h2, markdown=False)),
        ("Idle connections", bench_idle.report(idle, bd, markdown=False)),
    ):
        print(f"## {title}\n\n{body}\n")
    minutes = (time.monotonic() - started) / 60
    text = section(command, minutes, details, summary, http, h2, idle, bd)
    if args.write_docs:
        write_docs(text)
        print(f"wrote the Suite section of {DOCS.relative_to(REPO)}")
    else:
        print("(--write-docs puts this run's markdown into docs/benchmarks.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
