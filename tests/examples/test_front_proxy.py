"""The front-proxy demo as a user runs it: `examples/front-proxy/run.py`, then curl."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_ports, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
CURL = shutil.which("curl")


def _free_run(n: int) -> int:
    """A port p such that p … p+n-1 are all free right now."""
    for _ in range(200):
        (start,) = free_ports(1)
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[int, int]]:
    listen, admin = free_ports(2)
    base = _free_run(3)  # the colour services take three consecutive ports
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "front-proxy" / "run.py"),
            "--listen-port",
            str(listen),
            "--admin-port",
            str(admin),
            "--base-port",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(admin, 30)
        wait_port(listen, 30)
        yield listen, admin
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert proc.returncode == 0, out


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run([CURL, "-s", *args], capture_output=True, text=True, timeout=30)


def _admin(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as resp:
        return resp.read().decode()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_three_requests_show_three_colours(demo: tuple[int, int]) -> None:
    listen, admin = demo
    colours = []
    for _ in range(3):
        r = _curl("-k", "-D", "-", f"https://127.0.0.1:{listen}/service")
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.partition("\n\n")
        assert head.startswith("HTTP/1.1 200")
        assert "server: envoy" in head.lower()
        assert "x-envoy-upstream-service-time" in head.lower()
        colours.append(next(c for c in ("blue", "green", "red") if f"the {c} service" in body))
    assert sorted(colours) == ["blue", "green", "red"]
    stats = _admin(admin, "/stats")
    assert "cluster.service.upstream_rq_total: 3" in stats
    assert "http.ingress_http.downstream_rq_2xx: 3" in stats
    assert "cluster.service.membership_total: 3" in stats
    assert "listener.0.0.0.0_" in stats


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_tls_handshake_and_no_route(demo: tuple[int, int]) -> None:
    listen, admin = demo
    r = _curl("-kv", f"https://127.0.0.1:{listen}/")
    assert "CN=front-envoy" in r.stderr
    assert "< HTTP/1.1 404" in r.stderr
    plain = _curl(f"http://127.0.0.1:{listen}/service")
    assert plain.returncode != 0 or "HTTP/1.1" not in plain.stdout  # TLS port: no plaintext
    assert "http.ingress_http.no_route: 1" in _admin(admin, "/stats")


def test_config_dump_lists_the_static_cluster(demo: tuple[int, int]) -> None:
    _, admin = demo
    dump = json.loads(_admin(admin, "/config_dump"))
    clusters = dump["configs"][1]
    assert clusters["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    (static,) = clusters["static_clusters"]
    assert static["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert static["cluster"]["name"] == "service"
    assert "dynamic_active_clusters" not in clusters
