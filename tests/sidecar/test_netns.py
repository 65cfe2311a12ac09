"""Two pods in two network namespaces, each with a trioproxy sidecar behind `trioproxy iptables`.

Pod A (10.77.0.1) and pod B (10.77.0.2) are joined by a veth pair. In each, `trioproxy iptables`
installs the capture and a sidecar runs as uid/gid 1337 (`setpriv`) with ``sidecar.yaml``; pod
B runs the application (`pod.py serve`). The client in pod A connects plainly to pod B's
address; the test then reads what pod B's application saw and both sidecars' stats.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
POD = str(HERE / "pod.py")
A_IP, B_IP = "10.77.0.1", "10.77.0.2"
A_IP6, B_IP6 = "fd77::1", "fd77::2"
# Pod B's IPv6 application port is excluded from B's inbound capture, so the IPv6 test sees
# pod A's outbound capture alone (an inbound IPv6 passthrough needs a ::6 source address).
APP6_PORT = "9600"
CAPTURE = ["-d", f"15008,22,15090,15021,15020,{APP6_PORT}", "--ipv6"]
PROXY_UID = 1337


def _why_no_namespaces() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "iptables-restore", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, iptables, util-linux)"
    name = f"tp-probe-{secrets.token_hex(3)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


@attrs.define
class Pod:
    ns: str
    ip: str
    logdir: str = ""
    #: setpriv flags the sidecar runs with: uid and gid 1337, or gid 1337 alone when uid 1337
    #: cannot read this checkout (a clone under /root); the capture exempts either.
    proxy_user: tuple[str, ...] = (f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups")
    procs: list[subprocess.Popen[bytes]] = attrs.field(factory=list)
    logs: list[Any] = attrs.field(factory=list)

    def run(self, *cmd: str, stdin: bytes = b"", as_proxy: bool = False) -> bytes:
        proc = subprocess.run(
            self._cmd(cmd, as_proxy), input=stdin, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, (cmd, proc.stderr.decode(errors="replace"))
        return proc.stdout

    def start(self, *cmd: str, as_proxy: bool = False) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.logdir, f"{self.ns}-{len(self.procs)}.log"), "wb")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(self._cmd(cmd, as_proxy), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        """Every process's output, for a failing test's report."""
        parts = []
        for log in self.logs:
            log.flush()
            with open(log.name, errors="replace") as f:
                parts.append(f"--- {log.name}\n{f.read()[-4000:]}")
        return "\n".join(parts)

    def _cmd(self, cmd: tuple[str, ...], as_proxy: bool) -> list[str]:
        prefix = ["ip", "netns", "exec", self.ns]
        if as_proxy:
            prefix += ["setpriv", *self.proxy_user]
        return [*prefix, *cmd]

    def stats(self) -> dict[str, str]:
        text = self.run(sys.executable, POD, "get", "http://127.0.0.1:15000/stats").decode()
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    def clusters(self) -> str:
        return self.run(sys.executable, POD, "get", "http://127.0.0.1:15000/clusters").decode()


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pods() -> Iterator[tuple[Pod, Pod]]:
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    # The sidecars run as uid 1337: their config must be readable by it.
    workdir = tempfile.mkdtemp(prefix="trioproxy-sidecar-")
    a, b = Pod(f"tp-a-{tag}", A_IP, workdir), Pod(f"tp-b-{tag}", B_IP, workdir)
    os.chmod(workdir, 0o755)
    config = os.path.join(workdir, "sidecar.yaml")
    shutil.copy(HERE / "sidecar.yaml", config)
    os.chmod(config, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        for pod in (a, b):
            _sh("ip", "netns", "add", pod.ns)
        _sh("ip", "link", "add", f"veth-a-{tag}", "type", "veth", "peer", "name", f"veth-b-{tag}")
        for pod, dev in ((a, f"veth-a-{tag}"), (b, f"veth-b-{tag}")):
            _sh("ip", "link", "set", dev, "netns", pod.ns)
            _sh("ip", "-n", pod.ns, "addr", "add", f"{pod.ip}/24", "dev", dev)
            ip6 = A_IP6 if pod is a else B_IP6
            _sh("ip", "-n", pod.ns, "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
            _sh("ip", "-n", pod.ns, "link", "set", dev, "up")
            _sh("ip", "-n", pod.ns, "link", "set", "lo", "up")
        # The sidecar runs as uid 1337 if that user can run this interpreter and checkout.
        probe_cmd = (sys.executable, "-c", "import trioproxy_plugins.tcp_proxy")
        if subprocess.run(a._cmd(probe_cmd, True), capture_output=True).returncode != 0:
            for pod in (a, b):
                pod.proxy_user = (f"--regid={PROXY_UID}", "--clear-groups")
            probe = subprocess.run(a._cmd(probe_cmd, True), capture_output=True, text=True)
            assert probe.returncode == 0, probe.stderr
            print(f"uid {PROXY_UID} cannot read {ROOT}: the sidecars run with gid {PROXY_UID}")
        b.start(
            sys.executable, POD, "serve", "--tcp", "9000", "--http", "8080", "--tcp6", APP6_PORT
        )
        for pod in (a, b):
            pod.run(sys.executable, "-m", "trioproxy", "iptables", *CAPTURE)
            pod.start(sys.executable, "-m", "trioproxy", "serve", "-c", config, as_proxy=True)
        try:
            for pod in (a, b):
                pod.run(sys.executable, POD, "wait", "127.0.0.1", "15000")
            b.run(sys.executable, POD, "wait", "127.0.0.1", "9000")
        except AssertionError:
            pytest.fail(f"the pods did not start:\n{a.output()}\n{b.output()}")
        yield a, b
    finally:
        for pod in (a, b):
            for proc in pod.procs:
                proc.terminate()
            for proc in pod.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in pod.logs:
                log.close()
            subprocess.run(["ip", "netns", "del", pod.ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_plain_tcp_goes_out_through_15001_and_in_through_15006(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    payload = secrets.token_bytes(256 * 1024)
    out = a.run(sys.executable, POD, "tcp", B_IP, "9000", stdin=payload)
    head, _, echoed = out.partition(b"\n")
    seen = json.loads(head)
    # the bytes arrived intact, and came back intact
    assert seen["sha256"] == hashlib.sha256(payload).hexdigest()
    assert echoed == payload
    # the application saw its own address (the original destination was kept) and a
    # connection from the inbound sidecar's passthrough source, not from pod A
    assert seen["local"] == f"{B_IP}:9000"
    assert seen["peer"].startswith("127.0.0.6:")

    sa, sb = a.stats(), b.stats()
    assert int(sa["listener.[__]_15001.downstream_cx_total"]) >= 1
    assert int(sa["tcp.PassthroughCluster.downstream_cx_total"]) == 1
    assert int(sa["tcp.PassthroughCluster.downstream_cx_rx_bytes_total"]) == len(payload)
    assert int(sa["cluster.PassthroughCluster.upstream_cx_total"]) == 1
    assert f"PassthroughCluster::{B_IP}:9000::cx_total::1" in a.clusters()
    assert int(sb["listener.[__]_15006.downstream_cx_total"]) >= 1
    assert int(sb["tcp.InboundPassthroughCluster.downstream_cx_total"]) == 1
    assert int(sb["tcp.InboundPassthroughCluster.downstream_cx_rx_bytes_total"]) == len(payload)
    assert f"InboundPassthroughCluster::{B_IP}:9000::cx_total::1" in b.clusters()


def test_http_through_both_sidecars(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    body = json.loads(a.run(sys.executable, POD, "http", f"http://{B_IP}:8080/hello"))
    assert body["path"] == "/hello"
    assert body["local"] == f"{B_IP}:8080"
    assert body["peer"].startswith("127.0.0.6:")
    # pod A's sidecar made the request id; pod B's sidecar forwarded it
    assert body["headers"]["x-request-id"]
    assert body["headers"]["host"] == f"{B_IP}:8080"

    sa, sb = a.stats(), b.stats()
    # A: 15001 handed the connection to the bind_to_port: false listener for :8080
    assert int(sa["listener.0.0.0.0_8080.downstream_cx_total"]) == 1
    assert int(sa["http.outbound_0.0.0.0_8080.downstream_rq_2xx"]) == 1
    assert int(sa["cluster.outbound|8080||pod-b.upstream_rq_200"]) == 1
    # B: 15006 chose the chain for destination port 8080
    assert int(sb["http.inbound_0.0.0.0_8080.downstream_rq_2xx"]) == 1
    assert int(sb["cluster.inbound|8080||.upstream_rq_200"]) == 1
    assert f"inbound|8080||::{B_IP}:8080::" in b.clusters()


def test_the_proxy_user_is_not_captured(pods: tuple[Pod, Pod]) -> None:
    """uid 1337 reaches pod B directly: B's inbound capture sees it, A's outbound does not."""
    a, b = pods
    before = int(a.stats().get("listener.[__]_15001.downstream_cx_total", "0"))
    out = a.run(sys.executable, POD, "tcp", B_IP, "9000", stdin=b"direct", as_proxy=True)
    seen = json.loads(out.partition(b"\n")[0])
    assert seen["peer"].startswith("127.0.0.6:")  # still through B's sidecar
    assert int(a.stats().get("listener.[__]_15001.downstream_cx_total", "0")) == before


def test_ipv6_original_destination(pods: tuple[Pod, Pod]) -> None:
    """ip6tables REDIRECT to the dual-stack 15001 listener; IP6T_SO_ORIGINAL_DST recovers
    pod B's IPv6 address and port, and the passthrough cluster connects there."""
    a, b = pods
    out = a.run(sys.executable, POD, "tcp", f"[{B_IP6}]", APP6_PORT, stdin=b"over ipv6")
    head, _, echoed = out.partition(b"\n")
    seen = json.loads(head)
    assert echoed == b"over ipv6"
    assert seen["local"] == f"[{B_IP6}]:{APP6_PORT}"
    assert seen["peer"].startswith(f"[{A_IP6}]:")  # not captured inbound (excluded port)
    assert f"PassthroughCluster::[{B_IP6}]:{APP6_PORT}::cx_total::1" in a.clusters()
