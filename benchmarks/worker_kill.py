#!/usr/bin/env python3
"""What SIGKILL of one worker costs under ``--concurrency 2``: requests lost, by kind.

Not a test. Run ``python benchmarks/worker_kill.py [--duration S] [--clients N]``.

Theory of operation: a backend (``python -m http.server``) and ``trioproxy serve
--concurrency 2`` start on 127.0.0.1; N client threads send requests for S seconds — half of
them on a new connection each (``Connection: close``: these find connections queued in the
dead worker's accept backlog), half on one keep-alive connection each, reconnecting after a
failure. Halfway through, worker 0 is killed with SIGKILL. The run prints, for each kind of
client, the requests that succeeded and the failures by cause; the failures are the requests
the dead worker held: in flight on its connections (an EOF or a reset), or in its accept
backlog (a reset on a new connection: the kernel resets those when the dead worker's listening
socket closes, and the reuseport group rehashes later connections to the living worker).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CONFIG = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}
"""  # noqa: E501


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exchange(sock: socket.socket, close: bool) -> None:
    """One GET on ``sock``; raises on any failure, returns once the whole response is read."""
    sock.sendall(
        b"GET / HTTP/1.1\r\nhost: x\r\n" + (b"connection: close\r\n" if close else b"") + b"\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head.split(b"\r\n")[0].decode())
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed in the body")
        body += chunk


def client(port: int, keep_alive: bool, until: float, tally: collections.Counter[str]) -> None:
    kind = "keep-alive" if keep_alive else "new connection"
    sock: socket.socket | None = None
    while time.monotonic() < until:
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            exchange(sock, close=not keep_alive)
            tally[f"{kind}: ok"] += 1
        except (OSError, EOFError, ValueError) as exc:
            tally[f"{kind}: {type(exc).__name__}"] += 1
            if sock is not None:
                sock.close()
            sock = None
            continue
        if not keep_alive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="worker-kill-"))
    (tmp / "www").mkdir()
    backend, port, admin = free_port(), free_port(), free_port()
    (tmp / "envoy.yaml").write_text(CONFIG.format(admin=admin, port=port, backend=backend))
    log = open(tmp / "proxy.log", "wb")  # noqa: SIM115 - open for the run
    serve = [sys.executable, "-P", "-m", "trioproxy", "serve", "-c", str(tmp / "envoy.yaml")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "http.server", str(backend), "--bind", "127.0.0.1"],
            cwd=tmp / "www",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*serve, "--concurrency", "2", "-l", "warning"],
            stdout=log,
            stderr=log,
        ),
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit((tmp / "proxy.log").read_text())
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=5) as r:
            main_pid = procs[1].pid
            assert json.load(r)["command_line_options"]["concurrency"] == 2
        children = subprocess.run(["pgrep", "-P", str(main_pid)], capture_output=True, text=True)
        workers = sorted(int(p) for p in children.stdout.split())
        tallies = [collections.Counter[str]() for _ in range(args.clients)]
        until = time.monotonic() + args.duration
        threads = [
            threading.Thread(target=client, args=(port, i % 2 == 1, until, tallies[i]))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.duration / 2)
        os.kill(workers[0], signal.SIGKILL)
        for t in threads:
            t.join()
        tally = sum(tallies, collections.Counter[str]())
        print(
            f"# --concurrency 2, {args.clients} clients for {args.duration:g} s, "
            f"SIGKILL of one worker at {args.duration / 2:g} s"
        )
        for key in sorted(tally):
            print(f"  {key:<32} {tally[key]:>7}")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=restarts") as r:
            print(r.read().decode().strip())
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(15)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
