#!/usr/bin/env python3
"""Idle keep-alive connection memory: Envoy vs nginx vs trioproxy, and what holds trioproxy's.

Not a test. Run ``python benchmarks/bench_idle.py [--connections 5000] [--traced 1000]
[--quick]``; ``bench_suite.py`` runs it after the throughput measurements.

What it measures, per proxy, each freshly started (one process, ``--concurrency 1``, access
logs off; nginx: one worker) with one HTTP/1.1 listener routing to the nginx backend:

1. warm-up: ``WARM`` connections each make one request and close (lazy imports, caches, the
   upstream connection);
2. the proxy's memory (RSS and USS of its process tree, /proc/PID/smaps_rollup) once settled;
3. ``--connections`` connections are opened one after another, each making one request and
   reading its response, so each is a real keep-alive connection that has carried a request
   (as Envoy counts them; one at a time, so the upstream pool stays at one connection);
4. after ``SETTLE`` seconds, the memory again, and how many connections are still open (none
   should close: Envoy's HCM idle timeout and trioproxy's are 1 h, nginx's is set to 1 h, and
   trioproxy's 10,000-connection listener limit is above the count).

(after - before) ÷ connections is the memory per idle connection. Kernel socket buffers are
not in RSS. The client is this process (blocking sockets); RLIMIT_NOFILE is raised for it and
the proxies it starts.

``--traced N`` then starts trioproxy once more under ``traced_trioproxy.py`` (tracemalloc),
takes a snapshot after warm-up and another after opening N idle connections, and prints the
difference per connection grouped by allocating line, and grouped by the innermost frame in
trioproxy's own code (``trioproxy/`` or ``plugins/``): what the memory of an idle connection is.

``--protocol`` measures other idle connections the same way, on their own (not part of the
suite): ``tls`` (HTTP/1.1 over TLS: the TLS listener, certificates from the rig) and ``h2c``
(HTTP/2 with prior knowledge, one stream each, by the ``h2`` library).
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import os
import re
import signal
import socket
import ssl
import struct
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from benchlib import (
    BODY,
    TRIOPROXY_COMMAND,
    Memory,
    Pinning,
    Rig,
    markdown_table,
    raise_nofile,
    text_table,
    tree_memory,
)

PROXIES = ("envoy", "nginx", "trioproxy")
WARM = 20
SETTLE = 2.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
REPO = Path(__file__).resolve().parents[1]
OUR_CODE = (str(REPO / "trioproxy") + os.sep, str(REPO / "plugins") + os.sep)
#: The same code installed (the suite's trioproxy is a non-editable compiled install).
OUR_INSTALLED = (
    f"{os.sep}site-packages{os.sep}trioproxy{os.sep}",
    f"{os.sep}trioproxy_plugins{os.sep}",
)


# -- the client ------------------------------------------------------------------------------


#: Each ``--protocol``: the rig's listener role it connects to.
ROLES = {"h1": "h1", "tls": "h1_tls", "h2c": "h2c_h1"}
#: A benchmark client: it takes the rig's throwaway certificate without checking it.
_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


def one_request(port: int, protocol: str = "h1") -> socket.socket:
    """A connection that has made one request and read its 200 response, left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if protocol == "h2c":
        return _one_h2_request(sock)
    if protocol == "tls":
        sock = _TLS.wrap_socket(sock, server_hostname="localhost")
    try:
        sock.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(BODY.encode()):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"port {port} closed the connection: {data[:200]!r}")
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"port {port} answered {data[:200]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def _one_h2_request(sock: socket.socket) -> socket.socket:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "bench")]
    conn.send_headers(1, headers, end_stream=True)
    try:
        sock.sendall(conn.data_to_send())
        status = ""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"port {sock.getpeername()[1]} closed the connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status", b"").decode()
                elif isinstance(ev, h2.events.StreamEnded):
                    if status != "200":
                        raise ConnectionError(f"answered {status or 'no status'}")
                    sock.sendall(conn.data_to_send())
                    return sock
            sock.sendall(conn.data_to_send())
    except BaseException:
        sock.close()
        raise


def close_all(socks: Sequence[socket.socket]) -> None:
    """Close with a reset (SO_LINGER 0), leaving no TIME_WAIT ports behind on a shared host."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def still_open(socks: Sequence[socket.socket], protocol: str = "h1") -> int:
    """How many connections the proxy has not closed (no EOF or error waiting to be read).
    (It reads a byte where there is one: the connections are closed next.)"""
    n = 0
    for s in socks:
        s.setblocking(False)  # with a timeout set, recv would poll for it first
        try:
            if s.recv(1):
                # HTTP/1.1: unexpected bytes, not an idle keep-alive connection; HTTP/2: a
                # frame (a PING, a WINDOW_UPDATE) of a connection still open
                n += protocol == "h2c"
        except (BlockingIOError, ssl.SSLWantReadError):
            n += 1
        except OSError:
            pass
    return n


@contextlib.contextmanager
def idle_connections(port: int, n: int, protocol: str = "h1") -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(one_request(port, protocol))
        yield socks
    finally:
        close_all(socks)


def warm_up(port: int, protocol: str = "h1") -> None:
    with idle_connections(port, WARM, protocol):
        pass
    time.sleep(0.5)


def settled_memory(pid: int, seconds: float) -> Memory:
    """The memory after ``seconds``, then once two readings 0.25 s apart agree within 1 %."""
    time.sleep(seconds)
    last = tree_memory(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = tree_memory(pid)
        if abs(now.rss_kib - last.rss_kib) <= last.rss_kib / 100:
            return now
        last = now
    return last


# -- RSS per connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class Idle:
    target: str
    opened: int
    open_at_end: int
    before: Memory
    after: Memory

    def rss_per_conn_kib(self) -> float:
        return (self.after.rss_kib - self.before.rss_kib) / self.opened

    def uss_per_conn_kib(self) -> float:
        return (self.after.uss_kib - self.before.uss_kib) / self.opened


def measure_idle(
    rig: Rig, kind: str, n: int, protocol: str = "h1", park_after: float | None = None
) -> Idle:
    role = ROLES[protocol]
    command = None
    if kind == "trioproxy" and park_after is not None:
        command = [*TRIOPROXY_COMMAND, "--park-idle-after-s", str(park_after)]
    target = rig.start_proxy(kind, [role], name=f"{kind}-idle", command=command)
    assert target.pid is not None
    try:
        port = target.ports[role]
        warm_up(port, protocol)
        before = settled_memory(target.pid, 0.5)
        with idle_connections(port, n, protocol) as socks:
            after = settled_memory(target.pid, SETTLE)
            open_at_end = still_open(socks, protocol)
        label = kind if protocol == "h1" else f"{kind} ({protocol})"
        return Idle(label, n, open_at_end, before, after)
    finally:
        rig.stop_target(target)


def idle_table(results: Sequence[Idle]) -> list[list[str]]:
    rows = [["target", "idle conns", "RSS before MiB", "RSS after MiB", "KiB/conn RSS"]]
    rows[0].append("KiB/conn USS")
    for r in results:
        rows.append(
            [
                r.target,
                f"{r.open_at_end:,}" + (f" of {r.opened:,}" if r.open_at_end != r.opened else ""),
                f"{r.before.rss_kib / 1024:.1f}",
                f"{r.after.rss_kib / 1024:.1f}",
                f"{r.rss_per_conn_kib():.1f}",
                f"{r.uss_per_conn_kib():.1f}",
            ]
        )
    return rows


# -- what holds trioproxy's (tracemalloc) ----------------------------------------------------


@dataclass(frozen=True)
class Holder:
    where: str  # file:line
    code: str  # the source line
    bytes_per_conn: float
    blocks_per_conn: float


@dataclass(frozen=True)
class Breakdown:
    connections: int
    total_bytes_per_conn: float
    total_blocks_per_conn: float
    by_line: list[Holder]
    by_our_frame: list[Holder]
    by_package: dict[str, float]  # bytes per connection by the innermost frame's package


def short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(REPO))
    return filename


def package(filename: str) -> str:
    """trioproxy, plugins, trio, ... for a file; "stdlib" for the standard library's."""
    if m := re.match(r"<attrs generated \w+ (\w+)", filename):
        return m.group(1)  # an attrs-generated __init__ etc.: the class's package
    name = short(filename)
    if "/site-packages/" not in filename and "/lib/python3." in filename:
        return "stdlib"
    return name.split("/", 1)[0] if "/" in name else name


def _holder(frame: tracemalloc.Frame, size: int, count: int, n: int) -> Holder:
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return Holder(f"{short(frame.filename)}:{frame.lineno}", code, size / n, count / n)


def our_frame(tb: tracemalloc.Traceback) -> tracemalloc.Frame | None:
    """The most recent frame in trioproxy's own code (``Traceback`` lists oldest first)."""
    for frame in reversed(list(tb)):
        name = frame.filename
        if name.startswith(OUR_CODE) or any(part in name for part in OUR_INSTALLED):
            return frame
    return None


def diff_by_our_frame(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> dict[str, tuple[tracemalloc.Frame | None, int, int]]:
    totals: dict[str, tuple[tracemalloc.Frame | None, int, int]] = {}
    for snap, sign in ((after, 1), (before, -1)):
        for trace in snap.traces:
            frame = our_frame(trace.traceback)
            key = f"{frame.filename}:{frame.lineno}" if frame else "(no trioproxy frame)"
            _, size, count = totals.get(key, (frame, 0, 0))
            totals[key] = (frame, size + sign * trace.size, count + sign)
    return totals


def breakdown(rig: Rig, n: int, top: int = 15) -> Breakdown:
    prefix = str(rig.tmp / "snapshot")
    runner = Path(__file__).with_name("traced_trioproxy.py")
    cmd = [sys.executable, str(runner), "serve", "-c", "{config}", "--concurrency", "1"]
    env = {**os.environ, "BENCH_SNAPSHOT_PREFIX": prefix}
    target = rig.start_proxy("trioproxy", ["h1"], "trioproxy-traced", command=cmd, env=env)
    assert target.pid is not None

    def snapshot(k: int) -> tracemalloc.Snapshot:
        assert target.pid is not None
        os.kill(target.pid, signal.SIGUSR2)
        path = Path(f"{prefix}.{k}")
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                sys.exit(f"trioproxy wrote no tracemalloc snapshot to {path}")
            time.sleep(0.05)
        ignore = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            tracemalloc.Filter(False, linecache.__file__),
        ]
        return tracemalloc.Snapshot.load(str(path)).filter_traces(ignore)

    try:
        port = target.ports["h1"]
        warm_up(port)
        before = snapshot(0)
        with idle_connections(port, n):
            time.sleep(0.5)
            after = snapshot(1)
    finally:
        rig.stop_target(target)
    lines = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0]
    by_line = [
        _holder(s.traceback[0], s.size_diff, s.count_diff, n)
        for s in sorted(lines, key=lambda s: -s.size_diff)[:top]
    ]
    ours = sorted(diff_by_our_frame(before, after).items(), key=lambda kv: -kv[1][1])
    by_frame = []
    for key, (frame, size, count) in ours[:top]:
        if size <= 0:
            break
        if frame is None:
            by_frame.append(Holder(key, "", size / n, count / n))
        else:
            by_frame.append(_holder(frame, size, count, n))
    files = after.compare_to(before, "filename")
    packages: dict[str, float] = {}
    for s in files:
        key = package(s.traceback[0].filename)
        packages[key] = packages.get(key, 0.0) + s.size_diff / n
    by_package = dict(sorted(packages.items(), key=lambda kv: -kv[1]))
    total = sum(s.size_diff for s in files)
    blocks = sum(s.count_diff for s in files)
    return Breakdown(n, total / n, blocks / n, by_line, by_frame, by_package)


def holder_table(holders: Sequence[Holder], markdown: bool) -> list[list[str]]:
    rows = [["where", "code", "B/conn", "blocks/conn"]]
    for h in holders:
        code = h.code if len(h.code) <= 60 else h.code[:57] + "..."
        if markdown:
            code = f"`{code}`".replace("|", "\\|") if code else ""
        rows.append([h.where, code, f"{h.bytes_per_conn:,.0f}", f"{h.blocks_per_conn:.2f}"])
    return rows


def report(idle: Sequence[Idle], bd: Breakdown | None, markdown: bool) -> str:
    def render(rows: list[list[str]], left: int = 1) -> str:
        return markdown_table(rows, left) if markdown else text_table(rows, left)

    out = [render(idle_table(idle))] if idle else []
    if bd is not None:
        out.append(
            f"trioproxy under tracemalloc, {bd.connections:,} idle connections: "
            f"{bd.total_bytes_per_conn / 1024:.2f} KiB and {bd.total_blocks_per_conn:.1f} "
            "Python allocations per connection; by the package of the allocating line: "
            + ", ".join(f"{k} {v / 1024:.2f} KiB" for k, v in bd.by_package.items() if v >= 8)
            + ".\n\nTop allocating lines (innermost frame):\n\n"
            + render(holder_table(bd.by_line, markdown), 2)
            + "\n\nThe same bytes by the innermost frame in trioproxy's code "
            "(trioproxy/, plugins/), i.e. the call that made trio, h11 or the stdlib allocate:"
            "\n\n" + render(holder_table(bd.by_our_frame, markdown), 2)
        )
    return "\n\n".join(out)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--idle-connections", type=int, default=5000, help="idle connections per proxy")
    ap.add_argument(
        "--traced",
        type=int,
        default=1000,
        help="idle connections for trioproxy's tracemalloc breakdown (0: none)",
    )


def run(
    rig: Rig,
    proxies: Sequence[str],
    n: int,
    traced: int,
    protocol: str = "h1",
    park_after: float | None = None,
) -> tuple[list[Idle], Breakdown | None]:
    raise_nofile(n + 1024)
    results = []
    for kind in proxies:
        r = measure_idle(rig, kind, n, protocol, park_after)
        results.append(r)
        print(
            f"  idle {kind:<10} {r.open_at_end:>6,} open {r.rss_per_conn_kib():>7.1f} KiB/conn RSS",
            file=sys.stderr,
            flush=True,
        )
    bd = breakdown(rig, traced) if traced and "trioproxy" in proxies and protocol == "h1" else None
    return results, bd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="smoke check: 500 and 200 connections")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma-separated proxies")
    ap.add_argument(
        "--protocol",
        choices=sorted(ROLES),
        default="h1",
        help="idle connections of: HTTP/1.1 (h1), HTTP/1.1 over TLS (tls), h2c (h2c);"
        " the tracemalloc breakdown is HTTP/1.1's only",
    )
    ap.add_argument(
        "--park-idle-after-s",
        type=float,
        default=None,
        help="trioproxy's option of that name (default: its own default)",
    )
    args = ap.parse_args()
    if args.quick:
        args.idle_connections, args.traced = 500, min(args.traced, 200)
    proxies = [p for p in args.only.split(",") if p]
    with Rig(Pinning.choose(args.no_pin)) as rig:
        rig.start_backend()
        idle, bd = run(
            rig,
            proxies,
            args.idle_connections,
            args.traced,
            args.protocol,
            args.park_idle_after_s,
        )
    print(report(idle, bd, markdown=False))
    print("\nMarkdown:\n")
    print(report(idle, bd, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
