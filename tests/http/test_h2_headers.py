"""Header blocks built for h2 to send as they are (its outbound normalisation is off): what
h2 used to guarantee still holds, checked through a stock, validating h2 peer."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hpack import NeverIndexedHeaderTuple

from trioproxy.http import h2_headers
from trioproxy.http.headers import Headers

Conn = h2.connection.H2Connection


def pair(client: Conn, server: Conn) -> tuple[Conn, Conn]:
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server


def stock(*, client_side: bool) -> Conn:
    return Conn(h2.config.H2Configuration(client_side=client_side, header_encoding=None))


def sent_request(block: h2_headers.Block) -> list[tuple[bytes, bytes]]:
    ours, peer = pair(Conn(h2_headers.config(client_side=True)), stock(client_side=False))
    ours.send_headers(1, block, end_stream=True)
    (event,) = [
        e for e in peer.receive_data(ours.data_to_send()) if hasattr(e, "headers") and e.headers
    ]
    assert isinstance(event, h2.events.RequestReceived)
    return list(event.headers)


def sent_response(block: h2_headers.Block) -> list[tuple[bytes, bytes]]:
    peer, ours = pair(stock(client_side=True), Conn(h2_headers.config(client_side=False)))
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    peer.send_headers(1, request, end_stream=True)
    ours.receive_data(peer.data_to_send())
    ours.send_headers(1, block, end_stream=True)
    (event,) = [
        e for e in peer.receive_data(ours.data_to_send()) if hasattr(e, "headers") and e.headers
    ]
    assert isinstance(event, h2.events.ResponseReceived)
    return list(event.headers)


def test_a_response_keeps_status_first_and_drops_connection_specific_fields() -> None:
    headers = Headers(
        [
            (":status", "200"),
            ("content-type", " text/plain "),
            ("Connection", "close"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "5"),
            ("X-Mixed", "\xe9t\xe9"),  # latin-1 text: the same bytes go out, not UTF-8
        ]
    )
    assert sent_response(h2_headers.response_block(headers)) == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-mixed", b"\xe9t\xe9"),
    ]


def test_a_request_gets_its_pseudo_headers_and_loses_host_and_hop_by_hop() -> None:
    headers = Headers(
        [
            (":authority", "example.com"),
            (":path", "/p?q"),
            ("host", "example.com"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("x-a", "1"),
        ]
    )
    assert sent_request(h2_headers.request_block("POST", headers)) == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"example.com"),
        (b":path", b"/p?q"),
        (b"te", b"trailers"),
        (b"x-a", b"1"),
    ]
    gzip_te = Headers([(":authority", "a"), (":path", "/"), (":scheme", "https"), ("te", "gzip")])
    assert sent_request(h2_headers.request_block("GET", gzip_te))[1:] == [
        (b":scheme", b"https"),
        (b":authority", b"a"),
        (b":path", b"/"),
    ]


@pytest.mark.parametrize(
    "headers",
    [[(":path", "/")], [(":authority", "a")], [(":authority", "a"), (":path", "")]],
)
def test_a_request_without_authority_or_path_is_refused(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        h2_headers.request_block("GET", Headers(headers))


def test_credentials_and_request_ids_stay_out_of_the_hpack_table() -> None:
    block = h2_headers.request_block(
        "GET",
        Headers(
            [
                (":authority", "a"),
                (":path", "/"),
                ("authorization", "Bearer x"),
                ("cookie", "short=1"),
                ("cookie", "a-long-enough-cookie=1234567890"),
                ("x-request-id", "9f1c4b1e-0d7e-4d0c-9a57-6c1f3f0a2b11"),
            ]
        ),
    )
    never = [type(f) is NeverIndexedHeaderTuple for f in block[4:]]
    assert never == [True, True, False, True]


def test_trailers_are_regular_fields_only() -> None:
    fields = [(":status", "200"), ("grpc-status", "0"), ("Connection", "x"), ("te", "trailers")]
    assert h2_headers.trailers_block(fields) == [(b"grpc-status", b"0")]


GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]


def test_a_request_block_splits_into_pseudo_and_regular_fields() -> None:
    block = [*GOOD, (b"cookie", b"a=1"), (b"x-b", b"\xe9"), (b"cookie", b"b=2"), (b"host", b"a")]
    pseudo, regular = h2_headers.request_fields(block)
    assert pseudo == {":method": "GET", ":scheme": "https", ":path": "/", ":authority": "a"}
    assert regular == [("x-b", "\xe9"), ("host", "a"), ("cookie", "a=1; b=2")]
    host_only = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")]
    assert h2_headers.request_fields(host_only)[1] == [("host", "h")]
    connect = [(b":method", b"CONNECT"), (b":authority", b"a:443")]
    assert h2_headers.request_fields(connect)[0] == {":method": "CONNECT", ":authority": "a:443"}
    assert h2_headers.request_fields([*GOOD, (b"te", b"Trailers"), (b"x-empty", b"")])


@pytest.mark.parametrize(
    "block",
    [
        [*GOOD, (b"X-Upper", b"1")],
        [*GOOD, (b"x:colon", b"1")],
        [*GOOD, (b"x y", b"1")],
        [*GOOD, (b"x-\xe9", b"1")],
        [*GOOD, (b"", b"1")],
        [*GOOD, (b"x\ny", b"1")],
        [*GOOD, (b"x", b"a\r\nb")],
        [*GOOD, (b"x", b"a\nb")],
        [*GOOD, (b"x", b"a\x00")],
        [*GOOD, (b"x", b" padded")],
        [*GOOD, (b"x", b"padded\t")],
        [*GOOD, (b"x", b"padded "), (b"y", b"1")],
        [*GOOD, (b"x", b"1"), (b"y", b"\tpadded")],
        [*GOOD, (b"connection", b"close")],
        [*GOOD, (b"keep-alive", b"5")],
        [*GOOD, (b"te", b"gzip")],
        [*GOOD, (b":status", b"200")],
        [*GOOD, (b":unknown", b"1")],
        [*GOOD, (b":path", b"/again")],
        [*GOOD[:2], (b"x", b"1"), *GOOD[2:]],
        GOOD[1:],
        [GOOD[0], GOOD[2], GOOD[3]],
        [*GOOD[:2], GOOD[3]],
        [*GOOD[:2], (b":path", b""), GOOD[3]],
        GOOD[:3],
        [*GOOD, (b"host", b"other")],
        [*GOOD[:3], (b"host", b"a"), (b"host", b"a")],
        [(b":method", b"CONNECT"), (b":authority", b"a"), (b":path", b"/")],
        [*GOOD, (b":protocol", b"websocket")],
    ],
)
def test_a_malformed_request_block_is_refused(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(h2_headers.MalformedHeaders):
        h2_headers.request_fields(block)
    # as h2's own validation (which this replaces) refuses it
    ours, peer = pair(Conn(h2_headers.config(client_side=True)), stock(client_side=False))
    ours.send_headers(1, block, end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError):
        peer.receive_data(ours.data_to_send())


def test_names_a_peer_invents_are_checked_every_time_without_growing_a_table() -> None:
    for i in range(2 * h2_headers._KNOWN_NAMES_MAX):
        h2_headers.request_fields([*GOOD, (f"x-made-up-{i}".encode(), b"1")])
    assert len(h2_headers._KNOWN_NAMES) <= h2_headers._KNOWN_NAMES_MAX
    long_name = b"x-" + b"a" * 200
    assert h2_headers.request_fields([*GOOD, (long_name, b"1")])[1] == [(long_name.decode(), "1")]
    assert long_name not in h2_headers._KNOWN_NAMES
    for bad in (b"X-Made-Up-1", b"connection"):
        with pytest.raises(h2_headers.MalformedHeaders):
            h2_headers.request_fields([*GOOD, (bad, b"1")])


def test_received_trailers_carry_no_pseudo_header() -> None:
    assert h2_headers.trailer_fields([(b"grpc-status", b"0")]) == [("grpc-status", "0")]
    assert h2_headers.trailer_fields([]) == []
    with pytest.raises(h2_headers.MalformedHeaders):
        h2_headers.trailer_fields([(b":method", b"POST")])
    with pytest.raises(h2_headers.MalformedHeaders):
        h2_headers.trailer_fields([(b"x", b"a\rb")])


def test_a_response_block_gives_status_and_fields() -> None:
    block = [(b":status", b"204"), (b"server", b"x"), (b"x-v", b"\xe9")]
    assert h2_headers.response_fields(block) == (204, [("server", "x"), ("x-v", "\xe9")])


@pytest.mark.parametrize(
    "block",
    [
        [(b"server", b"x")],
        [(b"server", b"x"), (b":status", b"200")],
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":status", b"200"), (b"Server", b"x")],
        [(b":status", b"200"), (b"x", b"a\rb")],
        [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
    ],
)
def test_a_malformed_response_block_is_refused(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(h2_headers.MalformedHeaders):
        h2_headers.response_fields(block)
    peer, ours = pair(stock(client_side=True), Conn(h2_headers.config(client_side=False)))
    peer.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
        end_stream=True,
    )
    ours.receive_data(peer.data_to_send())
    ours.send_headers(1, block, end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError):  # as h2's own validation
        peer.receive_data(ours.data_to_send())
