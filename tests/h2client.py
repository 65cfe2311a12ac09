"""A small HTTP/2 client for tests (``h2`` over trio), independent of the proxy's codec.

One connection, requests one after another or concurrently; ``closed`` turns true after the
server's GOAWAY, and the caller opens a new connection for further requests. h2 as a client
treats any GOAWAY as the end of everything, so GOAWAY frames are taken out of the byte stream
here and handled as RFC 9113 §6.8 says: streams up to ``last_stream_id`` still complete.
"""

from __future__ import annotations

import ssl

import h2.config
import h2.connection
import h2.events
import trio


class H2Error(Exception):
    pass


class H2Client:
    def __init__(self, stream: trio.abc.Stream, authority: str) -> None:
        self.stream = stream
        self.authority = authority
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.closed = False
        self._lock = trio.Lock()
        self._responses: dict[int, dict[str, object]] = {}
        self._events: dict[int, trio.Event] = {}
        self._window = trio.Event()
        self._buf = b""
        #: the trailers of the last response ``request`` returned, if it had any
        self.trailers: dict[str, str] | None = None

    @classmethod
    async def connect(
        cls, port: int, *, tls: ssl.SSLContext | None = None, server_hostname: str = "localhost"
    ) -> H2Client:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls is not None:
            ssl_stream = trio.SSLStream(stream, tls, server_hostname=server_hostname)
            await ssl_stream.do_handshake()
            stream = ssl_stream
        client = cls(stream, f"{server_hostname}:{port}")
        client.conn.initiate_connection()
        await client._flush()
        return client

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            async with self._lock:
                await self.stream.send_all(data)

    async def reader(self) -> None:
        """Run in a nursery while requests are made."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(self._without_goaway(data)):
                    self._on(ev)
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed = True
        for event in self._events.values():
            event.set()

    def _without_goaway(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                break
            frame, self._buf = self._buf[: 9 + length], self._buf[9 + length :]
            if frame[3] == 0x7:  # GOAWAY
                last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                self._goaway(last)
            else:
                out += frame
        return out

    def _goaway(self, last: int) -> None:
        self.closed = True
        for sid, event in self._events.items():
            if sid > last:  # never processed: the caller may retry it elsewhere
                self._responses[sid]["refused"] = True
                event.set()

    def _on(self, ev: object) -> None:
        sid = getattr(ev, "stream_id", 0)
        if sid and sid not in self._responses:
            return  # already given up on (refused by GOAWAY)
        if isinstance(ev, h2.events.ResponseReceived):
            self._responses[ev.stream_id]["headers"] = dict(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            r = self._responses[ev.stream_id]
            r["body"] = bytes(r.get("body", b"")) + ev.data  # type: ignore[arg-type]
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self._responses[ev.stream_id]["trailers"] = dict(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self._events[ev.stream_id].set()
        elif isinstance(ev, h2.events.StreamReset):
            self._responses[ev.stream_id]["reset"] = ev.error_code
            self._events[ev.stream_id].set()
        elif isinstance(ev, h2.events.WindowUpdated):
            self._window.set()
            self._window = trio.Event()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._goaway(ev.last_stream_id or 0)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> tuple[int, dict[str, str], bytes]:
        if self.closed:
            raise H2Error("connection closed (GOAWAY)")
        sid = self.conn.get_next_available_stream_id()
        self._responses[sid] = {}
        self._events[sid] = trio.Event()
        hdrs = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", self.authority),
            *headers,
        ]
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        await self._flush()
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if self.closed or self._events[sid].is_set():
                    break
                await self._window.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(sid, bytes(chunk), end_stream=not view)
            await self._flush()
        await self._events[sid].wait()
        r = self._responses.pop(sid)
        self.trailers = r.get("trailers")  # type: ignore[assignment]
        if r.get("refused"):
            raise H2Error("refused by GOAWAY")
        if "reset" in r:
            raise H2Error(f"stream reset {r['reset']}")
        if "headers" not in r:
            raise H2Error("connection closed before the response")
        h = r["headers"]
        assert isinstance(h, dict)
        return int(h[":status"]), h, bytes(r.get("body", b""))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.stream.aclose()
