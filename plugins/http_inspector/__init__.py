"""``envoy.filters.listener.http_inspector``: whether a plaintext connection speaks HTTP/1.0,
HTTP/1.1 or HTTP/2 (prior knowledge), from its first bytes peeked with ``MSG_PEEK``, so a
filter chain can match on ``application_protocols`` (``http/1.0``, ``http/1.1``, ``h2c``).
Connections already found to be TLS are left alone. Stats: ``http_inspector.*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trioproxy.context import BuildContext
from trioproxy.hookspecs import hookimpl
from trioproxy.listener.filter import AcceptedSocket, ListenerFilter, peek_until
from trioproxy.registry import ListenerFilterFactory
from trioproxy.stats import Counter, StatBlock

NAME = "envoy.filters.listener.http_inspector"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_INSPECT = 64 * 1024
_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.([01])\r?$")


class HttpInspectorStats(StatBlock):
    """``http_inspector.*``."""

    read_error: Counter
    http10_found: Counter
    http11_found: Counter
    http2_found: Counter
    http_not_found: Counter


def classify(data: bytes) -> str | None:
    """``"h2c"``, ``"http/1.1"``, ``"http/1.0"``, ``""`` (not HTTP) or None (need more)."""
    if PREFACE.startswith(data[: len(PREFACE)]):
        return "h2c" if len(data) >= len(PREFACE) else None
    line, sep, _ = data.partition(b"\n")
    if not sep:
        return None if len(data) < MAX_INSPECT and re.match(rb"^[A-Z]*( |$)", data) else ""
    m = _REQUEST_LINE.match(line)
    if m is None:
        return ""
    return "http/1.1" if m.group(1) == b"1" else "http/1.0"


class HttpInspector(ListenerFilter):
    def __init__(self, stats: HttpInspectorStats) -> None:
        self.stats = stats

    async def on_accept(self, sock: AcceptedSocket) -> bool:
        if sock.transport_protocol == "tls":
            return True
        st = self.stats
        kind = await peek_until(sock.socket, MAX_INSPECT, classify)
        if kind is None:
            st.read_error.value += 1
            return False
        if not kind:
            st.http_not_found.value += 1
            return True
        {"h2c": st.http2_found, "http/1.1": st.http11_found, "http/1.0": st.http10_found}[
            kind
        ].value += 1
        sock.application_protocols = (kind,)
        return True


def _create(config: Mapping[str, Any], ctx: BuildContext) -> HttpInspector:
    return HttpInspector(HttpInspectorStats(ctx.store.scope("http_inspector.")))


@hookimpl
def trioproxy_listener_filters() -> list[ListenerFilterFactory]:
    return [ListenerFilterFactory(NAME, (TYPE_URL,), create=_create)]
