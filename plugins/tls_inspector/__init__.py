"""``envoy.filters.listener.tls_inspector``: SNI, ALPN and whether a connection is TLS at
all, read from the ClientHello with ``MSG_PEEK`` so the bytes stay for whoever terminates
(or passes through) the TLS. The filter chain can then match on ``server_names``,
``application_protocols`` and ``transport_protocol``. It waits for the ClientHello under the
listener's ``listener_filters_timeout``; a ClientHello over 16 KiB (Envoy's limit) closes the
connection. Stats: ``tls_inspector.*``, process-wide as in Envoy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.context import BuildContext
from trioproxy.hookspecs import hookimpl
from trioproxy.listener.filter import AcceptedSocket, ListenerFilter, peek_until
from trioproxy.registry import ListenerFilterFactory
from trioproxy.stats import Counter, StatBlock

from .client_hello import NEED_MORE, NOT_TLS, ClientHello, parse

NAME = "envoy.filters.listener.tls_inspector"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
MAX_CLIENT_HELLO = 16 * 1024
TOO_LARGE = object()


class TlsInspectorStats(StatBlock):
    """``tls_inspector.*``."""

    client_hello_too_large: Counter
    tls_found: Counter
    tls_not_found: Counter
    alpn_found: Counter
    alpn_not_found: Counter
    sni_found: Counter
    sni_not_found: Counter
    connection_closed: Counter
    read_error: Counter


class TlsInspector(ListenerFilter):
    def __init__(self, stats: TlsInspectorStats) -> None:
        self.stats = stats

    async def on_accept(self, sock: AcceptedSocket) -> bool:
        st = self.stats

        def decide(data: bytes) -> object | None:
            found = parse(data)
            if found is NEED_MORE:
                return TOO_LARGE if len(data) > MAX_CLIENT_HELLO else None
            return found

        found = await peek_until(sock.socket, MAX_CLIENT_HELLO, decide)
        if found is None:
            st.connection_closed.value += 1
            return False
        if found is TOO_LARGE:
            st.client_hello_too_large.value += 1
            return False
        if found is NOT_TLS:
            st.tls_not_found.value += 1
            sock.transport_protocol = sock.transport_protocol or "raw_buffer"
            return True
        assert isinstance(found, ClientHello)
        st.tls_found.value += 1
        sock.transport_protocol = "tls"
        if found.server_name:
            st.sni_found.value += 1
            sock.server_name = found.server_name
        else:
            st.sni_not_found.value += 1
        if found.alpn:
            st.alpn_found.value += 1
            sock.application_protocols = found.alpn
        else:
            st.alpn_not_found.value += 1
        return True


def _create(config: Mapping[str, Any], ctx: BuildContext) -> TlsInspector:
    return TlsInspector(TlsInspectorStats(ctx.store.scope("tls_inspector.")))


@hookimpl
def trioproxy_listener_filters() -> list[ListenerFilterFactory]:
    return [ListenerFilterFactory(NAME, (TYPE_URL,), create=_create)]
