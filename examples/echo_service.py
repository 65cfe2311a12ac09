"""An echo service like the Envoy sandboxes': who served the request, then the request.

python examples/echo_service.py service1 8081

Answers any request with ``200 text/plain``: ``Request served by <name>``, a blank line, the
request line, a blank line and the request headers one per line.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            headers = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
            body = (
                f"Request served by {name}\n\n{self.request_version} {self.command} "
                f"{self.path}\n\n{headers}"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve_in_thread(name: str, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(name))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer(("127.0.0.1", port), make_handler(name)).serve_forever()
