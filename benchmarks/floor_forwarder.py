#!/usr/bin/env python3
"""The floor of a trio design: the least a trio + llhttp HTTP/1.1 forwarder can do.

Not a proxy: one upstream connection per downstream connection, GET requests only, headers
copied as they came, the response relayed as soon as llhttp says it is complete, no limits,
no routing, no stats, no error handling beyond closing. It makes the same system calls per
request as trioproxy (two reads, two writes, two epoll re-arms), so the difference between
its CPU per request and trioproxy's is what trioproxy's own code costs.

    python benchmarks/floor_forwarder.py LISTEN_PORT UPSTREAM_PORT

``bench_http.py --floor`` runs it beside the proxies (row ``trio-floor``).
"""

from __future__ import annotations

import socket
import sys

import httptools
import trio


class _Message:
    """llhttp callbacks: the request line's target, the headers, and completion."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.done = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.done = True


async def _recv(sock: socket.socket, wait_first: bool) -> bytes:
    if wait_first:
        await trio.lowlevel.wait_readable(sock)
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _serve(stream: trio.SocketStream, upstream_port: int) -> None:
    down = stream.socket
    up = trio.socket.socket()
    await up.connect(("127.0.0.1", upstream_port))
    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw_up = socket.socket(fileno=up.detach())  # the plain socket: no trio wrapper per call
    raw_up.setblocking(False)
    request, response = _Message(), _Message()
    req_parser = httptools.HttpRequestParser(request)
    resp_parser = httptools.HttpResponseParser(response)
    served = 0
    try:
        while True:
            request.done, request.headers, request.url = False, [], b""
            while not request.done:
                data = await _recv(down._sock, wait_first=True)  # type: ignore[attr-defined]
                if not data:
                    return
                req_parser.feed_data(data)
            head = [b"GET ", request.url, b" HTTP/1.1\r\n"]
            for name, value in request.headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"\r\n")
            raw_up.send(b"".join(head))  # small, on loopback: taken whole
            response.done = False
            chunks = []
            while not response.done:
                data = await _recv(raw_up, wait_first=True)
                if not data:
                    return
                resp_parser.feed_data(data)
                chunks.append(data)
            down._sock.send(b"".join(chunks))  # type: ignore[attr-defined]
            served += 1
            if served % 16 == 0:  # stay fair to other connections, as trioproxy's I/O does
                await trio.lowlevel.checkpoint()
    except (OSError, httptools.HttpParserError):
        return
    finally:
        raw_up.close()


async def main(listen_port: int, upstream_port: int) -> None:
    # Every pending connection per wake-up, as trioproxy's listener (and Envoy's) accepts:
    # trio.serve_tcp takes one per scheduler round, which under load leaves connections
    # waiting in the kernel's queue and shows up as a p99 of seconds.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(1024)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                nursery.start_soon(_serve, stream, upstream_port)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
