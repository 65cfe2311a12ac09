"""The server side of an HTTP/2 connection without I/O: frames in, handler calls and frames out.

Theory of operation
-------------------
``H2Server.receive`` takes the bytes a client sent, walks its frames (RFC 9113 §4, §6) and
tells its ``H2Handler`` what they mean for the application: a request's header block, request
DATA, trailers, a reset, more send window, the client's GOAWAY. Header blocks are decoded by
``trioproxy.http.hpack``; they are checked as HTTP messages elsewhere (``h2_headers``). What
the connection answers — SETTINGS and PING acknowledgements, WINDOW_UPDATE, RST_STREAM,
GOAWAY, and the application's HEADERS and DATA (``send_headers``, ``send_data``) — is appended
to one output buffer that ``data_to_send`` empties (``h2_writer.FrameWriter`` sends it).

Errors follow RFC 9113 §5.4:

- a *connection error* queues a GOAWAY with its code and the last stream id, stops taking
  input and raises ``H2ConnectionError`` to the caller, which closes once the GOAWAY is out;
- a *stream error* queues RST_STREAM, closes the stream and calls ``on_reset`` with
  ``remote=False``; the connection goes on;
- a flood (too many control frames to answer in one read, too many empty DATA, HEADERS or
  CONTINUATION frames in a row) raises ``Flood`` without a GOAWAY, as Envoy closes such a
  connection.

Streams count against ``max_concurrent_streams`` from their HEADERS until both sides ended them
or one reset them; a HEADERS beyond the limit is refused (RST_STREAM REFUSED_STREAM) and its
block still decoded, so the HPACK tables stay in step. Frames for streams closed a while ago
are told apart from frames for streams never opened by remembering the last
``_CLOSED_REMEMBERED`` closed streams and how each ended: frames on a stream this side reset
are ignored (they may have crossed the RST_STREAM), DATA and HEADERS on one the client reset
or ended are a stream error STREAM_CLOSED, and a new HEADERS with an id not above the highest
one seen is a connection error.

Flow control: the client's DATA counts against the connection window and its stream's;
``acknowledge_received_data`` gives the credit back once the application took the bytes, with
a WINDOW_UPDATE when half a window is owed. Our send windows follow the client's SETTINGS and
WINDOW_UPDATE frames; ``local_flow_control_window`` tells how much DATA a stream may send now.

What both roles do alike (frames, settings, flow control, stream bookkeeping) is
``h2_frames.H2Framer``'s; this module is the server's part: the preface, the request header
blocks that open streams, and what the application hears. It replaced the ``h2`` package on
the downstream side: ``h2``'s generality (both roles, events as objects, a state machine as
tables, its own header validation, logging on every HPACK integer) cost more CPU than the rest
of a proxied HTTP/2 request. tests/h2spec is the conformance check.
"""

from __future__ import annotations

from trioproxy.http.h2_frames import (
    DEFAULT_WINDOW,
    END_STREAM,
    ENDED,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESET_BY_PEER,
    RESET_HERE,
    RST_STREAM,
    STREAM_CLOSED,
    Flood,
    H2ConnectionError,
    H2Framer,
    Stream,
    StreamClosed,
    StreamError,
    content_length,
)

#: The highest stream id (RFC 9113 §5.1.1): the last stream id of the announcing GOAWAY.
MAX_STREAM_ID = 2**31 - 1


class H2Handler:
    """What the application hears from ``H2Server.receive``. Exceptions raised here leave
    ``receive`` (the rest of that input is not read)."""

    def on_request(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        raise NotImplementedError

    def on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        """Request DATA; ``flow`` bytes of window to give back once ``data`` is taken."""
        raise NotImplementedError

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        """The request's trailers, which end it."""
        raise NotImplementedError

    def on_reset(self, sid: int, remote: bool) -> None:
        """The stream is over unfinished: reset by the client (``remote``) or by this side
        after a stream error."""
        raise NotImplementedError

    def on_window(self, sid: int) -> None:
        """More send window for stream ``sid``; 0: for every stream."""
        raise NotImplementedError

    def on_goaway(self) -> None:
        """The client sent GOAWAY: it opens no more streams."""
        raise NotImplementedError

    def on_ping_ack(self) -> None:
        """The client acknowledged our PING (keepalive)."""


class H2Server(H2Framer):
    """One server-side HTTP/2 connection's frames and stream states."""

    def __init__(
        self,
        handler: H2Handler,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        connection_window_size: int = DEFAULT_WINDOW,
        max_header_list_size: int = 65536,
        max_control_frames: int = 1000,
        max_empty_frames: int = 1,
    ) -> None:
        super().__init__(
            [
                (MAX_CONCURRENT_STREAMS, max_concurrent_streams),
                (INITIAL_WINDOW_SIZE, initial_window_size),
                (MAX_HEADER_LIST_SIZE, max_header_list_size),
            ],
            preface=b"",
            initial_window_size=initial_window_size,
            connection_window_size=connection_window_size,
            max_header_list_size=max_header_list_size,
            max_control_frames=max_control_frames,
            max_empty_frames=max_empty_frames,
        )
        self.handler = handler
        self.max_concurrent_streams = max_concurrent_streams
        self._preface_left = len(PREFACE)

    # ------------------------------------------------------------------ output

    def goaway(self) -> None:
        """A graceful GOAWAY (NO_ERROR, the highest stream id seen): streams open go on."""
        self._goaway(NO_ERROR)

    def shutdown_notice(self) -> None:
        """The GOAWAY that announces a graceful close (RFC 9113 §6.8): NO_ERROR and the
        highest stream id there can be, so every stream the client opens still counts; the
        final ``goaway()`` follows."""
        self._emit(GOAWAY, 0, 0, MAX_STREAM_ID.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big"))

    def finish(self, sid: int) -> None:
        """The application is done with stream ``sid``. A response sent whole while the
        request is not over gets RST_STREAM NO_ERROR (RFC 9113 §8.1: the client stops sending
        and the stream no longer counts against ``max_concurrent_streams``), as Envoy does."""
        s = self.streams.get(sid)
        if s is not None and s.local_closed and not s.remote_closed:
            self._emit(RST_STREAM, 0, sid, NO_ERROR.to_bytes(4, "big"))
            self._forget(s, RESET_HERE)

    # ------------------------------------------------------------------ the server's part

    def _goaway_last_stream_id(self) -> int:
        return self.highest_stream_id

    def _malformed(self, sid: int, message: str) -> Exception:
        return StreamError(sid, PROTOCOL_ERROR)

    def _on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        self.handler.on_data(sid, data, flow, end_stream)

    def _on_window(self, sid: int) -> None:
        self.handler.on_window(sid)

    def _on_stream_limit(self) -> None:
        pass  # the client's limit is on streams the server opens: none (no push)

    def _peer_goaway(self, last_stream_id: int, code: int) -> None:
        self.handler.on_goaway()

    def _ping_acked(self) -> None:
        self.handler.on_ping_ack()

    def _peer_reset(self, sid: int, code: int) -> None:
        self.handler.on_reset(sid, True)

    def _reset_here(self, sid: int, code: int) -> None:
        self.handler.on_reset(sid, False)

    def _header_block(self, flags: int, sid: int, block: bytes, error: int) -> None:
        end = bool(flags & END_STREAM)
        s = self.streams.get(sid)
        if s is None:
            if not sid & 1:
                raise self._conn_error(PROTOCOL_ERROR, f"HEADERS on even stream {sid}")
            if sid <= self.highest_stream_id:
                self._decode(block)  # the tables stay in step
                how = self._closed.get(sid)
                if how == RESET_HERE:
                    return
                if how is None:
                    raise self._conn_error(PROTOCOL_ERROR, f"stream id {sid} not increasing")
                if how == RESET_BY_PEER:
                    raise StreamError(sid, STREAM_CLOSED)
                raise self._conn_error(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            self.highest_stream_id = sid
            fields = self._decode(block)
            if error:
                raise StreamError(sid, error)
            if len(self.streams) >= self.max_concurrent_streams:
                raise StreamError(sid, REFUSED_STREAM)
            s = Stream(sid, self.peer_initial_window, self._acked_initial)
            s.expected = content_length(fields)
            if s.expected == -2:
                raise StreamError(sid, PROTOCOL_ERROR)
            self.streams[sid] = s
            if end:
                s.remote_closed = True
                if s.expected > 0:
                    raise StreamError(sid, PROTOCOL_ERROR)
            self.handler.on_request(sid, fields, end)
            return
        fields = self._decode(block)
        if s.remote_closed:
            raise StreamError(sid, STREAM_CLOSED)
        if error or not end:  # (trailers end the request)
            raise StreamError(sid, error or PROTOCOL_ERROR)
        if s.expected >= 0 and s.received != s.expected:
            raise StreamError(sid, PROTOCOL_ERROR)
        s.remote_closed = True
        if s.local_closed:
            self._forget(s, ENDED)
        self.handler.on_trailers(sid, fields)


__all__ = [
    "ENHANCE_YOUR_CALM",
    "INTERNAL_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "Flood",
    "H2ConnectionError",
    "H2Handler",
    "H2Server",
    "StreamClosed",
]
