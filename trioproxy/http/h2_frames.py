"""What both ends of an HTTP/2 connection do alike, without I/O: frames in and out, settings,
flow control, stream bookkeeping. ``h2_server.H2Server`` (downstream) and
``h2_client_proto.H2Client`` (upstream) are its two roles.

Theory of operation
-------------------
``receive`` takes the bytes the peer sent and walks its frames (RFC 9113 §4, §6). The frames
whose meaning does not depend on the role are handled here: SETTINGS (acknowledged, the peer's
window, frame size, table size and stream limit applied), PING (answered), WINDOW_UPDATE,
RST_STREAM, PRIORITY, DATA (flow control, content-length), padding, CONTINUATION (a header
block is gathered, then decoded by ``trioproxy.http.hpack``). A whole header block, a GOAWAY
and resets go to the role's methods (``_header_block``, ``_peer_goaway``, ``_peer_reset``,
``_reset_here``), which tell the application. What the connection sends — acknowledgements,
WINDOW_UPDATE, RST_STREAM, GOAWAY, and the application's HEADERS and DATA (``send_headers``,
``send_data``) — is appended to one output buffer that ``data_to_send`` empties
(``h2_writer.FrameWriter`` sends it).

Errors follow RFC 9113 §5.4:

- a *connection error* queues a GOAWAY with its code, stops taking input and raises
  ``H2ConnectionError`` to the caller, which closes once the GOAWAY is out;
- a *stream error* queues RST_STREAM, closes the stream and tells the role (``_reset_here``);
  the connection goes on. A malformed message (``_malformed``) is one for the server, and a
  connection error for the client (Envoy's default for invalid messaging upstream);
- a flood (too many control frames to answer in one read, too many empty frames in a row)
  raises ``Flood`` without a GOAWAY, as Envoy closes such a connection.

Empty frames are counted as Envoy's ``max_consecutive_inbound_frames_with_empty_payload``
does: a DATA frame with no data after its padding, a HEADERS frame with no payload at all
(padding and priority fields are payload here) and a CONTINUATION frame with no payload, each
without END_STREAM (which CONTINUATION never carries), add one; any such frame with something
in it, or with END_STREAM, starts the count again; other frames leave it alone.

Streams count from their HEADERS until both sides ended them or one reset them. Frames for
streams closed a while ago are told apart from frames for streams never opened by remembering
the last ``_CLOSED_REMEMBERED`` closed streams and how each ended: frames on a stream this side
reset are ignored (they may have crossed the RST_STREAM), DATA on one the peer reset or ended
is a stream error STREAM_CLOSED. A stream id above ``highest_stream_id`` (the highest one
opened, by whichever side opens them: only odd ids, as push is never used) is idle.

Flow control: the peer's DATA counts against the connection window and its stream's;
``acknowledge_received_data`` gives the credit back once the application took the bytes, with
a WINDOW_UPDATE when half a window is owed. Our send windows follow the peer's SETTINGS and
WINDOW_UPDATE frames; ``local_flow_control_window`` tells how much DATA a stream may send now.
"""

from __future__ import annotations

from typing import Any, Final

from trioproxy.http.hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# error codes (RFC 9113 §7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# settings
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_MAX_FRAME_SIZE: Final = 16384
#: The largest HPACK table we keep for what we send, whatever the peer allows.
MAX_ENCODER_TABLE: Final = 4096

# how a remembered stream closed
RESET_HERE: Final = 1
RESET_BY_PEER: Final = 2
ENDED: Final = 3
_CLOSED_REMEMBERED: Final = 1000


class H2ConnectionError(Exception):
    """A connection error (RFC 9113 §5.4.1): the GOAWAY with ``code`` is queued."""

    def __init__(self, code: int, message: str, stat: str = "") -> None:
        super().__init__(message)
        self.code = code
        #: the ``http2.*`` counter it goes to besides ``rx_messaging_error``, if any
        self.stat = stat


class Flood(Exception):
    """The peer crossed a flood limit: close without a GOAWAY. ``stat`` is the ``http2.*``
    counter it goes to."""

    def __init__(self, stat: str) -> None:
        super().__init__(stat)
        self.stat = stat


class StreamClosed(Exception):
    """A send on a stream that is over (reset, or already ended by this side)."""


class StreamError(Exception):
    """Raised inside ``receive`` for a stream error: RST_STREAM with ``code``."""

    def __init__(self, sid: int, code: int) -> None:
        self.sid = sid
        self.code = code


class Stream:
    def __init__(self, sid: int, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = recv_window
        self.owed = 0  # received bytes taken by the application, not yet given back
        self.remote_closed = False
        self.local_closed = False
        self.expected = -1  # content-length, when the message has one
        self.received = 0
        #: the peer's (final) head is in: DATA may come (the client waits for it)
        self.head_done = True


def content_length(fields: list[tuple[bytes, bytes]]) -> int:
    """The message's content-length, -1 if none; -2 if unusable (not digits, or two that
    differ)."""
    found = -1
    for name, value in fields:
        if name == b"content-length":
            if not value.isdigit():
                return -2
            n = int(value)
            if found >= 0 and n != found:
                return -2
            found = n
    return found


class H2Framer:
    """One HTTP/2 connection's frames, settings, windows and streams, for either role."""

    def __init__(
        self,
        settings: list[tuple[int, int]],
        *,
        preface: bytes,
        initial_window_size: int,
        connection_window_size: int,
        max_header_list_size: int,
        max_control_frames: int,
        max_empty_frames: int,
    ) -> None:
        self.max_control_frames = max_control_frames
        self.max_empty_frames = max_empty_frames
        self.decoder = Decoder(max_header_list_size=max_header_list_size)
        self.encoder = Encoder()
        self._out = bytearray(preface)
        self.streams: dict[int, Stream] = {}
        self._closed: dict[int, int] = {}
        #: the highest stream id opened (by the client: only odd ones are ever used)
        self.highest_stream_id = 0
        #: no more input is taken (a connection error, or our GOAWAY after one)
        self.closed = False
        # input state
        self._preface_left = 0
        self._settings_seen = False
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 9
        self._cont_sid = 0  # a header block waiting for its CONTINUATION frames
        self._cont_flags = 0
        self._cont_error = 0
        self._cont_block: list[bytes] = []
        self._cont_size = 0
        self._empty = 0
        self._control = 0
        # our receive side
        self._local_initial = initial_window_size  # as we announced it
        self._acked_initial = DEFAULT_WINDOW  # as the peer knows it (until its ACK)
        self._settings_unacked = 0
        self.recv_window = connection_window_size
        self._conn_target = connection_window_size
        self._conn_owed = 0
        self._max_header_block = max(65536, 2 * max_header_list_size)
        # our send side, as the peer's SETTINGS and WINDOW_UPDATE frames say
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_MAX_FRAME_SIZE
        #: the peer's SETTINGS_MAX_CONCURRENT_STREAMS: unlimited until its SETTINGS say
        #: otherwise (RFC 9113 §6.5.2). Envoy's client assumes the same (2^31-1, not
        #: nghttp2's default of 100): requests do not wait a round trip for the server's
        #: SETTINGS, and a server may refuse the streams beyond its limit.
        self.peer_max_concurrent_streams = 1 << 32

        payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)
        self._emit(SETTINGS, 0, 0, payload)
        self._settings_unacked = 1
        if connection_window_size > DEFAULT_WINDOW:
            self._emit(
                WINDOW_UPDATE, 0, 0, (connection_window_size - DEFAULT_WINDOW).to_bytes(4, "big")
            )
        else:
            self.recv_window = self._conn_target = DEFAULT_WINDOW

    # ------------------------------------------------------------------ the roles' part

    def _header_block(self, flags: int, sid: int, block: bytes, error: int) -> None:
        """A whole header block on stream ``sid`` (``error``: a stream error found in its
        HEADERS frame, to raise once the block is decoded)."""
        raise NotImplementedError

    def _peer_goaway(self, last_stream_id: int, code: int) -> None:
        raise NotImplementedError

    def _peer_reset(self, sid: int, code: int) -> None:
        """The peer reset stream ``sid`` (already forgotten)."""
        raise NotImplementedError

    def _reset_here(self, sid: int, code: int) -> None:
        """A stream error (``code``) reset stream ``sid`` (already forgotten)."""
        raise NotImplementedError

    def _malformed(self, sid: int, message: str) -> Exception:
        """What a malformed message on stream ``sid`` raises (RFC 9113 §8.1.1)."""
        raise NotImplementedError

    def _on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        raise NotImplementedError

    def _on_window(self, sid: int) -> None:
        """More send window for stream ``sid``; 0: for every stream."""
        raise NotImplementedError

    def _on_stream_limit(self) -> None:
        """The peer's SETTINGS changed ``peer_max_concurrent_streams``."""
        raise NotImplementedError

    def _goaway_last_stream_id(self) -> int:
        """The last stream id our GOAWAY names: the highest the peer opened."""
        raise NotImplementedError

    def _ping_acked(self) -> None:
        """The peer acknowledged a PING (``ping``): the connection is alive."""

    # ------------------------------------------------------------------ output

    def ping(self, opaque: bytes) -> None:
        """Queue a PING (keepalive) with 8 bytes of ``opaque`` data."""
        self._emit(PING, 0, 0, opaque)

    def _emit(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        n = len(payload)
        out = self._out
        out += bytes(
            (
                n >> 16,
                (n >> 8) & 0xFF,
                n & 0xFF,
                ftype,
                flags,
                sid >> 24,
                (sid >> 16) & 0xFF,
                (sid >> 8) & 0xFF,
                sid & 0xFF,
            )
        )
        out += payload

    def data_to_send(self) -> bytes:
        """Everything queued since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _conn_error(self, code: int, message: str, stat: str = "") -> H2ConnectionError:
        """Queue the GOAWAY of a connection error and stop taking input; the exception to
        raise."""
        if not self.closed:
            self.closed = True
            self._goaway(code)
        return H2ConnectionError(code, message, stat)

    def _goaway(self, code: int) -> None:
        self._emit(
            GOAWAY,
            0,
            0,
            self._goaway_last_stream_id().to_bytes(4, "big") + code.to_bytes(4, "big"),
        )

    def close_connection(self, code: int) -> None:
        """A GOAWAY with ``code``, and no more input."""
        if not self.closed:
            self.closed = True
            self._goaway(code)

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM with ``code``; ``StreamClosed`` when the stream is already over."""
        s = self.streams.get(sid)
        if s is None:
            raise StreamClosed(sid)
        self._emit(RST_STREAM, 0, sid, code.to_bytes(4, "big"))
        self._forget(s, RESET_HERE)

    def _stream_for_send(self, sid: int) -> Stream:
        s = self.streams.get(sid)
        if s is None or s.local_closed:
            raise StreamClosed(sid)
        return s

    def send_headers(self, sid: int, block: list[Any], end_stream: bool = False) -> None:
        s = self._stream_for_send(sid)
        encoded = self.encoder.encode(block)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(encoded) <= size:
            self._emit(HEADERS, flags | END_HEADERS, sid, encoded)
        else:
            self._emit(HEADERS, flags, sid, encoded[:size])
            pos = size
            while pos < len(encoded):
                last = pos + size >= len(encoded)
                chunk = encoded[pos : pos + size]
                self._emit(CONTINUATION, END_HEADERS if last else 0, sid, chunk)
                pos += size
        if end_stream:
            self._end_local(s)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame: ``data`` must fit the stream's window and the frame size."""
        s = self._stream_for_send(sid)
        n = len(data)
        if n > s.send_window or n > self.send_window or n > self.max_outbound_frame_size:
            raise ValueError(f"{n} bytes do not fit stream {sid}'s window or frame")
        s.send_window -= n
        self.send_window -= n
        self._emit(DATA, END_STREAM if end_stream else 0, sid, data)
        if end_stream:
            self._end_local(s)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", end_stream=True)

    def local_flow_control_window(self, sid: int) -> int:
        s = self._stream_for_send(sid)
        return min(s.send_window, self.send_window)

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        """The application took ``n`` flow-controlled bytes of stream ``sid``: credit for the
        peer, sent once half a window is owed."""
        if n <= 0 or self.closed:
            return
        self._conn_owed += n
        if self._conn_owed * 2 >= self._conn_target:
            self._emit(WINDOW_UPDATE, 0, 0, self._conn_owed.to_bytes(4, "big"))
            self.recv_window += self._conn_owed
            self._conn_owed = 0
        s = self.streams.get(sid)
        if s is not None and not s.remote_closed:
            s.owed += n
            if s.owed * 2 >= self._local_initial:
                self._emit(WINDOW_UPDATE, 0, sid, s.owed.to_bytes(4, "big"))
                s.recv_window += s.owed
                s.owed = 0

    def _end_local(self, s: Stream) -> None:
        s.local_closed = True
        if s.remote_closed:
            self._forget(s, ENDED)

    def _forget(self, s: Stream, how: int) -> None:
        if self.streams.pop(s.sid, None) is None:
            return
        self._remember(s.sid, how)

    def _remember(self, sid: int, how: int) -> None:
        closed = self._closed
        closed[sid] = how
        if len(closed) > _CLOSED_REMEMBERED:
            del closed[next(iter(closed))]

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes) -> None:
        """Take what the peer sent; calls to the application for what it means. Raises
        ``H2ConnectionError`` (its GOAWAY queued) or ``Flood``."""
        if self.closed:
            return
        self._control = 0
        if self._preface_left:
            n = min(len(data), self._preface_left)
            start = len(PREFACE) - self._preface_left
            if data[:n] != PREFACE[start : start + n]:
                raise self._conn_error(PROTOCOL_ERROR, "invalid connection preface")
            self._preface_left -= n
            data = data[n:]
            if not data:
                return
        if self._parts:
            if self._have + len(data) < self._need:
                self._parts.append(data)
                self._have += len(data)
                return
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        pos = self._frames(data)
        if pos < len(data):
            rest = data[pos:]
            self._parts = [rest]
            self._have = len(rest)
            self._need = 9
            if len(rest) >= 9:
                self._need = 9 + ((rest[0] << 16) | (rest[1] << 8) | rest[2])
        else:
            self._need = 9

    def _frames(self, data: bytes) -> int:
        """Handle every whole frame in ``data``; where the first incomplete one starts."""
        pos = 0
        end = len(data)
        while end - pos >= 9:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > DEFAULT_MAX_FRAME_SIZE:
                raise self._conn_error(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos - 9 < length:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = data[pos + 9 : pos + 9 + length]
            pos += 9 + length
            try:
                self._on_frame(ftype, flags, sid, payload)
            except StreamError as exc:
                self._stream_error(exc.sid, exc.code)
            if self.closed:
                return end
        return pos

    def _stream_error(self, sid: int, code: int) -> None:
        self._emit(RST_STREAM, 0, sid, code.to_bytes(4, "big"))
        s = self.streams.get(sid)
        if s is not None:
            self._forget(s, RESET_HERE)
            self._reset_here(sid, code)
        else:
            self._closed[sid] = RESET_HERE

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if not self._settings_seen:
            if ftype != SETTINGS or flags & ACK:
                raise self._conn_error(PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self._settings_seen = True
        if self._cont_sid:
            if ftype != CONTINUATION or sid != self._cont_sid:
                raise self._conn_error(PROTOCOL_ERROR, "a header block interrupted")
            self._continuation(flags, payload)
            return
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == PING:
            self._ping(flags, sid, payload)
        elif ftype == RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == PRIORITY:
            self._priority(sid, payload)
        elif ftype == GOAWAY:
            if sid:
                raise self._conn_error(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise self._conn_error(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self._peer_goaway(last, int.from_bytes(payload[4:8], "big"))
        elif ftype == PUSH_PROMISE:
            # a server never takes one; a client said SETTINGS_ENABLE_PUSH 0 (RFC 9113 §8.4)
            raise self._conn_error(PROTOCOL_ERROR, "PUSH_PROMISE where push is not enabled")
        elif ftype == CONTINUATION:
            raise self._conn_error(PROTOCOL_ERROR, "CONTINUATION without a header block")
        # other types: ignored (RFC 9113 §5.5)

    def _idle(self, sid: int) -> bool:
        """``sid`` names a stream never opened (and that no longer can be, if lower)."""
        return sid > self.highest_stream_id or not sid & 1

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload:
                raise self._conn_error(FRAME_SIZE_ERROR, "padded frame without a pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise self._conn_error(PROTOCOL_ERROR, "padding as long as the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _empty_frame(self) -> None:
        """One more empty frame in a row (see the module's docstring): past
        ``max_empty_frames`` of them, a flood."""
        self._empty += 1
        if self._empty > self.max_empty_frames:
            raise Flood("inbound_empty_frames_flood")

    # -- DATA

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise self._conn_error(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self.recv_window:
            raise self._conn_error(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.recv_window -= flow
        data = self._unpad(flags, payload)
        s = self.streams.get(sid)
        if s is None or s.remote_closed:
            if s is None and self._idle(sid):
                raise self._conn_error(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self.acknowledge_received_data(flow, sid)  # nobody takes it
            if s is None and self._closed.get(sid) == RESET_HERE:
                return
            raise StreamError(sid, STREAM_CLOSED)
        if flow > s.recv_window:
            self.acknowledge_received_data(flow, 0)
            raise StreamError(sid, FLOW_CONTROL_ERROR)
        s.recv_window -= flow
        end = bool(flags & END_STREAM)
        if not s.head_done:
            self.acknowledge_received_data(flow, 0)
            raise self._malformed(sid, "DATA before the response head")
        if s.expected >= 0:
            s.received += len(data)
            if s.received > s.expected or (end and s.received != s.expected):
                self.acknowledge_received_data(flow, 0)
                raise self._malformed(sid, "DATA beyond or short of the content-length")
        if data or end:
            self._empty = 0
        else:
            self._empty_frame()
        if end:
            s.remote_closed = True
            if s.local_closed:
                self._forget(s, ENDED)
        self._on_data(sid, data, flow, end)

    # -- HEADERS and CONTINUATION

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if payload or flags & END_STREAM:
            self._empty = 0
        else:
            self._empty_frame()
        if not sid:
            raise self._conn_error(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        error = 0
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise self._conn_error(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if int.from_bytes(block[:4], "big") & 0x7FFFFFFF == sid:
                error = PROTOCOL_ERROR  # a stream that depends on itself (§5.3.1)
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(flags, sid, block, error)
        else:
            self._cont_sid = sid
            self._cont_flags = flags
            self._cont_error = error
            self._cont_block = [block]
            self._cont_size = len(block)

    def _continuation(self, flags: int, payload: bytes) -> None:
        if payload:
            self._empty = 0
        else:
            self._empty_frame()
        self._cont_block.append(payload)
        self._cont_size += len(payload)
        if self._cont_size > self._max_header_block:
            raise self._conn_error(ENHANCE_YOUR_CALM, "header block too large", "header_overflow")
        if flags & END_HEADERS:
            sid = self._cont_sid
            block = b"".join(self._cont_block)
            self._cont_sid = 0
            self._cont_block = []
            self._header_block(self._cont_flags, sid, block, self._cont_error)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self.decoder.decode(block)
        except HpackError as exc:
            raise self._conn_error(COMPRESSION_ERROR, f"undecodable header block: {exc}") from exc
        except HeaderListTooLarge as too_large:
            raise self._conn_error(
                ENHANCE_YOUR_CALM, "header list too large", "header_overflow"
            ) from too_large

    # -- the others

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise self._conn_error(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise self._conn_error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise self._conn_error(FLOW_CONTROL_ERROR, "connection window beyond 2^31-1")
            self._on_window(0)
            return
        s = self.streams.get(sid)
        if s is None:
            if self._idle(sid):
                raise self._conn_error(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if not increment:
            raise StreamError(sid, PROTOCOL_ERROR)
        s.send_window += increment
        if s.send_window > MAX_WINDOW:
            raise StreamError(sid, FLOW_CONTROL_ERROR)
        self._on_window(sid)

    def _control_frame(self) -> None:
        self._control += 1
        if self._control > self.max_control_frames:
            raise Flood("outbound_control_flood")

    def _check_setting(self, ident: int, value: int) -> None:
        """A value of the peer's SETTINGS the role refuses raises here."""
        if ident in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
            raise self._conn_error(PROTOCOL_ERROR, f"setting {ident} of {value}")

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise self._conn_error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise self._conn_error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._local_settings_acked()
            return
        if len(payload) % 6:
            raise self._conn_error(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        window_changed = False
        stream_limit = self.peer_max_concurrent_streams
        for pos in range(0, len(payload), 6):
            ident = (payload[pos] << 8) | payload[pos + 1]
            value = int.from_bytes(payload[pos + 2 : pos + 6], "big")
            if ident == HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(min(value, MAX_ENCODER_TABLE))
            elif ident in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL):
                self._check_setting(ident, value)
            elif ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise self._conn_error(FLOW_CONTROL_ERROR, "initial window beyond 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.send_window += delta
                    if s.send_window > MAX_WINDOW:
                        raise self._conn_error(FLOW_CONTROL_ERROR, "stream window beyond 2^31-1")
                window_changed = True
            elif ident == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= (1 << 24) - 1:
                    raise self._conn_error(PROTOCOL_ERROR, f"max frame size of {value}")
                self.max_outbound_frame_size = value
            elif ident == MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
        self._control_frame()
        self._emit(SETTINGS, ACK, 0, b"")
        if window_changed:
            self._on_window(0)
        if self.peer_max_concurrent_streams != stream_limit:
            self._on_stream_limit()

    def _local_settings_acked(self) -> None:
        """The peer applies our initial window now: the streams it opened before get the
        difference."""
        delta = self._local_initial - self._acked_initial
        if delta:
            self._acked_initial = self._local_initial
            for s in self.streams.values():
                s.recv_window += delta

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise self._conn_error(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise self._conn_error(FRAME_SIZE_ERROR, "PING not 8 bytes")
        if not flags & ACK:
            self._control_frame()
            self._emit(PING, ACK, 0, payload)
        else:
            self._ping_acked()

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise self._conn_error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise self._conn_error(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        s = self.streams.get(sid)
        if s is None:
            if self._idle(sid):
                raise self._conn_error(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        self._forget(s, RESET_BY_PEER)
        self._peer_reset(sid, int.from_bytes(payload, "big"))

    def _priority(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise self._conn_error(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise StreamError(sid, FRAME_SIZE_ERROR)
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
            raise StreamError(sid, PROTOCOL_ERROR)
