"""One gRPC bidirectional stream over HTTP/2 (``h2``) on trio: what an xDS client needs.

Theory of operation
-------------------
``open_stream`` connects to a host of a static cluster (the cluster's load balancer picks it),
sends the HTTP/2 preface with a large receive window (big meshes send many MiB), and opens one
stream: ``POST <method>`` with ``content-type: application/grpc`` and ``te: trailers``. A reader
task feeds the socket to ``h2`` and turns events into messages (a 1-byte compressed flag and a
4-byte big-endian length before each), returning flow-control credit as each message is taken
by the caller — so a slow consumer pushes back on the control plane instead of buffering
without bound. Trailers end the stream: ``grpc-status`` 0 reads as the end of messages, any
other status (or RST_STREAM, or GOAWAY) raises ``GrpcError``. A PING goes out every
``KEEPALIVE`` seconds (istiod's minimum is 15 s); no answer within ``KEEPALIVE_TIMEOUT`` closes
the connection. The caller reconnects.
"""

from __future__ import annotations

import struct
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from trioproxy.upstream.connect import set_keepalive
from trioproxy.upstream.tls import cluster_tls

if TYPE_CHECKING:
    from trioproxy.upstream.cluster_manager import ClusterManager

KEEPALIVE = 30.0
KEEPALIVE_TIMEOUT = 10.0
WINDOW = 16 * 1024 * 1024
MAX_MESSAGE = 256 * 1024 * 1024


class GrpcError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"gRPC status {status}: {message}" if message else f"gRPC status {status}")
        self.status = status
        self.message = message


class GrpcStream:
    """The caller's side of one open stream (``MessageStream`` in ``grpc_mux``)."""

    def __init__(self, sock: trio.abc.Stream, conn: h2.connection.H2Connection, sid: int) -> None:
        self._sock = sock
        self._conn = conn
        self._sid = sid
        self._buffer = bytearray()
        self._unacked = 0  # received bytes not yet given back as window credit
        self._ended = False
        self._error: BaseException | None = None
        self._readable = trio.Event()
        self._window = trio.Event()
        self._send_lock = trio.Lock()
        self._pong = trio.Event()

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            await self._sock.send_all(data)

    # ------------------------------------------------------------------ caller API

    async def send_message(self, data: bytes) -> None:
        frame = b"\0" + struct.pack(">I", len(data)) + data
        async with self._send_lock:
            view = memoryview(frame)
            while view:
                if self._error is not None:
                    raise self._error
                window = self._conn.local_flow_control_window(self._sid)
                if window <= 0:
                    self._window = trio.Event()
                    await self._window.wait()
                    continue
                size = min(window, self._conn.max_outbound_frame_size, len(view))
                self._conn.send_data(self._sid, bytes(view[:size]))
                view = view[size:]
                await self._flush()

    async def receive_message(self) -> bytes | None:
        while True:
            if len(self._buffer) >= 5:
                flag = self._buffer[0]
                (length,) = struct.unpack(">I", self._buffer[1:5])
                if flag:
                    raise GrpcError(12, "compressed messages are not supported")
                if length > MAX_MESSAGE:
                    raise GrpcError(8, f"message of {length} bytes is too large")
                if len(self._buffer) >= 5 + length:
                    msg = bytes(self._buffer[5 : 5 + length])
                    del self._buffer[: 5 + length]
                    await self._credit(5 + length)
                    return msg
            if self._error is not None:
                raise self._error
            if self._ended:
                if self._buffer:
                    raise GrpcError(13, "stream ended inside a message")
                return None
            self._readable = trio.Event()
            await self._readable.wait()

    async def _credit(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= WINDOW // 4:
            n, self._unacked = self._unacked, 0
            try:
                self._conn.acknowledge_received_data(n, self._sid)
            except h2.exceptions.StreamClosedError:
                return
            async with self._send_lock:
                await self._flush()

    # ------------------------------------------------------------------ reader side

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._ended:
            self._error = exc
        self._readable.set()
        self._window.set()

    async def _read(self) -> None:
        try:
            while True:
                data = await self._sock.receive_some(65536)
                if not data:
                    self._fail(GrpcError(14, "connection closed by the server"))
                    return
                try:
                    events = self._conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._fail(GrpcError(13, f"HTTP/2 protocol error: {exc}"))
                    return
                for event in events:
                    self._on_event(event)
                async with self._send_lock:
                    await self._flush()
                if self._error is not None or self._ended:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(GrpcError(14, f"connection lost: {exc}"))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers)
            status = headers.get(b":status", b"")
            if status != b"200":
                self._fail(GrpcError(14, f"HTTP status {status.decode()}"))
            elif b"grpc-status" in headers:  # trailers-only response
                self._trailers(headers)
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id == self._sid:
                self._buffer += event.data
                self._readable.set()
                # flow-controlled bytes beyond the data itself (padding) are given back now
                pad = event.flow_controlled_length - len(event.data)
                if pad:
                    self._conn.acknowledge_received_data(pad, self._sid)
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers(dict(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            if self._error is None and not self._ended:
                self._fail(GrpcError(13, "stream ended without grpc-status"))
        elif isinstance(event, h2.events.StreamReset):
            self._fail(GrpcError(14, f"stream reset by the server (code {event.error_code})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(GrpcError(14, f"GOAWAY from the server (code {event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
        elif isinstance(event, h2.events.PingAckReceived):
            self._pong.set()

    def _trailers(self, headers: dict[bytes, bytes]) -> None:
        status = int(headers.get(b"grpc-status", b"2") or 2)
        message = urllib.parse.unquote(headers.get(b"grpc-message", b"").decode("latin-1"))
        if status == 0:
            self._ended = True
            self._readable.set()
        else:
            self._fail(GrpcError(status, message))

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE)
            self._pong = trio.Event()
            async with self._send_lock:
                self._conn.ping(b"trioxds\0")
                await self._flush()
            with trio.move_on_after(KEEPALIVE_TIMEOUT) as scope:
                await self._pong.wait()
            if scope.cancelled_caught:
                self._fail(GrpcError(14, "keepalive ping was not answered"))
                return


@asynccontextmanager
async def open_stream(
    cluster_manager: ClusterManager, cluster_name: str, method: str
) -> AsyncIterator[GrpcStream]:
    """Open a gRPC stream to ``method`` on a host of ``cluster_name``."""
    cluster = cluster_manager.get(cluster_name)
    if cluster is None:
        raise GrpcError(14, f"unknown cluster {cluster_name}")
    host = cluster.choose_host()
    if host is None:
        raise GrpcError(14, f"no healthy host in cluster {cluster_name}")
    tls = cluster_tls(cluster.config.transport_socket)
    with trio.fail_after(cluster.config.connect_timeout):
        plain = await trio.open_tcp_stream(*host.address)
    if cluster.config.tcp_keepalive is not None:
        set_keepalive(plain.socket, cluster.config.tcp_keepalive)
    sock: trio.abc.Stream = plain
    if tls is not None:
        sock = trio.SSLStream(
            sock, tls.context, server_hostname=tls.sni or None, https_compatible=False
        )
    async with sock:  # closed on every path, a failed handshake included
        if isinstance(sock, trio.SSLStream):
            with trio.fail_after(cluster.config.connect_timeout):
                await sock.do_handshake()
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(WINDOW)
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"https" if tls is not None else b"http"),
                (b":path", method.encode()),
                (b":authority", cluster_name.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"trioproxy-xds"),
            ],
        )
        stream = GrpcStream(sock, conn, sid)
        await stream._flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream._read)
            nursery.start_soon(stream._keepalive)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()
