"""httptools and h11 must agree: same events (Data merged) or the same error status.

Hypothesis builds valid and near-valid messages (framing header combinations, bad bytes in
the head, bad chunk sizes, pipelining) and feeds them to both backends in the same random
splits, bad chunk lines and trailers included.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.http import h1

from .helpers import run, split

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "FOO"])
TARGETS = st.sampled_from(
    ["/", "/a/b?c=d", "*", "/%20x", "http://h/p", "/<{|}>", "/a\tb", "/\xff", "/\x7f", "/#f"]
)
SPACES = st.sampled_from([" ", " ", "  "])
LEADING = st.sampled_from([b"", b"", b"\r\n", b"\n"])
NAMES = st.sampled_from(["host", "X-Thing", "accept", "Connection", "Expect", "upgrade", "a_b"])
VALUES = st.sampled_from(
    [
        "x",
        "",
        "close",
        "keep-alive",
        "100-continue",
        "  padded  ",
        "a\tb",
        "caf\xe9",
        "websocket",
        "upgrade, keep-alive",
    ]
)
TE = st.sampled_from(["chunked", "Chunked", "gzip", "gzip, chunked", " chunked "])
CL = st.sampled_from(["0", "3", "5", "abc", "-1", "+3", "3,3", "99999999999999999999"])
BAD_BYTES = st.sampled_from([b"\n", b"\r\n ", b"\x01", b"\x7f", b" :", b"\x00", b"\r"])


@st.composite
def body_and_framing(draw: Any, version: str) -> tuple[list[tuple[str, str]], bytes]:
    kind = draw(st.sampled_from(["none", "cl", "chunked", "te-other", "both", "cl-twice"]))
    body = draw(st.binary(max_size=12))
    if kind == "none":
        return [], b""
    if kind == "cl":
        return [("Content-Length", str(len(body)))], body
    if kind == "cl-twice":
        return [("Content-Length", draw(CL)), ("Content-Length", draw(CL))], body
    if kind == "both":
        return [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")], body
    if kind == "te-other":
        return [("Transfer-Encoding", draw(TE))], b"0\r\n\r\n"
    n = len(body)
    size = draw(st.sampled_from([f"{n:x}", f"{n:X}", "zz", f"{n:x};e=1", f"{n:x} ", f"0{n:x}"]))
    chunked = (size.encode() + b"\r\n" + body + b"\r\n") if body else b""
    trailer = draw(
        st.sampled_from(
            [
                b"",
                b"T: v\r\n",
                b"Grpc-Status: 0\r\nX: y\r\n",
                b"A: b\r\n c\r\n",
                b"A: b\nB: c\r\n",
                b"A: \x01\r\n",
                b"A : b\r\n",
            ]
        )
    )
    return [("Transfer-Encoding", "chunked")], chunked + b"0\r\n" + trailer + b"\r\n"


@st.composite
def request(draw: Any) -> bytes:
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    sp1, sp2 = draw(SPACES), draw(SPACES)
    line = f"{draw(METHODS)}{sp1}{draw(TARGETS)}{sp2}HTTP/{version}\r\n".encode("latin-1")
    line = draw(LEADING) + line
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=4))
    framing, body = draw(body_and_framing(version))
    headers += framing
    headers = draw(st.permutations(headers))
    head = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers)
    if draw(st.booleans()) and head:
        pos = draw(st.integers(0, len(head) - 1))
        bad: bytes = draw(BAD_BYTES)
        head = head[:pos] + bad + head[pos:]
    out: bytes = line + head + b"\r\n" + body
    return out


@st.composite
def response(draw: Any) -> tuple[str, bytes]:
    method = draw(st.sampled_from(["GET", "HEAD", "POST"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    framing, body = draw(body_and_framing(version))
    if method == "HEAD" or status in (204, 304):
        body = b""
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=3)) + framing
    head = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers)
    if draw(st.booleans()) and head:
        pos = draw(st.integers(0, len(head) - 1))
        head = head[:pos] + draw(BAD_BYTES) + head[pos:]
    line = f"HTTP/{version} {status} Whatever\r\n".encode()
    return method, interim + line + head + b"\r\n" + body


@settings(max_examples=400, deadline=None)
@given(st.lists(request(), min_size=1, max_size=3), st.lists(st.integers(0, 400), max_size=4))
def test_requests_agree(reqs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(reqs)
    chunks = split(data, cuts)
    fast = run(h1.make_server_parser("httptools"), chunks)
    slow = run(h1.make_server_parser("h11"), chunks)
    assert fast == slow, data


@settings(max_examples=300, deadline=None)
@given(response(), st.lists(st.integers(0, 300), max_size=3))
def test_responses_agree(resp: tuple[str, bytes], cuts: list[int]) -> None:
    method, data = resp
    results = []
    for codec in ("httptools", "h11"):
        p = h1.make_client_parser(codec)
        p.expect(method)
        results.append(run(p, split(data, cuts), cycle=False))
    assert results[0] == results[1], data
