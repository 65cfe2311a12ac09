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


def make_client_parser(codec: str | None = None, **limits: int) -> Any:
    """A response parser (upstream side); call ``expect(method)`` before each response."""
    if resolve_codec(codec) == "httptools":
        from trioproxy.http.h1 import _httptools

        return _httptools.ClientParser(**limits)
    from trioproxy.http.h1 import _h11

    return _h11.ClientParser(**limits)
