"""The command line, run as a user runs it: a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_ports, simple_config, wait_port

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioproxy", *args], capture_output=True, text=True, timeout=timeout
    )


def test_validate_accepts_the_front_proxy_demo() -> None:
    demo = Path(__file__).parents[2] / "examples" / "front-proxy" / "envoy.yaml"
    result = _run("validate", str(demo))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_validate_names_a_misspelt_field_and_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    text = simple_config([1234]).replace("stat_prefix: ingress_http", "stat_prefx: ingress_http")
    cfg.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "stat_prefx" in l)
    result = _run("validate", str(cfg))
    assert result.returncode == 1
    assert "stat_prefx" in result.stderr
    assert f":{line}:" in result.stderr
    result = _run("serve", "--mode", "validate", "-c", str(cfg))
    assert result.returncode == 1


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    # A slow upstream: a plain socket server that answers after 1 s.
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    up_port = upstream.getsockname()[1]
    port = free_ports(1)[0]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        simple_config([up_port], admin=False).replace("port_value: 0", f"port_value: {port}", 1)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioproxy", "serve", "-c", str(cfg), "--drain-time-s", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port)
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        conn, _ = upstream.accept()
        conn.recv(65536)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New connections are refused while draining.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
        client.settimeout(5)
        data = b""
        while b"done" not in data:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in data.lower()
        proc.communicate(timeout=15)
        assert proc.returncode == 0
        conn.close()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()


def test_quitquitquit_takes_post_only_and_exits_zero(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    port, admin = free_ports(1)[0], free_ports(1)[0]
    cfg = tmp_path / "c.yaml"
    text = simple_config([1])  # the upstream is never used
    text = text.replace("port_value: 0", f"port_value: {port}", 1)
    text = text.replace("port_value: 0", f"port_value: {admin}", 1)
    cfg.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioproxy", "serve", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(admin)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/quitquitquit", timeout=5)
        assert err.value.code == 405
        err.value.close()
        assert proc.poll() is None  # a GET changes nothing
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/quitquitquit", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
