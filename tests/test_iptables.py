"""`trioproxy iptables`: the rules, line by line, and applying/removing them in a namespace."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys

import pytest

from trioproxy.iptables import Options, rules

# The seed's capture: inbound TCP to 15006 except 15008, 22, 15090, 15021, 15020; outbound
# TCP to 15001; the proxy's uid and gid 1337 and traffic to localhost left alone (the proxy's
# own calls to a local pod address on lo go inbound; 127.0.0.6 is the inbound passthrough).
DEFAULT = """\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"""  # noqa: E501


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioproxy", "iptables", *args], capture_output=True, text=True
    )


def test_dry_run_prints_the_seed_rules_line_by_line() -> None:
    proc = cli("--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    assert lines == DEFAULT.splitlines()


def test_options_change_exactly_their_rules() -> None:
    got = rules(
        Options(
            proxy_port=16001,
            inbound_capture_port=16006,
            proxy_uid="999",
            proxy_gid="998",
            inbound_exclude_ports=("22",),
            outbound_exclude_ports=("5432",),
            outbound_ports=("3306",),
            outbound_ip_ranges=("10.0.0.0/8", "fd00::/8"),
            outbound_exclude_ip_ranges=("10.9.0.0/16",),
        )
    )
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in got
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in got
    assert [r for r in got if r.startswith("-A ISTIO_INBOUND")] == [
        "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]
    out = [r for r in got if r.startswith("-A ISTIO_OUTPUT")]
    assert out[0] == "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN"
    assert "-A ISTIO_OUTPUT -m owner --uid-owner 999 -j RETURN" in out
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 998 -j RETURN" in out
    assert out[-4:] == [
        "-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -j RETURN",
    ]
    v6 = rules(Options(outbound_ip_ranges=("10.0.0.0/8", "fd00::/8")), ipv6=True)
    assert "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT" in v6
    assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in v6
    assert not any("10.0.0.0/8" in r for r in v6)


def test_inbound_include_ports_capture_only_those() -> None:
    got = rules(Options(inbound_ports=("8080", "9090", "15020")))
    assert [r for r in got if r.startswith("-A ISTIO_INBOUND")] == [
        "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT",
    ]
    assert not any("PREROUTING" in r for r in rules(Options(inbound_ports=())))


def _nat(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_apply_and_cleanup_in_a_namespace() -> None:
    if shutil.which("ip") is None or shutil.which("iptables-restore") is None:
        pytest.skip("iproute2 and iptables are needed")
    ns = f"tp-ipt-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        run = ["ip", "netns", "exec", ns, sys.executable, "-m", "trioproxy", "iptables"]
        for _ in range(2):  # applying twice replaces, never duplicates
            subprocess.run(run, check=True, capture_output=True)
        saved = _nat(ns)
        assert saved.count("-A PREROUTING -p tcp -j ISTIO_INBOUND") == 1
        assert saved.count("-A OUTPUT -j ISTIO_OUTPUT") == 1
        assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in saved
        assert "--uid-owner 1337 -j RETURN" in saved
        subprocess.run([*run, "--cleanup"], check=True, capture_output=True)
        assert "ISTIO" not in _nat(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
