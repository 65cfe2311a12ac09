"""Small network facts about this host, and how Envoy writes an address."""

from __future__ import annotations

import fcntl
import functools
import socket
import struct

SIOCGIFADDR = 0x8915


@functools.cache
def local_ipv4() -> str:
    """The first non-loopback IPv4 address of this host's interfaces, else 127.0.0.1:
    what Envoy reports as its own address (``Network::Utility::getLocalAddress``), e.g. in a
    Zipkin span's ``localEndpoint``."""
    try:
        interfaces = socket.if_nameindex()
    except OSError:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in interfaces:
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(
                    s.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode())
                )
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                return address
    return "127.0.0.1"


def address_string(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``host:port`` as Envoy writes it (``Address::asString``): an IPv6 host in brackets,
    ``[::1]:8080``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
