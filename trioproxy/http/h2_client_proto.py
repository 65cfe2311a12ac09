"""The client side of an HTTP/2 connection without I/O: requests out, handler calls in.

Theory of operation
-------------------
``H2Client`` is ``h2_frames.H2Framer`` in the client's role (RFC 9113 §3.4): it queues the
connection preface and our SETTINGS (no server push, our stream window, the header list we
take) when it is made, opens streams with odd, increasing ids (``send_request``), and tells
its ``H2ClientHandler`` what the server's frames mean: a response head, DATA, trailers, a
reset (with its code: REFUSED_STREAM means the request was not processed), more send window,
the server's GOAWAY. What it sends is queued for ``data_to_send``, as the server's side does.

The response side of a stream, as RFC 9113 §8.1 orders it: any number of informational (1xx)
heads, without END_STREAM; one final head; DATA; then trailers, which must end the stream. A
content-length (ignored for a HEAD request and a 304, which carry no body; a 204 must have
none) is checked against the DATA. Anything else — DATA before the final head, a second head
that does not end the stream, a body not matching its content-length, a 101, a second
``:status``-less block — is a malformed response, and the connection error PROTOCOL_ERROR:
Envoy's default for invalid messaging from an upstream (its
``override_stream_error_on_invalid_http_message`` off) is to close the connection, and the
streams on it fail. The header fields themselves (characters, pseudo-headers,
connection-specific fields) are checked by the application (``h2_headers``), which calls
``close_connection`` on a bad one.

The server's frames this side never takes: PUSH_PROMISE (we send SETTINGS_ENABLE_PUSH 0, so
it is a connection error), HEADERS on an even or never-opened stream, SETTINGS_ENABLE_PUSH 1.
A GOAWAY closes the streams above its last stream id (the server never saw them: safe to send
again elsewhere) and no new stream opens; those below it go on (RFC 9113 §6.8).

The peer's SETTINGS_MAX_CONCURRENT_STREAMS is ``peer_max_concurrent_streams``, unlimited until
the server's first SETTINGS (as Envoy's client takes it); ``on_stream_limit`` tells when its
SETTINGS change it. Keeping within it is the caller's business (the pool counts its streams),
as is retrying a refused stream.
"""

from __future__ import annotations

from typing import Any, Final

from trioproxy.http.h2_frames import (
    CANCEL,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_STREAM,
    ENDED,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESET_BY_PEER,
    RESET_HERE,
    STREAM_CLOSED,
    Flood,
    H2ConnectionError,
    H2Framer,
    Stream,
    StreamClosed,
    StreamError,
    content_length,
)

#: The highest stream id there is (RFC 9113 §5.1.1): a connection that reached it opens no more.
MAX_STREAM_ID: Final = (1 << 31) - 1


class H2ClientHandler:
    """What the application hears from ``H2Client.receive``. Exceptions raised here leave
    ``receive`` (the rest of that input is not read)."""

    def on_informational(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        """A 1xx head; the final one is still to come."""
        raise NotImplementedError

    def on_response(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """The final response head."""
        raise NotImplementedError

    def on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        """Response DATA; ``flow`` bytes of window to give back once ``data`` is taken."""
        raise NotImplementedError

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        """The response's trailers, which end it."""
        raise NotImplementedError

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        """The stream is over unfinished: reset by the server (``remote``, with its error
        code) or by this side after a stream error."""
        raise NotImplementedError

    def on_window(self, sid: int) -> None:
        """More send window for stream ``sid``; 0: for every stream."""
        raise NotImplementedError

    def on_stream_limit(self) -> None:
        """The server's SETTINGS changed its limit of concurrent streams
        (``H2Client.peer_max_concurrent_streams``): streams waiting for room may fit now."""
        raise NotImplementedError

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        """The server sent GOAWAY: streams above ``last_stream_id`` are closed (and were
        never processed), no stream opens any more."""
        raise NotImplementedError

    def on_ping_ack(self) -> None:
        """The server acknowledged our PING (keepalive)."""


class H2Client(H2Framer):
    """One client-side HTTP/2 connection's frames and stream states."""

    def __init__(
        self,
        handler: H2ClientHandler,
        *,
        initial_window_size: int = DEFAULT_WINDOW,
        connection_window_size: int = DEFAULT_WINDOW,
        max_header_list_size: int = 65536,
        max_control_frames: int = 1000,
        max_empty_frames: int = 1,
    ) -> None:
        super().__init__(
            [
                (ENABLE_PUSH, 0),
                (INITIAL_WINDOW_SIZE, initial_window_size),
                (MAX_HEADER_LIST_SIZE, max_header_list_size),
            ],
            preface=PREFACE,
            initial_window_size=initial_window_size,
            connection_window_size=connection_window_size,
            max_header_list_size=max_header_list_size,
            max_control_frames=max_control_frames,
            max_empty_frames=max_empty_frames,
        )
        self.handler = handler
        self.next_stream_id = 1
        #: the server sent GOAWAY: no new stream
        self.goaway_received = False
        #: the server's GOAWAY's last stream id (while ``goaway_received``)
        self.last_stream_id = MAX_STREAM_ID
        self._head_requests: set[int] = set()

    # ------------------------------------------------------------------ output

    def can_open(self) -> bool:
        """A new stream may open (the caller keeps within ``peer_max_concurrent_streams``)."""
        return not self.closed and not self.goaway_received and self.next_stream_id <= MAX_STREAM_ID

    def send_request(self, block: list[Any], end_stream: bool = False, head: bool = False) -> int:
        """Open a stream with the request head ``block`` (``head``: a HEAD request, whose
        response has no body); its id. ``StreamClosed`` when no stream can open."""
        if not self.can_open():
            raise StreamClosed(self.next_stream_id)
        sid = self.next_stream_id
        self.next_stream_id = sid + 2
        self.highest_stream_id = sid
        # The server applies our SETTINGS (sent before any HEADERS) to every stream we open.
        s = Stream(sid, self.peer_initial_window, self._local_initial)
        s.head_done = False
        self.streams[sid] = s
        if head:
            self._head_requests.add(sid)
        self.send_headers(sid, block, end_stream)
        return sid

    def cancel(self, sid: int) -> bool:
        """RST_STREAM CANCEL for a stream we give up on, if it is still open; whether one was
        queued."""
        if self.closed or sid not in self.streams:
            return False
        self.reset_stream(sid, CANCEL)
        self._head_requests.discard(sid)
        return True

    def _forget(self, s: Stream, how: int) -> None:
        super()._forget(s, how)
        if self._head_requests:
            self._head_requests.discard(s.sid)

    # ------------------------------------------------------------------ the client's part

    def _local_settings_acked(self) -> None:
        # Our SETTINGS precede every HEADERS we send, so the server applied our window to
        # each stream we opened, and each began with it here (``send_request``): nothing to add.
        self._acked_initial = self._local_initial

    def _goaway_last_stream_id(self) -> int:
        return 0  # the server opens no streams (no push)

    def _malformed(self, sid: int, message: str) -> Exception:
        return self._conn_error(PROTOCOL_ERROR, f"stream {sid}: {message}")

    def _check_setting(self, ident: int, value: int) -> None:
        if ident == ENABLE_PUSH and value:
            raise self._conn_error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH from a server")
        super()._check_setting(ident, value)

    def _on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        self.handler.on_data(sid, data, flow, end_stream)

    def _on_window(self, sid: int) -> None:
        self.handler.on_window(sid)

    def _on_stream_limit(self) -> None:
        self.handler.on_stream_limit()

    def _ping_acked(self) -> None:
        self.handler.on_ping_ack()

    def _peer_goaway(self, last_stream_id: int, code: int) -> None:
        self.goaway_received = True
        self.last_stream_id = last_stream_id
        for sid in [sid for sid in self.streams if sid > last_stream_id]:
            # never processed: closed here, and whatever still comes for it is ignored
            self._forget(self.streams[sid], RESET_HERE)
        self.handler.on_goaway(last_stream_id, code)

    def _peer_reset(self, sid: int, code: int) -> None:
        self.handler.on_reset(sid, code, True)

    def _reset_here(self, sid: int, code: int) -> None:
        self.handler.on_reset(sid, code, False)

    def _header_block(self, flags: int, sid: int, block: bytes, error: int) -> None:
        end = bool(flags & END_STREAM)
        s = self.streams.get(sid)
        if s is None:
            self._decode(block)  # the tables stay in step
            if self._idle(sid):
                raise self._conn_error(PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")
            how = self._closed.get(sid)
            if how is None or how == RESET_HERE:
                return  # crossed our RST_STREAM, or closed long ago
            if how == RESET_BY_PEER:
                raise StreamError(sid, STREAM_CLOSED)
            raise self._conn_error(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        fields = self._decode(block)
        if s.remote_closed:
            raise StreamError(sid, STREAM_CLOSED)
        if error:
            raise StreamError(sid, error)
        if s.head_done:  # trailers: they end the response
            if not end:
                raise self._malformed(sid, "a header block after the head without END_STREAM")
            if s.expected >= 0 and s.received != s.expected:
                raise self._malformed(sid, "a body shorter than its content-length")
            self._remote_end(s)
            self.handler.on_trailers(sid, fields)
            return
        status = fields[0][1] if fields and fields[0][0] == b":status" else b""
        if len(status) == 3 and status[0] == 0x31:  # 1xx
            if end or status == b"101":
                raise self._malformed(sid, f"informational {status!r} ending the stream or 101")
            self.handler.on_informational(sid, fields)
            return
        s.head_done = True
        expected = content_length(fields)
        if expected == -2:
            raise self._malformed(sid, "an invalid content-length")
        if status == b"204" and expected > 0:
            raise self._malformed(sid, "a 204 with a content-length")
        if status in (b"204", b"304") or sid in self._head_requests:
            expected = 0  # no body, whatever the content-length says of the resource
        s.expected = expected
        if end:
            if expected > 0:
                raise self._malformed(sid, "no body where the content-length says one")
            self._remote_end(s)
        self.handler.on_response(sid, fields, end)

    def _remote_end(self, s: Stream) -> None:
        s.remote_closed = True
        if s.local_closed:
            self._forget(s, ENDED)


__all__ = [
    "CANCEL",
    "INTERNAL_ERROR",
    "MAX_STREAM_ID",
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "Flood",
    "H2Client",
    "H2ClientHandler",
    "H2ConnectionError",
    "StreamClosed",
]
