"""HTTP/1.1 codec: one sans-IO interface, two backends (llhttp via httptools, and h11).

``make_server_parser`` / ``make_client_parser`` pick the backend: the ``codec`` argument,
else the ``TRIOPROXY_H1_CODEC`` environment variable, else httptools when importable.
Parsers are fed bytes (``b""`` is EOF) and hand out events from ``events``; serialisation is
our own code in ``serialize``, shared by both.
"""

from __future__ import annotations

import os
from typing import Any

from trioproxy.http.h1.events import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    Event,
    RequestHead,
    ResponseHead,
)
from trioproxy.http.h1.serialize import (
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
)

try:
    import httptools  # noqa: F401

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_HTTPTOOLS = False

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Data",
    "EndOfMessage",
    "Event",
    "RequestHead",
    "ResponseHead",
    "ServerParserPool",
    "encode_chunk",
    "encode_last_chunk",
    "encode_request_head",
    "encode_response_head",
    "make_client_parser",
    "make_server_parser",
    "resolve_codec",
]


def resolve_codec(codec: str | None = None) -> str:
    """The backend name to use: explicit, else $TRIOPROXY_H1_CODEC, else the fastest present."""
    if codec is None:
        codec = os.environ.get("TRIOPROXY_H1_CODEC") or None
    if codec is None:
        return "httptools" if HAVE_HTTPTOOLS else "h11"
    if codec not in ("httptools", "h11"):
        raise ValueError(f"unknown HTTP/1 codec {codec!r} (httptools or h11)")
    if codec == "httptools" and not HAVE_HTTPTOOLS:
        raise ValueError("HTTP/1 codec httptools requested but httptools is not installed")
    return codec


def make_server_parser(codec: str | None = None, **limits: int) -> Any:
    """A request parser (downstream side). ``limits``: max_header_bytes, max_headers, max_uri."""
    if resolve_codec(codec) == "httptools":
        from trioproxy.http.h1 import _httptools

        return _httptools.ServerParser(**limits)
    from trioproxy.http.h1 import _h11

    return _h11.ServerParser(**limits)


class ServerParserPool:
    """Request parsers shared by the connections of one connection manager config.

    A keep-alive connection waiting for its next request holds no parser (llhttp's and its
    callbacks are about 1.2 KiB): it gives its parser back here when the response is done and
    takes one (this one, another, or a new one) when the next request's first bytes arrive.
    ``give`` keeps a parser only at rest (between messages, nothing parsed ahead, nothing
    wrong; ``at_rest``), which makes it as good as a new one; a parser holding anything stays
    with its connection. At most ``MAX_FREE`` are kept: the pool holds what the busiest moment
    needed, bounded.
    """

    __slots__ = ("_codec", "_free", "_limits")

    MAX_FREE = 1024

    def __init__(self, codec: str | None = None, **limits: int) -> None:
        self._codec = codec
        self._limits = limits
        self._free: list[Any] = []

    def take(self) -> Any:
        free = self._free
        return free.pop() if free else make_server_parser(self._codec, **self._limits)

    def give(self, parser: Any) -> None:
        if len(self._free) < self.MAX_FREE and parser.at_rest():
            self._free.append(parser)


def make_client_parser(codec: str | None = None, **limits: int) -> Any:
    """A response parser (upstream side); call ``expect(method)`` before each response."""
    if resolve_codec(codec) == "httptools":
        from trioproxy.http.h1 import _httptools

        return _httptools.ClientParser(**limits)
    from trioproxy.http.h1 import _h11

    return _h11.ClientParser(**limits)
