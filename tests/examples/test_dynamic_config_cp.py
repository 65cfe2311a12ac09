"""The dynamic-config-cp walk-through as a user runs it: run.py, curl, control_plane.py."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_ports, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "examples" / "dynamic-config-cp"
CURL = shutil.which("curl")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _curl(port: int) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-s", f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
    )


def _dump(admin: int) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _until_served(port: int, name: str, deadline: float = 30.0) -> str:
    end = time.monotonic() + deadline
    out = ""
    while time.monotonic() < end:
        out = _curl(port).stdout
        if f"Request served by {name}" in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"never served by {name}: {out!r}")


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    admin, xds, listen, s1, s2 = free_ports(5)
    yield {"admin": admin, "xds": xds, "listen": listen, "s1": s1, "s2": s2}


def _control_plane(p: dict[str, int], service: str, version: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        str(DEMO / "control_plane.py"),
        "--service",
        service,
        "--version",
        version,
        "--port",
        str(p["xds"]),
        "--listen-port",
        str(p["listen"]),
        "--service-port",
        str(p["s1"] if service == "service1" else p["s2"]),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(p["xds"], 30)
    return proc


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_walkthrough(ports: dict[str, int]) -> None:
    p = ports
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(DEMO / "run.py"),
            "--admin-port",
            str(p["admin"]),
            "--xds-port",
            str(p["xds"]),
            "--service1-port",
            str(p["s1"]),
            "--service2-port",
            str(p["s2"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cp = None
    try:
        wait_port(p["admin"], 30)
        # 1. No control plane: no listener, and the dump has only the static cluster.
        assert _curl(p["listen"]).returncode == 7  # curl: could not connect
        dump = _dump(p["admin"])
        assert "dynamic_active_clusters" not in dump["configs"][1]
        (static,) = dump["configs"][1]["static_clusters"]
        assert static["cluster"]["name"] == "xds_cluster"
        assert static["cluster"]["type"] == "STRICT_DNS"

        # 2. The control plane starts: service1, version 1.
        cp = _control_plane(p, "service1", "1")
        _until_served(p["listen"], "service1")
        (dyn,) = _dump(p["admin"])["configs"][1]["dynamic_active_clusters"]
        assert dyn["version_info"] == "1"
        assert dyn["cluster"]["type"] == "LOGICAL_DNS"
        assert '"address": "127.0.0.1"' in json.dumps(dyn)

        # 3. It stops: the last configuration stays.
        _stop(cp)
        cp = None
        assert "Request served by service1" in _curl(p["listen"]).stdout
        assert _dump(p["admin"])["configs"][1]["dynamic_active_clusters"][0]["version_info"] == "1"

        # 4. It comes back with service2, version 2.
        cp = _control_plane(p, "service2", "2")
        _until_served(p["listen"], "service2", 60)
        dump = _dump(p["admin"])
        (dyn,) = dump["configs"][1]["dynamic_active_clusters"]
        assert dyn["version_info"] == "2"
        ep = dyn["cluster"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert ep["address"]["socket_address"]["port_value"] == p["s2"]
        routes = dump["configs"][4]["dynamic_route_configs"]
        assert routes[0]["route_config"]["name"] == "local_route"
    finally:
        if cp is not None:
            _stop(cp)
        out = _stop(proxy)
    assert proxy.returncode == 0, out
