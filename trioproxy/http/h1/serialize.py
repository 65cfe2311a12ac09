"""HTTP/1.1 serialisation shared by both parser backends.

The last line of defence before bytes hit a socket: header names must be tokens and no name or
value may contain CR, LF or NUL (an h2 peer can put anything in a header; relaying it raw would
allow response splitting). The check counts CR and LF over the whole block and looks each name
up in a set of names already found to be tokens; only a new name meets the regex.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from trioproxy.errors import ProtocolError

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Header names already checked, bounded in number and length: a peer's made-up names
#: cannot pin more than 4096 x 64 characters.
_KNOWN_TOKENS: Final[set[str]] = set()
_KNOWN_TOKENS_MAX: Final = 4096
_KNOWN_TOKEN_LENGTH: Final = 64
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")
#: ``header_key_format: {proper_case_words: {}}``: name -> proper-cased name,
#: bounded as ``_KNOWN_TOKENS`` is.
_PROPER: Final[dict[str, str]] = {}
_LOWER: Final = frozenset("abcdefghijklmnopqrstuvwxyz")
_ALNUM: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_REASONS: Final = {int(s): s.phrase for s in HTTPStatus}
_LAST_CHUNK: Final = b"0\r\n\r\n"

Headers = list[tuple[str, str]] | tuple[tuple[str, str], ...]


def _refuse(what: str) -> ProtocolError:
    return ProtocolError(what, status_hint=502, close=True, details="http1.invalid_characters")


def proper_case(name: str) -> str:
    """Envoy's ``proper_case_words``: the first character and every letter after a
    character that is not an ASCII letter or digit upper-cased (``x-b3-traceid`` ->
    ``X-B3-Traceid``, ``te`` -> ``Te``); nothing else changes."""
    out = _PROPER.get(name)
    if out is not None:
        return out
    chars = []
    capital = True
    for c in name:
        if capital and c in _LOWER:
            c = c.upper()
        chars.append(c)
        capital = c not in _ALNUM
    out = "".join(chars)
    if len(_PROPER) < _KNOWN_TOKENS_MAX and len(name) <= _KNOWN_TOKEN_LENGTH:
        _PROPER[name] = out
    return out


def _encode_fields(lines: list[str], headers: Headers, proper: bool = False) -> None:
    """Append the header lines, checked in bulk: a count of CR and LF over the whole block
    (each line has exactly one of each), and each name against the set of names already
    found to be tokens (a regex only for a name not seen before). ``proper``: names are
    written proper-cased (``header_key_format``)."""
    if not headers:
        return
    if proper:
        headers = [(proper_case(name), value) for name, value in headers]
    block = "".join([f"{name}: {value}\r\n" for name, value in headers])
    n = len(headers)
    if block.count("\r") != n or block.count("\n") != n or "\x00" in block:
        _find_invalid(headers)
    tokens = _KNOWN_TOKENS
    for name, _ in headers:
        if name not in tokens:
            if _TOKEN.fullmatch(name) is None:
                _find_invalid(headers)
            if len(tokens) < _KNOWN_TOKENS_MAX and len(name) <= _KNOWN_TOKEN_LENGTH:
                tokens.add(name)
    lines.append(block)


def _find_invalid(headers: Headers) -> None:
    """The slow path: say which header is bad."""
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise _refuse(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise _refuse(f"invalid character in header {name!r}")
    raise _refuse("invalid header block")  # pragma: no cover - a check above fires first


def encode_request_head(method: str, target: str, headers: Headers, proper: bool = False) -> bytes:
    """``METHOD target HTTP/1.1`` plus headers; refuses CR/LF/NUL and non-token names.
    ``proper``: header names proper-cased."""
    if _TOKEN.fullmatch(method) is None:
        raise _refuse(f"invalid method {method!r}")
    if not target or any(c in target for c in " \r\n\x00"):
        raise _refuse(f"invalid request target {target!r}")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    _encode_fields(lines, headers, proper)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def encode_response_head(
    status: int, reason: str, headers: Headers, version: str = "1.1", proper: bool = False
) -> bytes:
    """``HTTP/<version> status reason`` plus headers; the reason defaults to the standard one.
    ``proper``: header names proper-cased."""
    if not reason:
        reason = _REASONS.get(status, "Unknown")
    elif _BAD_VALUE.search(reason):
        raise _refuse("invalid reason phrase")
    lines = [f"HTTP/{version} {status} {reason}\r\n"]
    _encode_fields(lines, headers, proper)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """One chunk; empty data encodes to nothing (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers, proper: bool = False) -> bytes:
    """The terminating zero-length chunk with optional trailers (``proper``: their names
    proper-cased)."""
    if not trailers:
        return _LAST_CHUNK
    lines = ["0\r\n"]
    _encode_fields(lines, trailers, proper)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
