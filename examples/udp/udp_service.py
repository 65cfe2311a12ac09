"""The demo's ``service-udp``: prints each datagram's payload on its own line, never replies.

python examples/udp/udp_service.py [--port 5005]
"""

from __future__ import annotations

import argparse
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="::", help="default: every IPv4 and IPv6 address")
    parser.add_argument("--port", type=int, default=5005)
    args = parser.parse_args()
    # `localhost` may resolve to ::1 (Envoy's AUTO family prefers IPv6) or 127.0.0.1:
    # a dual-stack socket answers both.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((args.host, args.port))
    print(f"service-udp listening on udp {args.host}:{args.port}", file=sys.stderr, flush=True)
    while True:
        data, _ = sock.recvfrom(65535)
        print(data.decode("utf-8", "replace"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
