"""The demo's app service: ``/service/<n>`` answers; ``/trace/<n>`` on service 1 first calls
service 2 through its sidecar's egress listener, copying the trace headers.

    python examples/jaeger/service.py --name 1 --port 8080 --egress http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRACE_HEADERS = (
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "b3",
    "traceparent",
    "tracestate",
    "uber-trace-id",
    "sw8",
)


def make_handler(name: str, egress: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) != 2 or parts[0] not in ("service", "trace"):
                self._send(404, b"not found\n")
                return
            if parts[0] == "trace" and name == "1" and egress:
                req = urllib.request.Request(f"{egress}/trace/2")
                for h in TRACE_HEADERS:
                    value = self.headers.get(h)
                    if value is not None:
                        req.add_header(h, value)
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        r.read()
                except OSError as exc:
                    self._send(502, f"calling service 2 failed: {exc}\n".encode())
                    return
            self._send(200, f"Hello from behind Envoy (service {name})!\n".encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--egress", default="", help="service 1's sidecar egress listener URL")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.name, args.egress))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
