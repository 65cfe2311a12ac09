"""Message hygiene shared by both parser backends.

Each backend turns the wire into (method/status, target, version, header list); everything
that decides framing and policy happens here, once, so httptools and h11 cannot disagree:
``analyse`` checks Content-Length / Transfer-Encoding rules from /work/shared/DEFAULTS.md and
computes keep-alive, chunked, content length, ``Expect: 100-continue`` and upgrade.
``check_head_bytes`` is the strict line grammar (bare LF, obs-fold, control characters,
whitespace before the colon) that llhttp enforces natively; the h11 backend runs it on the raw
head before h11 sees it, since h11 tolerates all of those.

Status choices (Envoy's answers): framing errors are 400 ``http1.codec_error``-style; a
Transfer-Encoding other than exactly ``chunked`` is 501 ``http1.invalid_transfer_encoding``
(Envoy's codec answers NotImplemented); any repeated Content-Length is 400, as llhttp does.
``check_connect`` holds a CONNECT request to what Envoy 1.40's codec accepts (measured).
"""

from __future__ import annotations

import re
from typing import Final

from trioproxy.errors import ProtocolError

# llhttp's HTTP method table (the request methods it accepts; anything else is 400).
KNOWN_METHODS: Final = frozenset(
    (
        "DELETE",
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "COPY",
        "LOCK",
        "MKCOL",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "SEARCH",
        "UNLOCK",
        "BIND",
        "REBIND",
        "UNBIND",
        "ACL",
        "REPORT",
        "MKACTIVITY",
        "CHECKOUT",
        "MERGE",
        "M-SEARCH",
        "NOTIFY",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PATCH",
        "PURGE",
        "MKCALENDAR",
        "LINK",
        "UNLINK",
        "SOURCE",
        "QUERY",
    )
)

CODEC_ERROR: Final = "http1.codec_error"
HEADERS_TOO_LARGE: Final = "http1.headers_too_large"
TOO_MANY_HEADERS: Final = "http1.too_many_headers"
URI_TOO_LONG: Final = "http1.uri_too_long"
INVALID_CHARACTERS: Final = "http1.invalid_characters"
CL_AND_TE: Final = "http1.content_length_and_chunked_not_allowed"
INVALID_TE: Final = "http1.invalid_transfer_encoding"
TE_NOT_ALLOWED: Final = "http1.transfer_encoding_not_allowed"
INVALID_URL: Final = "http1.invalid_url"
BODY_DISALLOWED: Final = "http1.body_disallowed"


def error(reason: str, details: str = CODEC_ERROR, status: int = 400) -> ProtocolError:
    return ProtocolError(reason, status_hint=status, close=True, details=details)


def too_large() -> ProtocolError:
    return error("header block too large", HEADERS_TOO_LARGE, 431)


def too_many() -> ProtocolError:
    return error("too many headers", TOO_MANY_HEADERS, 431)


def uri_too_long() -> ProtocolError:
    return error("request URI too long", URI_TOO_LONG, 414)


#: A CONNECT target in authority form (RFC 9110 §9.3.6): a host (a reg-name, an IPv4
#: address or a bracketed IPv6 literal) and a port, which is required.
_CONNECT_TARGET: Final = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+):([0-9]{1,5})"
)


def check_connect(target: str, chunked: bool, length: int | None) -> None:
    """A CONNECT request head as Envoy's codec takes it: no Transfer-Encoding (501
    ``http1.invalid_transfer_encoding``), no body (a Content-Length other than 0 is 400
    ``http1.body_disallowed``) and an authority-form target, ``host:port`` with a port up to
    65535 (anything else, a path or an absolute URL included, is 400 ``http1.invalid_url``)."""
    if chunked:
        raise error("Transfer-Encoding in a CONNECT request", INVALID_TE, 501)
    if length:
        raise error("a CONNECT request with a body", BODY_DISALLOWED)
    m = _CONNECT_TARGET.fullmatch(target)
    if m is None or int(m.group(2)) > 65535:
        raise error(f"invalid CONNECT target {target[:64]!r}", INVALID_URL)


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",")]


def analyse(
    headers: list[tuple[str, str]], version: str, is_request: bool
) -> tuple[bool, bool, int | None, bool, str | None]:
    """(keep_alive, chunked, content_length, expect_continue, upgrade_value) or ProtocolError.

    ``headers`` have lower-case names.  The common case (no framing or connection headers)
    costs one pass of string comparisons.
    """
    if version != "1.1" and version != "1.0":
        raise error(f"unsupported HTTP version {version}")
    cl: str | None = None
    te: str | None = None
    conn: str | None = None
    upgrade: str | None = None
    expect = False
    for name, value in headers:
        c = name[0]
        if c == "c":
            if name == "content-length":
                if cl is not None:
                    raise error("repeated Content-Length")
                cl = value
            elif name == "connection":
                conn = value if conn is None else f"{conn},{value}"
        elif c == "t":
            if name == "transfer-encoding":
                te = value if te is None else f"{te},{value}"
        elif c == "e":
            if name == "expect" and value.lower() == "100-continue":
                expect = True
        elif c == "u" and name == "upgrade" and value.strip():
            # several Upgrade lines are one list (RFC 9110 §5.3), empty members dropped
            upgrade = value if upgrade is None else f"{upgrade}, {value}"
    chunked = False
    length: int | None = None
    if te is not None:
        if cl is not None:
            raise error("both Content-Length and Transfer-Encoding", CL_AND_TE)
        if version == "1.0":
            raise error("Transfer-Encoding on HTTP/1.0", TE_NOT_ALLOWED)
        if te.strip().lower() != "chunked":
            raise error(f"unsupported Transfer-Encoding {te!r}", INVALID_TE, 501)
        chunked = True
    elif cl is not None:
        if not cl or not cl.isdigit() or not cl.isascii() or len(cl) > 18:
            raise error(f"malformed Content-Length {cl!r}")
        length = int(cl)
    if conn is None:
        keep_alive = version == "1.1"
        return keep_alive, chunked, length, expect, None
    toks = _tokens(conn)
    keep_alive = "close" not in toks and (version == "1.1" or "keep-alive" in toks)
    if not upgrade or "upgrade" not in toks:
        upgrade = None
    elif is_request and upgrade.strip().lower() == "h2c":
        # Like Envoy: h2c upgrades are not supported, so the request is served as a plain
        # HTTP/1.1 one (its Upgrade, Connection and HTTP2-Settings headers are hop-by-hop).
        upgrade = None
    return keep_alive, chunked, length, expect, upgrade


_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_LF: Final = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def check_head_bytes(block: bytes) -> list[tuple[str, str]]:
    """Validate a raw header block (lines after the start line, without the blank line).

    Returns the parsed header list; raises ProtocolError for obs-fold, bare CR/LF, control
    characters in values and names that are not tokens (including whitespace before ':').
    """
    if _BARE_LF.search(block):
        raise error("bare CR or LF in header block")
    out: list[tuple[str, str]] = []
    if not block:
        return out
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            raise error("obsolete line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise error(f"invalid header name {name[:40]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise error("control character in header value", INVALID_CHARACTERS)
        out.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return out


def check_start_bytes(line: bytes) -> None:
    """The request/status line grammar llhttp enforces (single spaces, no control chars)."""
    if _BARE_LF.search(line) or _BAD_VALUE.search(line):
        raise error("invalid start line")
