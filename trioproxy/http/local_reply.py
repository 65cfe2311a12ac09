"""Local replies: the responses the proxy makes itself, shaped like Envoy's.

Envoy answers with ``content-type: text/plain`` and a short body for most local replies (``no
healthy upstream``, ``upstream request timeout`` …), an empty body for 404 no-route, and always
``content-length``, ``date`` and ``server``.
"""

from __future__ import annotations

from email.utils import formatdate

from trioproxy.http.filter import LocalReply
from trioproxy.http.headers import Headers

NO_ROUTE = LocalReply(404, b"", details="route_not_found", flag="NR")
NO_HEALTHY_UPSTREAM = LocalReply(
    503, b"no healthy upstream", details="no_healthy_upstream", flag="UH"
)
UPSTREAM_TIMEOUT = LocalReply(
    504, b"upstream request timeout", details="upstream_response_timeout", flag="UT"
)
OVERFLOW = LocalReply(
    503,
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
    details="upstream_reset_before_response_started{overflow}",
    flag="UO",
)
REQUEST_TIMEOUT = LocalReply(408, b"request timeout", details="request_overall_timeout")
STREAM_TIMEOUT = LocalReply(408, b"stream timeout", details="stream_idle_timeout")
HEADER_TIMEOUT = LocalReply(408, b"request header read timeout", details="request_header_timeout")
FILTER_ERROR = LocalReply(500, b"filter error", details="filter_raised_exception")

_date_cache: tuple[int, str] = (0, "")


def http_date(now: float) -> str:
    """RFC 7231 date, cached per second (formatting costs more than the request)."""
    global _date_cache
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, formatdate(sec, usegmt=True))
    return _date_cache[1]


def reply_headers(
    reply: LocalReply, server_name: str, now: float, head_only: bool = False
) -> Headers:
    h = Headers([(":status", str(reply.status))])
    items = h.items()
    if reply.body:
        items.append(("content-length", str(len(reply.body))))
        items.append(("content-type", "text/plain"))
    else:
        items.append(("content-length", "0"))
    for name, value in reply.headers:
        h.set(name.lower(), value)
    items.append(("date", http_date(now)))
    items.append(("server", server_name))
    return h
