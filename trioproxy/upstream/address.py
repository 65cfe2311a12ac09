"""Parsing ``host:port`` strings the way Envoy's ``Utility::parseInternetAddressAndPort`` does:
an IPv4 address or a bracketed IPv6 address, then a port; anything else is ``None``."""

from __future__ import annotations

import ipaddress


def parse_host_port(value: str) -> tuple[str, int] | None:
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]:")
        if not sep:
            return None
    else:
        host, sep, rest = value.rpartition(":")
        if not sep or ":" in host:
            return None
    if not rest.isdigit() or len(rest) > 5 or int(rest) > 65535:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if value.startswith("[") != (ip.version == 6):
        return None
    return str(ip), int(rest)
