#!/usr/bin/env python3
"""HTTP/2 proxy benchmark with h2load: h2c → HTTP/1.1, h2c → h2c and h2 (TLS) → h2c, Envoy
and trioproxy beside a direct connection, measured in one run.

Not a test. Run ``python benchmarks/bench_h2.py [--duration S] [--clients 50] [--streams 10]``.

Theory of operation: nginx (one worker) serves the same 100-byte body on an HTTP/1.1 listener
and on an h2c (prior knowledge) listener. Envoy (``--concurrency 1``) and trioproxy each load
three listeners of one config: ``h2c → h1`` routes to the HTTP/1.1 listener, ``h2c → h2c``
to the h2c one through a cluster with ``explicit_http_config.http2_protocol_options``, and
``h2 → h2c`` is the same behind TLS (ALPN h2, a throwaway trustme certificate). h2load
(``-t1``, ``--warm-up-time``, ``-D``) drives each target in turn with ``-c`` clients of ``-m``
concurrent streams. Pinning and the CPU measurement are those of ``bench_http.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_http import (
    BODY,
    HCM_TYPE,
    START_DEADLINE,
    TRIOPROXY_COMMAND,
    Proc,
    find_envoy,
    find_nginx,
    free_port,
    pinned,
    print_markdown,
    print_text,
    start,
    stop,
    tree_cpu_seconds,
    wait_http_ok,
)

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
    listen 127.0.0.1:{h1} reuseport backlog=4096;
    location / {{ return 200 "{body}"; }}
  }}
  server {{
    listen 127.0.0.1:{h2} http2 reuseport backlog=4096;
    location / {{ return 200 "{body}"; }}
  }}
}}
"""

LISTENER = """
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
CLUSTERS = """
  clusters:
  - name: h1
    connect_timeout: 1s
    load_assignment:
      cluster_name: h1
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {h1}}}}}}}
  - name: h2
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: h2
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {h2}}}}}}}
"""


TLS = """transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {tls_type}
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      """


def proxy_config(
    admin: int, ports: tuple[int, int, int], h1: int, h2: int, cert: Path, key: Path
) -> str:
    tls_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    tls = TLS.format(cert=cert, key=key, tls_type=tls_type)
    return (
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n"
        "static_resources:\n  listeners:"
        + LISTENER.format(name="to_h1", port=ports[0], hcm=HCM_TYPE, cluster="h1", tls="")
        + LISTENER.format(name="to_h2", port=ports[1], hcm=HCM_TYPE, cluster="h2", tls="")
        + LISTENER.format(name="tls_to_h2", port=ports[2], hcm=HCM_TYPE, cluster="h2", tls=tls)
        + CLUSTERS.format(h1=h1, h2=h2)
    )


def h2load(
    port: int,
    args: argparse.Namespace,
    core: int | None,
    pid: int | None,
    scheme: str = "http",
) -> tuple[float, float, float | None, str]:
    """(req/s, mean ms per request, proxy CPU µs per request, errors)."""
    cmd = pinned(
        [
            "h2load",
            "-t1",
            f"-c{args.clients}",
            f"-m{args.streams}",
            f"--warm-up-time={args.warmup:g}",
            f"-D{args.duration:g}",
            f"{scheme}://127.0.0.1:{port}/",
        ],
        core,
    )
    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = (tree_cpu_seconds(pid) - cpu0) if pid else None
    rps = float(m.group(1)) if (m := re.search(r"finished in [^,]+, ([\d.]+) req/s", out)) else 0.0
    done = int(m.group(1)) if (m := re.search(r"(\d+) succeeded", out)) else 0
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    mean_ms = float(mean.group(1)) * scale[mean.group(2)] if mean else float("nan")
    errors = ""
    if failed and (failed.group(1) != "0" or failed.group(2) != "0"):
        errors = f"{failed.group(1)} failed, {failed.group(2)} errored"
    # the CPU figure spans warm-up and measurement; h2load reports requests of both phases
    # only as the measured ones, so scale by the measured share of the time
    share = args.duration / (args.duration + args.warmup)
    cpu_us = (cpu * share / done * 1e6) if (cpu is not None and done) else None
    return rps, mean_ms, cpu_us, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per client")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load not found: apt-get install -y nghttp2-client")
    can_pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    proxy_core, load_core = (0, 1) if can_pin else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-h2-"))
    procs: list[Proc] = []
    rows = [["route", "target", "req/s", "mean ms", "CPU µs/req", "÷ envoy", "÷ direct"]]
    try:
        h1, h2 = free_port(), free_port()
        (tmp / "nginx.conf").write_text(
            NGINX_CONF.format(tmp=tmp, h1=h1, h2=h2, body=BODY.replace("\n", "\\n"))
        )
        nginx = start(
            "nginx",
            pinned([find_nginx(), "-p", str(tmp), "-c", str(tmp / "nginx.conf")], load_core),
            tmp,
        )
        procs.append(nginx)
        if err := wait_http_ok(nginx, h1, 10):
            sys.exit(f"nginx failed: {err}\n{nginx.tail()}")
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        targets: dict[str, tuple[int, int, int, int | None]] = {}
        for kind in ("envoy", "trioproxy"):
            admin, to_h1, to_h2, tls_h2 = free_port(), free_port(), free_port(), free_port()
            cfg = tmp / f"{kind}.yaml"
            cfg.write_text(proxy_config(admin, (to_h1, to_h2, tls_h2), h1, h2, cert, key))
            if kind == "envoy":
                cmd = [find_envoy(), "-c", str(cfg), "--concurrency", "1", "-l", "error"]
                cmd.append("--use-dynamic-base-id")
            else:
                cmd = [a.replace("{config}", str(cfg)) for a in TRIOPROXY_COMMAND]
            proc = start(kind, pinned(cmd, proxy_core), tmp)
            procs.append(proc)
            if err := wait_http_ok(proc, to_h1, START_DEADLINE):
                sys.exit(f"{kind} failed: {err}\n{proc.tail()}")
            targets[kind] = (to_h1, to_h2, tls_h2, proc.popen.pid)
        print(
            f"# h2load -t1 -c{args.clients} -m{args.streams}, {args.duration:g} s after "
            f"{args.warmup:g} s warm-up; 100-byte responses from nginx",
            flush=True,
        )
        routes = (
            ("h2c → HTTP/1.1", None, 0, "http"),
            ("h2c → h2c", h2, 1, "http"),
            ("h2 (TLS) → h2c", h2, 2, "https"),
        )
        for route, direct_port, index, scheme in routes:
            results: dict[str, tuple[float, float, float | None, str]] = {}
            if direct_port is not None:
                results["direct (h2c)"] = h2load(direct_port, args, load_core, None)
            for kind, ports in targets.items():
                results[kind] = h2load(ports[index], args, load_core, ports[3], scheme)
                print(f"  {route:<15} {kind:<10} {results[kind][0]:>10,.0f} req/s", flush=True)
            env = results["envoy"][0]
            direct = results.get("direct (h2c)", (0.0,))[0]
            for name, (rps, mean, cpu, errors) in results.items():
                rows.append(
                    [
                        route,
                        name + (f" ({errors})" if errors else ""),
                        f"{rps:,.0f}",
                        f"{mean:.2f}",
                        f"{cpu:.1f}" if cpu is not None else "-",
                        f"{rps / env:.2f}" if name == "trioproxy" and env else "",
                        f"{rps / direct:.2f}" if direct and not name.startswith("direct") else "",
                    ]
                )
        print()
        print_text(rows)
        print("\nMarkdown:\n")
        print_markdown(rows)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
