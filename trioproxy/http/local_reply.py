"""Local replies: the responses the proxy makes itself, shaped like Envoy's.

Envoy answers with ``content-type: text/plain`` and a short body for most local replies (``no
healthy upstream``, ``upstream request timeout`` …), an empty body for 404 no-route, and always
``content-length``, ``date`` and ``server``.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING

from trioproxy.http.filter import LocalReply
from trioproxy.http.headers import Headers
from trioproxy.http.stream_info import StreamInfo

if TYPE_CHECKING:
    from trioproxy.http.local_reply_config import LocalReplyConfig

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
#: The stream idle timeout once the whole request was in: what timed out was the wait for the
#: upstream, so 504 (Envoy's ``maybeRequestTimeoutCode``).
STREAM_TIMEOUT_GATEWAY = LocalReply(504, b"stream timeout", details="stream_idle_timeout")
HEADER_TIMEOUT = LocalReply(408, b"request header timeout", details="request_header_timeout")
FILTER_ERROR = LocalReply(500, b"filter error", details="filter_raised_exception")

# Envoy's Grpc::Utility::httpToGrpcStatus.
_GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def for_request(
    reply: LocalReply,
    request_headers: Headers | None,
    info: StreamInfo | None = None,
    mapper: LocalReplyConfig | None = None,
) -> LocalReply:
    """``reply`` as sent for this request, as Envoy's ``prepareLocalReply``: its flag and
    details recorded; rewritten by the connection manager's ``local_reply_config``
    (``mapper``); then, to a gRPC request, as a trailers-only response: ``:status 200`` with
    ``grpc-status`` (the reply's ``grpc_status``, else mapped from the HTTP status as Envoy
    maps it) and ``grpc-message`` (the reply's text, percent-encoded), and no body."""
    if info is not None:
        if reply.flag:
            info.response_flags.add(reply.flag)
        info.response_code_details = reply.details or "via_local_reply"
        if mapper is not None:
            reply = mapper.rewrite(reply, info)
    if request_headers is None:
        return reply
    ctype = request_headers.get("content-type") or ""
    if not ctype.startswith("application/grpc"):
        return reply
    headers = [(k, v) for k, v in reply.headers if k != "content-type"]
    json = ("content-type", "application/json") in reply.headers
    headers.append(("content-type", "application/grpc"))
    if not any(k == "grpc-status" for k, _ in headers):
        code = reply.grpc_status
        headers.append(("grpc-status", str(code if code is not None else _grpc(reply.status))))
    if reply.body:
        body = reply.body
        if json and body.endswith(b"\n"):  # (as Envoy: a JSON body format's line end)
            body = body[:-1]
        headers.append(("grpc-message", grpc_percent_encode(body)))
    return LocalReply(200, b"", tuple(headers), details=reply.details, flag=reply.flag)


def _grpc(status: int) -> int:
    return _GRPC_STATUS.get(status, 2)


def grpc_percent_encode(value: bytes) -> str:
    """Envoy's ``PercentEncoding::encode`` of a grpc-message: bytes below space or from ``~``
    up, and ``%``, as ``%XX``."""
    return "".join(f"%{b:02X}" if b < 0x20 or b >= 0x7E or b == 0x25 else chr(b) for b in value)


_date_cache: tuple[int, str] = (0, "")


def http_date(now: float) -> str:
    """RFC 7231 date, cached per second (formatting costs more than the request)."""
    global _date_cache
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, formatdate(sec, usegmt=True))
    return _date_cache[1]


def reply_headers(reply: LocalReply, server_name: str, now: float) -> Headers:
    h = Headers([(":status", str(reply.status))])
    items = h.items()
    if reply.body:  # (an empty reply has no length here: the HTTP/1.1 codec adds
        # ``content-length: 0`` last, as Envoy's does, and HTTP/2 sends none)
        items.append(("content-length", str(len(reply.body))))
        items.append(("content-type", "text/plain"))
    for name, value in reply.headers:
        h.set(name.lower(), value)
    items.append(("date", http_date(now)))
    items.append(("server", server_name))
    return h
