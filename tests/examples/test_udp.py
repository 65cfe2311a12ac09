"""The udp demo as a user runs it: `examples/udp/run.py`, two datagrams, then /stats."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_ports, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]

# The README's list, minus what depends on uptime and DNS refreshes (update_* counts).
EXPECTED = """\
cluster.service_udp.default.total_match_count: 1
cluster.service_udp.max_host_weight: 1
cluster.service_udp.membership_change: 1
cluster.service_udp.membership_healthy: 1
cluster.service_udp.membership_total: 1
cluster.service_udp.udp.sess_tx_datagrams: 2
cluster.service_udp.upstream_cx_tx_bytes_total: 8
udp.service.downstream_sess_active: 2
udp.service.downstream_sess_rx_bytes: 8
udp.service.downstream_sess_rx_datagrams: 2
udp.service.downstream_sess_total: 2
cluster.service_udp.upstream_cx_connect_ms: No recorded values
cluster.service_udp.upstream_cx_length_ms: No recorded values
""".splitlines()


def test_two_datagrams_reach_the_service_and_show_in_stats() -> None:
    listen, admin = free_ports(2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    service = udp.getsockname()[1]
    udp.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "udp" / "run.py"),
            "--listen-port",
            str(listen),
            "--admin-port",
            str(admin),
            "--service-port",
            str(service),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(admin, 30)
        # `echo -n HELO | nc -4u -w1 127.0.0.1 10000`, twice. Both sockets stay open until
        # both have sent: a closed socket's port can be the next one's, and one address is
        # one session.
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c1,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c2,
        ):
            c1.sendto(b"HELO", ("127.0.0.1", listen))
            c2.sendto(b"OLEH", ("127.0.0.1", listen))
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
                stats = r.read().decode()
            lines = [ln for ln in stats.splitlines() if "udp" in ln and ": 0" not in ln]
            if (
                "cluster.service_udp.udp.sess_tx_datagrams: 2" in lines
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.05)
        for want in EXPECTED:
            assert want in lines, (want, lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    # the service printed each payload on its own line
    assert sorted(out.splitlines()) == ["HELO", "OLEH"], (out, err)
    assert proc.returncode == 0, err
