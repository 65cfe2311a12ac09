"""The processes of a test "pod", run inside its network namespace by tests/sidecar.

    python pod.py serve --tcp 9000 --http 8080 --tcp6 9600   # the application
    python pod.py tcp HOST PORT                  # send stdin, half-close, print the answer
    python pod.py http URL                       # GET, print the JSON body
    python pod.py get URL                        # print any body (admin endpoints)
    python pod.py wait HOST PORT                 # until something accepts there

The application answers a TCP connection with one JSON line — the addresses it saw and the
SHA-256 of every byte it read up to the client's FIN — then the bytes themselves; an HTTP GET
with the request's headers and the addresses it saw. Standard library only.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.request


def _addr(sockaddr: tuple[str, int]) -> str:
    host = sockaddr[0]
    return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"


class _Tcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class TcpApp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while chunk := self.request.recv(65536):
            data += chunk
        seen = {
            "local": _addr(self.request.getsockname()),
            "peer": _addr(self.request.getpeername()),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self.request.sendall(json.dumps(seen).encode() + b"\n" + data)


class HttpApp(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "local": _addr(self.connection.getsockname()),
                "peer": _addr(self.connection.getpeername()),
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Tcp6(_Tcp):
    address_family = socket.AF_INET6


def serve(tcp_port: int, http_port: int, tcp6_port: int) -> None:
    tcp = _Tcp(("0.0.0.0", tcp_port), TcpApp)
    tcp6 = _Tcp6(("::", tcp6_port), TcpApp)
    web = http.server.ThreadingHTTPServer(("0.0.0.0", http_port), HttpApp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    threading.Thread(target=tcp6.serve_forever, daemon=True).start()
    print("ready", flush=True)
    web.serve_forever()


def tcp_client(host: str, port: int) -> None:
    data = sys.stdin.buffer.read()
    with socket.create_connection((host.strip("[]"), port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    sys.stdout.buffer.write(out)


def get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as r:
        sys.stdout.buffer.write(r.read())


def wait(host: str, port: int) -> None:
    end = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "serve":
        serve(
            int(argv[argv.index("--tcp") + 1]),
            int(argv[argv.index("--http") + 1]),
            int(argv[argv.index("--tcp6") + 1]),
        )
    elif cmd == "tcp":
        tcp_client(argv[1], int(argv[2]))
    elif cmd in ("http", "get"):
        get(argv[1])
    elif cmd == "wait":
        wait(argv[1], int(argv[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
