"""Where a proxied request's time goes: trioproxy under load, seen by one of four tools.

    python benchmarks/profile_proxy.py perf   [--role h1|h2c_h1|h2c_h2c] [--connections 50]
    python benchmarks/profile_proxy.py pyspy  ...   # Python frames (trio's, interpreted code)
    python benchmarks/profile_proxy.py strace ...   # system calls per request, beside Envoy's
    python benchmarks/profile_proxy.py steps  ...   # trio steps, waits, tasks, scopes per request

The rig is the benchmarks' own (benchlib: nginx backend, the same proxy config, proxy pinned
to core 0, load on core 1); the load is wrk (h1) or h2load -m10 (h2c_h1, h2c_h2c).

- ``perf`` (``perf record -e cpu-clock --call-graph dwarf``, needs
  ``/proc/sys/kernel/perf_event_paranoid`` ≤ 1 for kernel frames) charges each sample to the
  first compiled (mypyc or httptools) frame above it, or to the interpreter when interpreted
  code is nearer: the honest split between kernel, compiled code and interpreted code.
  ``py-spy --native`` stops the process with ptrace for every sample and overstates the
  system calls (epoll_ctl at 20 % of the samples where perf finds 18 % for the whole kernel).
- ``pyspy`` (``--nonblocking``, no native frames) names the interpreted functions: trio's
  scheduler, its I/O manager, the instruments; compiled code shows as the interpreted frame
  that called it.
- ``strace`` counts system calls (``strace -c``) for trioproxy and Envoy under the same load.
- ``steps`` runs trioproxy with a trio instrument counting task steps, I/O waits and tasks
  spawned, and counts the cancel scopes entered (each about 4 µs of interpreted trio code,
  a nursery one of them).

Figures, not tests: docs/benchmarks.md says what they showed.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

STEPS_LAUNCHER = """
import collections, signal, sys, trio
class Count:
    steps = io = spawned = scopes = 0
    def before_task_step(self, task):
        Count.steps += 1
    def before_io_wait(self, timeout):
        Count.io += 1
    def task_spawned(self, task):
        Count.spawned += 1
enter = trio.CancelScope.__enter__
def counted_enter(self):
    Count.scopes += 1
    return enter(self)
trio.CancelScope.__enter__ = counted_enter
def dump(*_):
    with open(sys.argv[1], "w") as f:
        f.write(f"{Count.steps} {Count.io} {Count.spawned} {Count.scopes}")
signal.signal(signal.SIGUSR1, dump)
run = trio.run
def counted(fn, *args, **kw):
    kw["instruments"] = [*kw.get("instruments", ()), Count()]
    return run(fn, *args, **kw)
trio.run = counted
from trioproxy.cli import main
sys.exit(main(sys.argv[2:]))
"""


def load(role: str, port: int, conns: int, seconds: float, core: int | None) -> int:
    """Run the load generator; the number of requests completed."""
    url = f"http://127.0.0.1:{port}/"
    if role == "h1":
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", url]
        out = subprocess.run(bl.pinned(cmd, core), capture_output=True, text=True).stdout
        return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cmd = ["h2load", "-t1", f"-c{conns}", "-m10", f"-D{seconds:g}", url]
    out = subprocess.run(bl.pinned(cmd, core), capture_output=True, text=True).stdout
    return int(re.search(r"requests: (\d+) total", out).group(1))  # type: ignore[union-attr]


def owners(script: str, top: int) -> None:
    """perf script output: each sample charged to its nearest compiled or interpreted frame."""
    owner: collections.Counter[str] = collections.Counter()
    kernel = total = 0
    for block in script.split("\n\n"):
        frames = []
        for line in block.splitlines()[1:]:
            m = re.match(r"\s*\S+ (.*) \((.*)\)$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
        if not frames:
            continue
        total += 1
        kernel += frames[0][1].startswith("[kernel")
        who = f"<other: {frames[0][0][:40]}>"
        for sym, dso in frames:
            if "mypyc" in dso or "parser.cpython" in dso:
                who = sym
                break
            if sym == "_PyEval_EvalFrameDefault":
                who = "<interpreted: trio, and code not compiled>"
                break
        owner[who] += 1
    print(f"{total} samples; kernel at the leaf: {100 * kernel / max(total, 1):.1f} %")
    for who, n in owner.most_common(top):
        print(f"{100 * n / total:5.1f} %  {who[:110]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tool", choices=["perf", "pyspy", "strace", "steps"])
    ap.add_argument("--role", choices=["h1", "h2c_h1", "h2c_h2c"], default="h1")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--python", default=sys.executable, help="the trioproxy install to run")
    args = ap.parse_args()
    pinning = bl.Pinning.choose(False)
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    with bl.Rig(pinning) as rig:
        rig.start_backend()
        command = None
        if args.tool == "steps":
            (tmp / "launch.py").write_text(STEPS_LAUNCHER)
            cmd = [args.python, "-P", str(tmp / "launch.py"), str(tmp / "steps")]
            command = cmd + bl.TRIOPROXY_COMMAND[bl.TRIOPROXY_COMMAND.index("serve") :]
        targets = [rig.start_proxy("trioproxy", [args.role], command=command, python=args.python)]
        if args.tool == "strace":
            targets.append(rig.start_proxy("envoy", [args.role]))
        for t in targets:
            port = t.ports[args.role]
            load(args.role, port, args.connections, 1, pinning.load_core)  # warm-up
            assert t.pid is not None
            if args.tool == "steps":
                os.kill(t.pid, signal.SIGUSR1)
                time.sleep(0.3)
                before = [int(x) for x in (tmp / "steps").read_text().split()]
                n = load(args.role, port, args.connections, args.seconds, pinning.load_core)
                os.kill(t.pid, signal.SIGUSR1)
                time.sleep(0.3)
                after = [int(x) for x in (tmp / "steps").read_text().split()]
                per = [(a - b) / n for a, b in zip(after, before, strict=True)]
                print(f"{n} requests; per request: {per[0]:.2f} task steps, {per[1]:.3f} I/O "
                      f"waits, {per[2]:.3f} tasks spawned, {per[3]:.3f} cancel scopes "
                      "entered (nurseries included)")  # fmt: skip
                continue
            if args.tool == "perf":
                out = tmp / "perf.data"
                cmd = ["perf", "record", "-e", "cpu-clock", "-F", "400", "--call-graph",
                       "dwarf,16384", "-p", str(t.pid), "-o", str(out)]  # fmt: skip
            elif args.tool == "pyspy":
                out = tmp / "pyspy.txt"
                secs = f"{args.seconds:g}"
                cmd = ["py-spy", "record", "--nonblocking", "-r", "300", "-d", secs,
                       "-p", str(t.pid), "-f", "raw", "-o", str(out)]  # fmt: skip
            else:
                tids = os.listdir(f"/proc/{t.pid}/task")
                cmd = ["strace", "-c", "-f", *(a for tid in tids for a in ("-p", tid))]
            tool = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            time.sleep(0.5)
            n = load(args.role, port, args.connections, args.seconds, pinning.load_core)
            if args.tool != "pyspy":
                tool.send_signal(signal.SIGINT)
            err = tool.communicate()[1]
            print(f"== {t.name}: {n} requests")
            if args.tool == "strace":
                for line in err.splitlines():
                    f = line.split()
                    if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
                        print(f"  {f[-1]:16s} {int(f[3]) / n:6.2f} per request")
            elif args.tool == "perf":
                script = subprocess.run(
                    ["perf", "script", "-i", str(out), "-F", "comm,ip,sym,dso"],
                    capture_output=True, text=True,
                ).stdout  # fmt: skip
                owners(script, args.top)
            else:
                leaves: collections.Counter[str] = collections.Counter()
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    leaf = re.sub(r"/\S*site-packages/", "", stack.split(";")[-1])
                    leaves[leaf] += int(count)
                total = sum(leaves.values())
                for leaf, k in leaves.most_common(args.top):
                    print(f"{100 * k / total:5.1f} %  {leaf[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
