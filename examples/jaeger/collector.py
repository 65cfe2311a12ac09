"""A Zipkin-compatible collector stand-in: stores the spans proxies report, serves them back
through Zipkin's v2 query API and prints each trace as a tree.

    python examples/jaeger/collector.py [--host 127.0.0.1] [--port 9411]
    curl -s localhost:9411/api/v2/traces          # every trace, Zipkin v2 JSON
    curl -s localhost:9411/trees                  # every trace as an indented tree

Intake: ``POST /api/v2/spans`` with a JSON list of Zipkin v2 spans (``Content-Type:
application/json``), answered ``202`` as Zipkin does. Query: ``GET /api/v2/services``,
``/api/v2/spans?serviceName=``, ``/api/v2/traces``, ``/api/v2/trace/{traceId}``. Standard
library only, so the example runs anywhere the proxy does.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Span = dict[str, Any]


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traces: dict[str, list[Span]] = defaultdict(list)

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            for span in spans:
                self._traces[str(span.get("traceId", ""))].append(span)

    def traces(self) -> list[list[Span]]:
        with self._lock:
            return [sorted(t, key=lambda s: s.get("timestamp", 0)) for t in self._traces.values()]

    def trace(self, trace_id: str) -> list[Span] | None:
        with self._lock:
            spans = self._traces.get(trace_id)
            return list(spans) if spans is not None else None


def tree(spans: list[Span]) -> str:
    """One trace, children indented under their parents, in time order."""
    by_parent: dict[str | None, list[Span]] = defaultdict(list)
    ids = {s.get("id") for s in spans}
    for s in spans:
        parent = s.get("parentId")
        by_parent[parent if parent in ids else None].append(s)
    lines = [f"trace {spans[0].get('traceId')} ({len(spans)} spans)"]

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.get("timestamp", 0)):
            service = (s.get("localEndpoint") or {}).get("serviceName", "?")
            lines.append(
                f"{'  ' * depth}- {service}: {s.get('name')} [{s.get('kind', '?')}]"
                f" {s.get('duration', 0) / 1000:.1f} ms"
                f" status={(s.get('tags') or {}).get('http.status_code', '-')}"
            )
            if s.get("id") != parent:
                walk(s.get("id"), depth + 1)

    walk(None, 1)
    return "\n".join(lines)


def make_handler(store: Store, quiet: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def do_POST(self) -> None:
            body = self._body()
            if urlsplit(self.path).path != "/api/v2/spans":
                self._send(404, b"")
                return
            try:
                spans = json.loads(body)
                assert isinstance(spans, list)
            except (ValueError, AssertionError):
                self._send(400, b"expected a JSON list of spans", "text/plain")
                return
            store.add(spans)
            if not quiet:
                print(f"collector: {len(spans)} span(s)", file=sys.stderr, flush=True)
            self._send(202, b"")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            traces = store.traces()
            if url.path == "/api/v2/services":
                names = {
                    (s.get("localEndpoint") or {}).get("serviceName") for t in traces for s in t
                }
                self._send(200, json.dumps(sorted(n for n in names if n)).encode())
            elif url.path == "/api/v2/traces":
                service = query.get("serviceName", [None])[0]
                if service:
                    traces = [
                        t
                        for t in traces
                        if any(
                            (s.get("localEndpoint") or {}).get("serviceName") == service for s in t
                        )
                    ]
                self._send(200, json.dumps(traces).encode())
            elif url.path.startswith("/api/v2/trace/"):
                found = store.trace(url.path.rsplit("/", 1)[1])
                if found is None:
                    self._send(404, b"")
                else:
                    self._send(200, json.dumps(found).encode())
            elif url.path == "/trees":
                text = "\n\n".join(tree(t) for t in traces) + "\n"
                self._send(200, text.encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve(host: str, port: int, quiet: bool = True) -> tuple[ThreadingHTTPServer, Store]:
    """Run a collector in a background thread (tests); ``server.shutdown()`` stops it."""
    store = Store()
    server = ThreadingHTTPServer((host, port), make_handler(store, quiet))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9411)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Store(), args.quiet))
    print(f"zipkin collector on http://{args.host}:{args.port}/api/v2/spans", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
