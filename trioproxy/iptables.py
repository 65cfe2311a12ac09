"""``trioproxy iptables``: the sidecar's traffic capture, Istio's ``istio-iptables`` equivalent.

``rules(options)`` is pure: it returns the ``nat`` table as ``iptables-restore`` input. Inbound
TCP (PREROUTING → ``ISTIO_INBOUND``) goes to the inbound capture port (15006) through
``ISTIO_IN_REDIRECT``, except the excluded ports; outbound TCP from local processes (OUTPUT →
``ISTIO_OUTPUT``) goes to the proxy port (15001) through ``ISTIO_REDIRECT``, except traffic of the
proxy's own uid/gid (1337), traffic to localhost and excluded ports or CIDRs. The proxy's own
connections to a local address on ``lo`` other than 127.0.0.1 are sent to the inbound port —
that is how one pod's app reaches itself through the sidecar — and the inbound passthrough
source 127.0.0.6 is left alone.

``apply`` feeds the rules to ``iptables-restore --noflush`` after removing any earlier capture
(one transaction, so a pod is never half-captured); ``cleanup`` removes them; ``--dry-run``
prints instead of applying.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence

import attrs

CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")
DEFAULT_INBOUND_EXCLUDE = ("15008", "22", "15090", "15021", "15020")


@attrs.frozen
class Options:
    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    proxy_uid: str = "1337"
    proxy_gid: str = "1337"
    inbound_ports: tuple[str, ...] = ("*",)  # "*": every port but the excluded ones
    inbound_exclude_ports: tuple[str, ...] = DEFAULT_INBOUND_EXCLUDE
    outbound_ports: tuple[str, ...] = ()  # extra ports always redirected
    outbound_exclude_ports: tuple[str, ...] = ()
    outbound_ip_ranges: tuple[str, ...] = ("*",)  # "*": every destination
    outbound_exclude_ip_ranges: tuple[str, ...] = ()
    ipv6: bool = False


def _loopback(ipv6: bool) -> tuple[str, str]:
    """(localhost, the inbound passthrough source)."""
    return ("::1/128", "::6/128") if ipv6 else ("127.0.0.1/32", "127.0.0.6/32")


def rules(o: Options, *, ipv6: bool = False) -> list[str]:
    """The ``nat`` table as ``iptables-restore`` lines."""
    localhost, passthrough = _loopback(ipv6)
    out = ["* nat", *(f"-N {c}" for c in CHAINS)]
    out.append(f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {o.proxy_port}")
    out.append(f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {o.inbound_capture_port}")
    # inbound
    if o.inbound_ports:
        out.append("-A PREROUTING -p tcp -j ISTIO_INBOUND")
        if "*" in o.inbound_ports:
            out += [
                f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in o.inbound_exclude_ports
            ]
            out.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        else:
            out += [
                f"-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"
                for p in o.inbound_ports
                if p not in o.inbound_exclude_ports
            ]
    # outbound
    out.append("-A OUTPUT -j ISTIO_OUTPUT")
    out += [f"-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN" for p in o.outbound_exclude_ports]
    out.append(f"-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN")
    for flag, owner in (("--uid-owner", o.proxy_uid), ("--gid-owner", o.proxy_gid)):
        for who in owner.split(","):
            out.append(
                f"-A ISTIO_OUTPUT -o lo ! -d {localhost} -p tcp ! --dport 15008 -m owner"
                f" {flag} {who} -j ISTIO_IN_REDIRECT"
            )
            out.append(f"-A ISTIO_OUTPUT -o lo -m owner ! {flag} {who} -j RETURN")
            out.append(f"-A ISTIO_OUTPUT -m owner {flag} {who} -j RETURN")
    out.append(f"-A ISTIO_OUTPUT -d {localhost} -j RETURN")
    out += [f"-A ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT" for p in o.outbound_ports]
    family = [r for r in o.outbound_exclude_ip_ranges if (":" in r) == ipv6]
    out += [f"-A ISTIO_OUTPUT -d {cidr} -j RETURN" for cidr in family]
    if "*" in o.outbound_ip_ranges:
        out.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    else:
        include = [r for r in o.outbound_ip_ranges if (":" in r) == ipv6]
        out += [f"-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT" for cidr in include]
        out.append("-A ISTIO_OUTPUT -j RETURN")
    out.append("COMMIT")
    return out


def cleanup_commands(*, ipv6: bool = False) -> list[list[str]]:
    """Commands that remove a previous capture; each may fail harmlessly (nothing to remove)."""
    tool = "ip6tables" if ipv6 else "iptables"
    cmds = [
        [tool, "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"],
        [tool, "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    ]
    cmds += [[tool, "-t", "nat", "-F", c] for c in CHAINS]
    cmds += [[tool, "-t", "nat", "-X", c] for c in CHAINS]
    return cmds


def _run(cmd: Sequence[str], *, stdin: str | None = None, check: bool) -> bool:
    proc = subprocess.run(cmd, input=stdin, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.returncode == 0


def cleanup(*, ipv6: bool = False) -> None:
    for cmd in cleanup_commands(ipv6=ipv6):
        # a jump may have been added twice: delete until it is gone
        while _run(cmd, check=False) and cmd[3] == "-D":
            pass


def apply(o: Options, *, ipv6: bool = False) -> None:
    tool = "ip6tables-restore" if ipv6 else "iptables-restore"
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} not found: install iptables (Debian: apt-get install iptables)")
    cleanup(ipv6=ipv6)
    _run([tool, "--noflush"], stdin="\n".join(rules(o, ipv6=ipv6)) + "\n", check=True)


def _list(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Options()
    add = parser.add_argument
    add("-p", "--proxy-port", type=int, default=d.proxy_port, help="outbound capture port")
    add("-z", "--inbound-capture-port", type=int, default=d.inbound_capture_port)
    add("-u", "--proxy-uid", default=d.proxy_uid, help="the proxy's uid(s), comma-separated")
    add("-g", "--proxy-gid", default=d.proxy_gid, help="the proxy's gid(s), comma-separated")
    add("-b", "--inbound-ports", default="*", help="ports to capture inbound ('*': all, '': none)")
    add(
        "-d",
        "--inbound-exclude-ports",
        default=",".join(DEFAULT_INBOUND_EXCLUDE),
        help="inbound ports left alone",
    )
    add("-q", "--outbound-ports", default="", help="outbound ports always captured")
    add("-o", "--outbound-exclude-ports", default="", help="outbound ports left alone")
    add("-i", "--outbound-ip-ranges", default="*", help="CIDRs to capture outbound ('*': all)")
    add("-x", "--outbound-exclude-ip-ranges", default="", help="CIDRs left alone")
    add("--ipv6", action="store_true", help="also capture IPv6 (ip6tables)")
    add("--dry-run", action="store_true", help="print the rules instead of applying them")
    add("--cleanup", action="store_true", help="remove the capture instead of installing it")


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        proxy_port=args.proxy_port,
        inbound_capture_port=args.inbound_capture_port,
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        inbound_ports=_list(args.inbound_ports),
        inbound_exclude_ports=_list(args.inbound_exclude_ports),
        outbound_ports=_list(args.outbound_ports),
        outbound_exclude_ports=_list(args.outbound_exclude_ports),
        outbound_ip_ranges=_list(args.outbound_ip_ranges),
        outbound_exclude_ip_ranges=_list(args.outbound_exclude_ip_ranges),
        ipv6=args.ipv6,
    )


def main(args: argparse.Namespace) -> int:
    o = options_from(args)
    families = [False, True] if o.ipv6 else [False]
    if args.dry_run:
        for ipv6 in families:
            if args.cleanup:
                for cmd in cleanup_commands(ipv6=ipv6):
                    print(" ".join(cmd))
            else:
                print(f"# {'ip6tables' if ipv6 else 'iptables'}-restore --noflush")
                print("\n".join(rules(o, ipv6=ipv6)))
        return 0
    for ipv6 in families:
        if args.cleanup:
            cleanup(ipv6=ipv6)
        else:
            apply(o, ipv6=ipv6)
    print("iptables: capture " + ("removed" if args.cleanup else "installed"), file=sys.stderr)
    return 0
