#!/usr/bin/env python3
"""What parking costs: the latency of a request after an idle gap, Envoy vs trioproxy.

Not a test. Run ``python benchmarks/bench_resume.py [--rounds 12] [--gaps 0.5,0.9,1.3]``
with the interpreter of the install to measure (the compiled one, as the suite does).

An HTTP/1.1 keep-alive connection idle for ``--park-idle-after-s`` (1 s by default) leaves
its task (``trioproxy.listener.parking``); its next request starts one again. Targets, each
started once, one after another: Envoy, trioproxy with its default, and trioproxy with
``--park-idle-after-s 0`` (never parks). For each, a background connection makes a request
every 2 ms, so that the proxy is busy and its hot path warm, as a loaded proxy's is; the
measured connection sleeps for each gap in turn and then makes one request, ``--rounds``
times. The table gives the median and the fastest of each gap's requests, in µs, measured by
this client (blocking sockets, send to last byte of the response).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from benchlib import BODY, TRIOPROXY_COMMAND, Pinning, Rig, markdown_table, text_table

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BACKGROUND_EVERY = 0.002


def request(sock: socket.socket) -> float:
    """One request and its whole response; the time it took in µs."""
    start = time.perf_counter()
    sock.sendall(REQUEST)
    data = b""
    while not data.endswith(BODY.encode()):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        data += chunk
    return (time.perf_counter() - start) * 1e6


def measure(port: int, gaps: Sequence[float], rounds: int) -> dict[float, list[float]]:
    stop = threading.Event()

    def background() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            while not stop.is_set():
                request(sock)
                time.sleep(BACKGROUND_EVERY)

    worker = threading.Thread(target=background)
    worker.start()
    times: dict[float, list[float]] = {gap: [] for gap in gaps}
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(5):
                request(sock)
            for _ in range(rounds):
                for gap in gaps:
                    time.sleep(gap)
                    times[gap].append(request(sock))
    finally:
        stop.set()
        worker.join()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="requests per gap")
    ap.add_argument("--gaps", default="0.5,0.9,1.3", help="idle gaps in seconds, comma-separated")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    never = [*TRIOPROXY_COMMAND, "--park-idle-after-s", "0"]
    targets = [
        ("envoy", "envoy", None),
        ("trioproxy", "trioproxy", None),
        ("trioproxy (never parks)", "trioproxy", never),
    ]
    rows = [["target", *(f"after {g:g} s: median, fastest µs" for g in gaps)]]
    with Rig(Pinning.choose(args.no_pin)) as rig:
        rig.start_backend()
        for label, kind, command in targets:
            name = label.replace(" (never parks)", "-never-parks")
            target = rig.start_proxy(kind, ["h1"], name=name, command=command)
            try:
                times = measure(target.ports["h1"], gaps, args.rounds)
            finally:
                rig.stop_target(target)
            rows.append(
                [label, *(f"{statistics.median(times[g]):.0f}, {min(times[g]):.0f}" for g in gaps)]
            )
            print(f"  {label}: done", file=sys.stderr, flush=True)
    print(text_table(rows))
    print("\nMarkdown:\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
