"""``H2Client`` without sockets, against the ``h2`` package as the server (bytes handed back and
forth) and against hand-made frames for what a well-behaved server never sends: the RFC 9113
rules a client must keep, each with the frame or the error the client answers with."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from trioproxy.http import h2_client_proto
from trioproxy.http.h2_client_proto import H2Client, H2ClientHandler, H2ConnectionError
from trioproxy.http.h2_frames import PREFACE

# A compiled H2ClientHandler takes no interpreted subclass (mypyc); the compiled client is
# covered through the proxy (test_h2_client_framing, test_h2_upstream).
pytestmark = pytest.mark.skipif(
    not h2_client_proto.__file__.endswith(".py"), reason="needs the interpreted module"
)

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
GOAWAY = 0x7
RST_STREAM = 0x3


class Recorder(H2ClientHandler):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.windows: list[int] = []  # (kept apart: the server's SETTINGS bring one)
        self.stream_limits = 0  # (likewise: how many SETTINGS changed the stream limit)

    def on_informational(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("info", sid, fields[0][1]))

    def on_response(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        self.events.append(("response", sid, dict(fields), end_stream))

    def on_data(self, sid: int, data: bytes, flow: int, end_stream: bool) -> None:
        self.events.append(("data", sid, data, flow, end_stream))

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", sid, dict(fields)))

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        self.events.append(("reset", sid, code, remote))

    def on_window(self, sid: int) -> None:
        self.windows.append(sid)

    def on_stream_limit(self) -> None:
        self.stream_limits += 1

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        self.events.append(("goaway", last_stream_id, code))


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    return head + payload


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    data = data.removeprefix(PREFACE)
    out = []
    while data:
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + n]))
        data = data[9 + n :]
    return out


class Pair:
    """An ``H2Client`` and an ``h2`` server, connected."""

    def __init__(self, **server_settings: int) -> None:
        self.rec = Recorder()
        self.client = H2Client(self.rec, initial_window_size=65535)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.server.initiate_connection()
        if server_settings:
            codes = h2.settings.SettingCodes
            self.server.update_settings(
                {getattr(codes, k.upper()): v for k, v in server_settings.items()}
            )
        self.server_events: list[object] = []
        self.pump()

    def pump(self) -> None:
        """Deliver what each side queued until both are quiet."""
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            if to_client:
                self.client.receive(to_client)

    def raw(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        """Hand-made bytes from the server; the frames the client answers with."""
        self.client.receive(data)
        return frames(self.client.data_to_send())


def test_the_preface_settings_and_a_request_round_trip() -> None:
    p = Pair()
    assert p.client.next_stream_id == 1
    sid = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    received = [e for e in p.server_events if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in received] == [1]
    assert dict(received[0].headers)[b":path"] == b"/"
    # our SETTINGS: no push; the server's acknowledged
    assert p.server.remote_settings.enable_push == 0
    assert p.client._settings_unacked == 0
    p.server.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
    p.server.send_data(sid, b"ok", end_stream=True, pad_length=10)
    p.pump()
    assert p.rec.events == [
        ("response", 1, {b":status": b"200", b"content-length": b"2"}, False),
        ("data", 1, b"ok", 13, True),  # padding counts against the window
    ]
    assert not p.client.streams
    assert p.client.send_request(REQUEST, end_stream=True) == 3  # odd, increasing


def test_a_large_header_block_comes_in_continuation_frames() -> None:
    p = Pair()
    sid = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    big = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 1000) for i in range(40)]
    p.server.send_headers(sid, big, end_stream=True)
    data = p.server.data_to_send()
    assert any(f[0] == 0x9 for f in frames(data))  # CONTINUATION
    p.client.receive(data)
    assert p.rec.events[0][0] == "response" and len(p.rec.events[0][2]) == 41


def test_informational_heads_then_the_response_then_trailers() -> None:
    p = Pair()
    sid = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    p.server.send_headers(sid, [(b":status", b"100")])
    p.server.send_headers(sid, [(b":status", b"103")])
    p.server.send_headers(sid, [(b":status", b"200")])
    p.server.send_data(sid, b"body")
    p.server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    p.pump()
    kinds = [e[0] for e in p.rec.events]
    assert kinds == ["info", "info", "response", "data", "trailers"]
    assert p.rec.events[-1] == ("trailers", 1, {b"grpc-status": b"0"})


def test_the_servers_settings_are_applied() -> None:
    p = Pair(max_concurrent_streams=3, initial_window_size=1000, max_frame_size=20000)
    assert p.client.peer_max_concurrent_streams == 3
    assert p.client.max_outbound_frame_size == 20000
    sid = p.client.send_request(REQUEST)
    assert p.client.local_flow_control_window(sid) == 1000
    p.client.send_data(sid, b"x" * 1000)
    assert p.client.local_flow_control_window(sid) == 0
    p.pump()
    # the server takes the bytes and opens its window: the client hears of it
    p.server.acknowledge_received_data(1000, sid)
    p.server.increment_flow_control_window(1000, stream_id=sid)
    p.pump()
    assert sid in p.rec.windows
    assert p.client.local_flow_control_window(sid) >= 1000


def test_the_stream_limit_is_unlimited_until_the_servers_settings_change_it() -> None:
    # before any SETTINGS: more than a client's stream ids can ever open (Envoy's client
    # assumes 2^31-1, not nghttp2's 100)
    assert H2Client(Recorder()).peer_max_concurrent_streams >= 2**30
    p = Pair()  # h2's SETTINGS: 100 streams
    assert p.client.peer_max_concurrent_streams == 100 and p.rec.stream_limits == 1
    p.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
    p.pump()
    assert p.rec.stream_limits == 1  # the same value again: nothing to tell
    p.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 5})
    p.pump()
    assert p.client.peer_max_concurrent_streams == 5 and p.rec.stream_limits == 2


def test_ping_is_answered_and_data_credit_given_back() -> None:
    p = Pair()
    out = p.raw(frame(0x6, 0, 0, b"12345678"))
    assert out == [(0x6, 0x1, 0, b"12345678")]
    sid = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    p.server.send_headers(sid, [(b":status", b"200")])
    for _ in range(4):
        p.server.send_data(sid, b"x" * 10000)
    p.pump()
    p.client.acknowledge_received_data(40000, sid)
    updates = {f[2]: f[3] for f in frames(p.client.data_to_send()) if f[0] == 0x8}
    assert int.from_bytes(updates[0], "big") == 40000  # the connection's
    assert int.from_bytes(updates[sid], "big") == 40000  # the stream's


def test_goaway_closes_the_streams_above_its_last_stream_id() -> None:
    p = Pair()
    first = p.client.send_request(REQUEST, end_stream=True)
    second = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    p.raw(frame(GOAWAY, 0, 0, first.to_bytes(4, "big") + bytes(4)))
    assert p.rec.events == [("goaway", first, 0)]
    assert list(p.client.streams) == [first]
    assert not p.client.can_open()
    # the stream below goes on; a late frame for the other is ignored
    p.server.send_headers(first, [(b":status", b"204")], end_stream=True)
    p.pump()
    assert p.rec.events[-1] == ("response", first, {b":status": b"204"}, True)
    assert p.raw(frame(RST_STREAM, 0, second, bytes(4))) == []


def test_a_reset_by_the_server_and_frames_after_it() -> None:
    p = Pair()
    sid = p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    p.server.reset_stream(sid, 7)
    p.pump()
    assert p.rec.events == [("reset", sid, 7, True)]
    # DATA on a stream the server reset: a stream error STREAM_CLOSED, the connection goes on
    out = p.raw(frame(0x0, 0, sid, b"late"))
    assert out[0][:3] == (RST_STREAM, 0, sid) and out[0][3] == (5).to_bytes(4, "big")
    assert not p.client.closed


def test_cancel_sends_rst_stream_and_later_frames_are_ignored() -> None:
    p = Pair()
    sid = p.client.send_request(REQUEST)
    assert p.client.cancel(sid)
    assert (RST_STREAM, 0, sid, (8).to_bytes(4, "big")) in frames(p.client.data_to_send())
    assert not p.client.cancel(sid)
    enc = hpack.Encoder()
    assert p.raw(frame(0x1, 0x5, sid, enc.encode([(b":status", b"200")]))) == []
    assert p.raw(frame(0x0, 0x1, sid, b"x")) == []
    assert p.rec.events == []


def goaway_code(out: list[tuple[int, int, int, bytes]]) -> int:
    (goaway,) = [f for f in out if f[0] == GOAWAY]
    return int.from_bytes(goaway[3][4:8], "big")


def _error(p: Pair, data: bytes) -> int:
    with pytest.raises(H2ConnectionError):
        p.client.receive(data)
    assert p.client.closed
    return goaway_code(frames(p.client.data_to_send()))


def _head(fields: list[tuple[bytes, bytes]], sid: int = 1, flags: int = 0x4) -> bytes:
    return frame(0x1, flags, sid, hpack.Encoder().encode(fields))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # PUSH_PROMISE when we said SETTINGS_ENABLE_PUSH 0
        (frame(0x5, 0x4, 1, (2).to_bytes(4, "big") + b"\x82"), 0x1),
        # a frame above SETTINGS_MAX_FRAME_SIZE
        (frame(0x0, 0, 1, b"x" * 16385), 0x6),
        # HEADERS on a stream we never opened, and on an even one
        (_head([(b":status", b"200")], sid=5), 0x1),
        (_head([(b":status", b"200")], sid=2), 0x1),
        # DATA before the response head
        (frame(0x0, 0x1, 1, b"x"), 0x1),
        # a body shorter and longer than its content-length
        (_head([(b":status", b"200"), (b"content-length", b"3")], flags=0x5), 0x1),
        (
            _head([(b":status", b"200"), (b"content-length", b"3")]) + frame(0x0, 0x1, 1, b"abcd"),
            0x1,
        ),
        # an unusable content-length
        (_head([(b":status", b"200"), (b"content-length", b"3x")]), 0x1),
        # an informational head that ends the stream; a 101
        (_head([(b":status", b"100")], flags=0x5), 0x1),
        (_head([(b":status", b"101")]), 0x1),
        # trailers that do not end the stream
        (_head([(b":status", b"200")]) + _head([(b"x-t", b"1")], flags=0x4), 0x1),
        # the server enabling push; a window beyond 2^31-1
        (frame(0x4, 0, 0, (2).to_bytes(2, "big") + (1).to_bytes(4, "big")), 0x1),
        (frame(0x8, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")), 0x3),
        # a header block interrupted; a CONTINUATION without one
        (_head([(b":status", b"200")], flags=0) + frame(0x6, 0, 0, bytes(8)), 0x1),
        (frame(0x9, 0x4, 1, b"\x88"), 0x1),
        # padding as long as the frame
        (frame(0x0, 0x8, 1, b"\x05abc"), 0x1),
        # HPACK that does not decode
        (frame(0x1, 0x4, 1, b"\xff\xff\xff\xff"), 0x9),
    ],
    ids=[
        "push-promise",
        "frame-size",
        "idle-stream",
        "even-stream",
        "data-before-head",
        "body-short",
        "body-long",
        "bad-content-length",
        "1xx-end-stream",
        "101",
        "trailers-without-end",
        "enable-push",
        "window-overflow",
        "interrupted-block",
        "stray-continuation",
        "padding",
        "hpack",
    ],
)
def test_connection_errors(data: bytes, code: int) -> None:
    p = Pair()
    p.client.send_request(REQUEST, end_stream=True)
    p.pump()
    assert _error(p, data) == code
    # nothing more is taken
    p.client.receive(frame(0x6, 0, 0, bytes(8)))
    assert p.client.data_to_send() == b""


def test_a_stream_window_beyond_the_limit_is_a_stream_error() -> None:
    p = Pair()
    sid = p.client.send_request(REQUEST)
    p.pump()
    out = p.raw(frame(0x8, 0, sid, (0x7FFFFFFF).to_bytes(4, "big")))
    assert out == [(RST_STREAM, 0, sid, (3).to_bytes(4, "big"))]
    assert p.rec.events[-1] == ("reset", sid, 3, False)
    assert not p.client.closed


def test_the_first_frame_must_be_settings() -> None:
    rec = Recorder()
    client = H2Client(rec)
    with pytest.raises(H2ConnectionError):
        client.receive(frame(0x6, 0, 0, bytes(8)))
    assert goaway_code(frames(client.data_to_send())) == 0x1


@pytest.mark.parametrize(("head", "status"), [(True, b"200"), (False, b"304")])
def test_no_body_where_the_content_length_is_of_the_resource(head: bool, status: bytes) -> None:
    """The response to a HEAD request and a 304 carry a content-length and no body."""
    p = Pair()
    sid = p.client.send_request(REQUEST, end_stream=True, head=head)
    p.pump()
    p.server.send_headers(sid, [(b":status", status), (b"content-length", b"100")], True)
    p.pump()
    assert p.rec.events == [
        ("response", sid, {b":status": status, b"content-length": b"100"}, True)
    ]
    assert not p.client.closed and not p.client.streams
