"""A stand-in for Tetrate's color-app: answers every GET with a page in its colour.

python examples/colour_service.py blue 3001
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html>
<html><head><title>{colour}</title></head>
<body style="background-color:{colour}"><h1>Hello from the {colour} service</h1>
<p>path: {path}</p></body></html>
"""


def make_handler(colour: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"color-app-{colour}"

        def do_GET(self) -> None:
            body = PAGE.format(colour=colour, path=self.path).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve_in_thread(colour: str, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(colour))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    colour, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer(("127.0.0.1", port), make_handler(colour)).serve_forever()
