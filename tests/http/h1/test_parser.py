"""Request and response parsing, each behaviour checked on both backends."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from trioproxy.errors import ProtocolError
from trioproxy.http import h1

from .helpers import BACKENDS, parse_requests, run, split

pytestmark = pytest.mark.parametrize("codec", BACKENDS)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def heads(events: list[object]) -> list[Any]:
    return [e for e in events if type(e) is h1.RequestHead or type(e) is h1.ResponseHead]


def error_of(events: list[Any]) -> int | None:
    last = events[-1] if events else None
    return last[1] if isinstance(last, tuple) else None


def test_simple_get(codec: str) -> None:
    ev = parse_requests(codec, b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  v  \r\n\r\n")
    (head,) = heads(ev)
    assert isinstance(head, h1.RequestHead)
    assert (head.method, head.target, head.version) == ("GET", "/a?b", "1.1")
    assert head.headers == [("host", "x"), ("x-a", "v")]
    assert head.keep_alive and not head.chunked and head.content_length is None
    assert ev[-1] == h1.EndOfMessage([])


def test_pipelined_requests_answered_in_order(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(GET + b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi" + b"GET /c HTTP/1.1\r\n\r\n")
    targets = []
    for _ in range(3):
        head = p.next_event()
        targets.append(head.target)
        ev = p.next_event()
        while type(ev) is h1.Data:
            ev = p.next_event()
        assert type(ev) is h1.EndOfMessage
        assert p.next_event() is h1.PAUSED
        assert p.next_event() is h1.PAUSED
        p.start_next_cycle()
    assert targets == ["/a", "/b", "/c"]
    assert p.next_event() is h1.NEED_DATA


def test_body_split_at_every_byte(codec: str) -> None:
    msg = b"POST /u HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + GET
    whole = parse_requests(codec, msg)
    for i in range(len(msg) + 1):
        assert parse_requests(codec, msg, [i]) == whole
    assert [type(e) for e in whole] == [h1.RequestHead, h1.Data, h1.EndOfMessage] * 1 + [
        h1.RequestHead,
        h1.EndOfMessage,
    ]
    assert whole[1] == h1.Data(b"hello")


def test_chunked_with_trailers_byte_by_byte(codec: str) -> None:
    msg = (
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n"
    )
    ev = parse_requests(codec, msg, list(range(len(msg))))
    assert ev[0].chunked and ev[0].content_length is None
    assert ev[1:] == [h1.Data(b"hello world"), h1.EndOfMessage([("x-sum", "abc")])]


def test_expect_continue_flagged(codec: str) -> None:
    ev = parse_requests(
        codec, b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    )
    assert ev[0].expect_continue
    assert not parse_requests(codec, GET)[0].expect_continue


def test_upgrade_keeps_trailing_bytes(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello"
    )
    head = p.next_event()
    assert head.upgrade == "websocket"
    assert type(p.next_event()) is h1.EndOfMessage
    assert p.next_event() is h1.PAUSED
    p.start_next_cycle()
    assert p.next_event() is h1.PAUSED
    p.feed(b"more")
    assert p.trailing_data() == b"\x81\x05hellomore"


def test_connect_is_an_upgrade(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nTLS")
    head = p.next_event()
    assert (head.method, head.target, head.upgrade) == ("CONNECT", "example.com:443", "CONNECT")
    assert type(p.next_event()) is h1.EndOfMessage
    assert p.trailing_data() == b"TLS"


@pytest.mark.parametrize(
    "target", ["example.com:443", "[::1]:8443", "10.0.0.1:0", "a-b.example:65535"]
)
def test_connect_takes_an_authority_form_target(codec: str, target: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(b"CONNECT %s HTTP/1.1\r\nContent-Length: 0\r\n\r\n" % target.encode())
    head = p.next_event()
    assert (head.target, head.upgrade, head.content_length) == (target, "CONNECT", 0)


@pytest.mark.parametrize(
    ("raw", "status", "details"),
    [
        # what Envoy 1.40's codec answers, measured (tests/differential/test_connect.py)
        (b"CONNECT example.com HTTP/1.1\r\n\r\n", 400, "http1.invalid_url"),
        (b"CONNECT /foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, "http1.invalid_url"),
        (b"CONNECT http://a:80/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "http1.invalid_url"),
        (b"CONNECT a:99999 HTTP/1.1\r\n\r\n", 400, "http1.invalid_url"),
        (b"CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, "http1.body_disallowed"),
        (
            b"CONNECT a:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "http1.invalid_transfer_encoding",
        ),
    ],
)
def test_connect_refused_as_envoys_codec_does(
    codec: str, raw: bytes, status: int, details: str
) -> None:
    p = h1.make_server_parser(codec)
    p.feed(raw)
    with pytest.raises(ProtocolError) as info:
        p.next_event()
    assert (info.value.status_hint, info.value.details) == (status, details)


def test_upgrade_header_without_connection_token_is_plain(codec: str) -> None:
    ev = parse_requests(codec, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n" + GET)
    assert [h.upgrade for h in heads(ev)] == [None, None]


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive(codec: str, raw: bytes, keep_alive: bool) -> None:
    assert parse_requests(codec, raw)[0].keep_alive is keep_alive


def test_eof_mid_request_is_need_data(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert type(p.next_event()) is h1.RequestHead
    assert p.next_event() == h1.Data(b"abc")
    p.feed(b"")
    assert p.next_event() is h1.NEED_DATA


# -- hygiene (DEFAULTS.md) ----------------------------------------------------------------
BAD = [
    pytest.param(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        id="cl-and-te",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
        id="te-and-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="te-on-http10"
    ),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, id="te-gzip"),
    pytest.param(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, id="te-gzip-chunked"
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, id="cl-differs"
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
        id="cl-repeated",
    ),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n", 400, id="cl-malformed"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, id="cl-negative"),
    pytest.param(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, id="chunk-size"
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
        400,
        id="chunk-size-trailing-space",
    ),
    pytest.param(b"GET /a\tb HTTP/1.1\r\n\r\n", 400, id="tab-in-target"),
    pytest.param(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nA: b\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nA: b\nB: c\r\n\r\n", 400, id="bare-lf-header"),
    pytest.param(b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n", 400, id="ctl-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nA : b\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"FOO / HTTP/1.1\r\n\r\n", 400, id="unknown-method"),
    pytest.param(b"get / HTTP/1.1\r\n\r\n", 400, id="lower-case-method"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", 400, id="http2-version"),
    pytest.param(b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n", 414, id="uri-too-long"),
    pytest.param(b"GET /" + b"a" * 17000, 414, id="uri-too-long-incomplete"),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n",
        431,
        id="too-many-headers",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\n"
        + b"".join(b"h%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        + b"\r\n",
        431,
        id="header-block-too-large",
    ),
    pytest.param(b"GET / HTTP/1.1\r\nA: " + b"v" * 100000, 431, id="huge-unfinished-header"),
]


@pytest.mark.parametrize(("raw", "status"), BAD)
def test_hygiene(codec: str, raw: bytes, status: int) -> None:
    ev = parse_requests(codec, raw)
    assert error_of(ev) == status, ev
    assert not heads(ev) or b"chunked\r\n\r\n" in raw  # a bad chunk comes after a good head


@pytest.mark.parametrize(("raw", "status"), BAD)
def test_hygiene_small_reads(codec: str, raw: bytes, status: int) -> None:
    ev = parse_requests(codec, raw, list(range(0, len(raw), 997)))
    assert error_of(ev) == status, ev


def test_error_carries_details_and_close(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n")
    with pytest.raises(ProtocolError) as info:
        p.next_event()
    exc = info.value
    assert exc.status_hint == 431 and exc.close and exc.details.startswith("http1.")


def test_error_after_good_request_is_delivered_in_order(codec: str) -> None:
    ev = parse_requests(codec, GET + b"GET / HTTP/1.1\r\nA : b\r\n\r\n")
    assert type(ev[0]) is h1.RequestHead and ev[-1] == ("error", 400)


def test_header_limits_are_configurable(codec: str) -> None:
    raw = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n"
    assert error_of(parse_requests(codec, raw, max_headers=2)) == 431
    assert error_of(parse_requests(codec, raw, max_headers=3)) is None
    assert error_of(parse_requests(codec, raw, max_header_bytes=5)) == 431


# -- responses ------------------------------------------------------------------------------
def responses(
    codec: str, methods: list[str], data: bytes, cuts: list[int] | None = None, eof: bool = True
) -> list[Any]:
    p = h1.make_client_parser(codec)
    out: list[Any] = []
    chunks = split(data, cuts)
    for method in methods:
        p.expect(method)
        got = run(p, chunks, eof=eof, cycle=False)
        chunks = []
        out += [e for e in got if e != "paused"]
        p.start_next_cycle()
    return out


def test_response_to_head_has_no_body(codec: str) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    p = h1.make_client_parser(codec)
    p.expect("HEAD")
    p.feed(data)
    head = p.next_event()
    assert head.status == 200 and head.content_length == 5
    assert p.next_event() == h1.EndOfMessage([])
    assert p.next_event() is h1.PAUSED
    p.start_next_cycle()
    p.expect("GET")
    assert p.next_event().content_length == 2
    assert p.next_event() == h1.Data(b"hi")
    assert p.next_event() == h1.EndOfMessage([])


def test_continue_then_final_response(codec: str) -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    for cut in range(len(data) + 1):
        ev = responses(codec, ["POST"], data, [cut])
        assert [getattr(e, "status", None) for e in ev] == [100, 201, None, None]
        assert ev[1].reason == "Created"
        assert ev[2:] == [h1.Data(b"x"), h1.EndOfMessage([])]


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(codec: str, status: int) -> None:
    ev = responses(
        codec,
        ["GET", "GET"],
        b"HTTP/1.1 %d X\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" % status,
    )
    assert [type(e) for e in ev] == [h1.ResponseHead, h1.EndOfMessage] * 2


def test_close_delimited_body_ends_at_eof(codec: str) -> None:
    ev = responses(codec, ["GET"], b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nsome body")
    assert not ev[0].keep_alive
    assert ev[1:] == [h1.Data(b"some body"), h1.EndOfMessage([])]


def test_chunked_response_with_trailers(codec: str) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    )
    ev = responses(codec, ["GET"], data, list(range(len(data))))
    assert ev[0].chunked and ev[0].keep_alive
    assert ev[1:] == [h1.Data(b"abc"), h1.EndOfMessage([("grpc-status", "0")])]


def test_response_cl_and_te_rejected(codec: str) -> None:
    ev = responses(
        codec,
        ["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert error_of(ev) == 400


def test_switching_protocols_response_keeps_trailing_bytes(codec: str) -> None:
    p = h1.make_client_parser(codec)
    p.expect("GET")
    p.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nF"
    )
    assert p.next_event().status == 101
    assert p.next_event() == h1.EndOfMessage([])
    p.start_next_cycle()
    assert p.next_event() is h1.PAUSED
    p.feed(b"G")
    assert p.trailing_data() == b"FG"


def test_2xx_to_connect_opens_the_tunnel(codec: str) -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\r\n\r\nTUNNEL"
    for cut in range(len(data) + 1):
        p = h1.make_client_parser(codec)
        p.expect("CONNECT")
        for chunk in split(data, [cut]):
            p.feed(chunk)
        assert p.next_event().status == 100
        head = p.next_event()
        assert (head.status, head.headers) == (200, [("x-a", "b")])
        assert p.next_event() == h1.EndOfMessage([])
        assert p.next_event() is h1.PAUSED
        p.feed(b"+more")
        assert p.trailing_data() == b"TUNNEL+more"


def test_refused_connect_response_has_its_body(codec: str) -> None:
    data = b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 3\r\n\r\nno!"
    for cut in range(len(data) + 1):
        ev = responses(codec, ["CONNECT"], data, [cut])
        assert ev[0].status == 407
        assert b"".join(e.data for e in ev if type(e) is h1.Data) == b"no!"
        assert ev[-1] == h1.EndOfMessage([])


def test_codec_selection(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOPROXY_H1_CODEC", codec)
    assert h1.resolve_codec() == codec
    assert type(h1.make_server_parser()).__module__.endswith("_" + codec)
    monkeypatch.delenv("TRIOPROXY_H1_CODEC")
    assert h1.resolve_codec() == "httptools"
    with pytest.raises(ValueError, match="unknown"):
        h1.make_client_parser("picohttp")


def test_upgrade_request_body_belongs_to_the_new_protocol(codec: str) -> None:
    p = h1.make_server_parser(codec)
    p.feed(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nab")
    assert p.next_event().upgrade == "x"
    assert p.next_event() == h1.EndOfMessage([])
    assert p.trailing_data() == b"ab"


@pytest.mark.parametrize(
    "trailer", [b"A: b\r\n c\r\n", b"A: b\nB: c\r\n", b"A: b\x01\r\n", b"A : b\r\n"]
)
def test_trailers_held_to_the_header_grammar(codec: str, trailer: bytes) -> None:
    msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    msg += trailer + b"\r\n"
    assert error_of(parse_requests(codec, msg)) == 400
    assert error_of(parse_requests(codec, msg, list(range(len(msg))))) == 400


def test_empty_lines_before_a_request_are_ignored(codec: str) -> None:
    ev = parse_requests(codec, b"\r\n\r\nGET  /x  HTTP/1.1\r\n\r\n")
    assert ev[0].target == "/x"


def _finish_message(p: Any) -> None:
    """Read one whole request from ``p`` and start the next cycle."""
    assert type(p.next_event()) is h1.RequestHead
    ev = p.next_event()
    while type(ev) is h1.Data:
        ev = p.next_event()
    assert type(ev) is h1.EndOfMessage
    p.start_next_cycle()


def test_at_rest_only_between_messages_with_nothing_ahead(codec: str) -> None:
    # An idle keep-alive connection gives its parser back to a pool only at rest; a parser
    # holding any part of the next request must stay with its connection.
    p = h1.make_server_parser(codec)
    assert p.at_rest()
    p.feed(GET)
    assert not p.at_rest()  # a request waiting to be read
    _finish_message(p)
    assert p.at_rest()
    p.feed(GET + GET[:5])  # a pipelined request, and the start of the next
    _finish_message(p)
    assert not p.at_rest()  # b"GET /" is parsed ahead
    assert p.next_event() is h1.NEED_DATA
    p.feed(GET[5:])
    _finish_message(p)
    assert p.at_rest()


@pytest.mark.parametrize(
    "wire",
    [
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",  # nothing may follow
        b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",  # an error
    ],
)
def test_not_at_rest_after_close_upgrade_or_error(codec: str, wire: bytes) -> None:
    p = h1.make_server_parser(codec)
    p.feed(wire)
    with pytest.raises(ProtocolError) if b"x\r" in wire else contextlib.nullcontext():
        ev = p.next_event()
        while ev is not h1.PAUSED and ev is not h1.NEED_DATA:
            ev = p.next_event()
    p.start_next_cycle()
    assert not p.at_rest()


def test_pool_hands_out_parsers_as_good_as_new(codec: str) -> None:
    pool = h1.ServerParserPool(codec, max_header_bytes=100, max_headers=3)
    p = pool.take()
    p.feed(GET)
    _finish_message(p)
    pool.give(p)
    q = pool.take()
    assert q is p  # reused
    q.feed(b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(4)) + b"\r\n")
    with pytest.raises(ProtocolError):  # the pool's limits hold for reused parsers too
        q.next_event()
    pool.give(q)  # not at rest: dropped
    r = pool.take()
    assert r is not q
    r.feed(GET[:5])
    pool.give(r)  # holds part of a request: dropped
    assert pool.take() is not r


def test_h2c_upgrade_is_a_plain_request_and_the_next_one_follows(codec: str) -> None:
    # As in Envoy, an h2c upgrade is not taken: the request is an ordinary one, and the
    # bytes after it are the next request, not HTTP/2.
    h2c = (
        b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    p = h1.make_server_parser(codec)
    p.feed(h2c + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    first = p.next_event()
    assert (first.target, first.upgrade, first.keep_alive) == ("/a", None, True)
    assert type(p.next_event()) is h1.EndOfMessage
    p.start_next_cycle()
    second = p.next_event()
    assert second.target == "/b"
    assert type(p.next_event()) is h1.EndOfMessage
    p.start_next_cycle()
    assert p.at_rest()
