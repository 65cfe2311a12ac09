"""Serialisation: round trips through both parsers, and refusal of injectable bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.errors import ProtocolError
from trioproxy.http import h1

from .helpers import BACKENDS, run

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
names = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: n not in ("content-length", "transfer-encoding", "connection", "upgrade")
)
values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
).map(str.strip)


def test_response_head_default_reason() -> None:
    assert h1.encode_response_head(404, "", [("content-length", "0")]) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    )
    assert h1.encode_response_head(200, "Fine", [], version="1.0") == b"HTTP/1.0 200 Fine\r\n\r\n"


def test_chunks() -> None:
    assert h1.encode_chunk(b"hello world!") == b"c\r\nhello world!\r\n"
    assert h1.encode_chunk(b"") == b""
    assert h1.encode_last_chunk([]) == b"0\r\n\r\n"
    assert h1.encode_last_chunk([("grpc-status", "0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", "a\r\nset-cookie: evil"),
        ("x", "a\nb"),
        ("x", "a\x00"),
        ("x y", "v"),
        ("x:", "v"),
        ("", "v"),
        ("x\r\n", "v"),
        ("é", "v"),
    ],
)
def test_refuses_injection(name: str, value: str) -> None:
    encoders: list[Callable[[], bytes]] = [
        lambda: h1.encode_request_head("GET", "/", [(name, value)]),
        lambda: h1.encode_response_head(200, "", [(name, value)]),
        lambda: h1.encode_last_chunk([(name, value)]),
    ]
    for encode in encoders:
        with pytest.raises((ProtocolError, ValueError)):
            encode()


def test_refuses_bad_request_line() -> None:
    with pytest.raises((ProtocolError, ValueError)):
        h1.encode_request_head("GET", "/a b", [])
    with pytest.raises((ProtocolError, ValueError)):
        h1.encode_request_head("G T", "/", [])


@pytest.mark.parametrize("codec", BACKENDS)
@given(headers=st.lists(st.tuples(names, values), max_size=6), body=st.binary(max_size=50))
def test_round_trip_request(codec: str, headers: list[tuple[str, str]], body: bytes) -> None:
    wire = h1.encode_request_head("POST", "/p?q", [*headers, ("transfer-encoding", "chunked")])
    wire += h1.encode_chunk(body) + h1.encode_last_chunk([("x-t", "1")])
    ev = run(h1.make_server_parser(codec), [wire])
    assert ev[0].headers == [*headers, ("transfer-encoding", "chunked")]
    assert ev[1:] == ([h1.Data(body)] if body else []) + [h1.EndOfMessage([("x-t", "1")])]


@pytest.mark.parametrize("codec", BACKENDS)
def test_round_trip_response(codec: str) -> None:
    wire = h1.encode_response_head(503, "", [("content-length", "2")]) + b"no"
    p = h1.make_client_parser(codec)
    p.expect("GET")
    ev = run(p, [wire], cycle=False)
    assert (ev[0].status, ev[0].reason) == (503, "Service Unavailable")
    assert ev[1:3] == [h1.Data(b"no"), h1.EndOfMessage([])]
