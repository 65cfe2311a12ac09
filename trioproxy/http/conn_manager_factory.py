"""Registers the HTTP connection manager as the terminal network filter
``envoy.filters.network.http_connection_manager`` — through the same hook a plugin uses."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import trio

from trioproxy.context import BuildContext
from trioproxy.hookspecs import hookimpl
from trioproxy.http.conn_manager import Http1Connection
from trioproxy.http.conn_manager_config import HcmConfig, ListenerHttpStats
from trioproxy.http.h2_connection import PREFACE, Http2Connection, is_preface
from trioproxy.network.filter import DownstreamConnection, Parked, TerminalNetworkFilter
from trioproxy.registry import NetworkFilterFactory

NAME = "envoy.filters.network.http_connection_manager"
TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


class HttpConnectionManager(TerminalNetworkFilter):
    def __init__(self, config: HcmConfig) -> None:
        self.config = config
        self._listener_stats: dict[str, ListenerHttpStats] = {}

    async def handle_connection(self, conn: DownstreamConnection) -> Parked | None:
        prefix = conn.listener_stats.prefix
        lstats = self._listener_stats.get(prefix)
        if lstats is None:
            lstats = self._listener_stats[prefix] = ListenerHttpStats(
                conn.listener_stats.scope(f"http.{self.config.stat_prefix}.")
            )
        codec = self.config.codec_type
        if codec == "HTTP1":
            return await Http1Connection(conn, self.config, lstats).run()
        if codec == "HTTP2" or conn.info.alpn == "h2":
            await Http2Connection(conn, self.config, lstats).run()
            return None
        if conn.info.tls:
            return await Http1Connection(conn, self.config, lstats).run()
        # AUTO on plaintext: HTTP/2 with prior knowledge starts with the connection preface.
        verdict = await _peek_preface(conn)
        if verdict is None:
            # Closed before a byte: no codec was chosen, so none is counted (as in Envoy).
            st = self.config.stats
            st.downstream_cx_total.value += 1
            st.downstream_cx_destroy.value += 1
            st.downstream_cx_destroy_remote.value += 1
        elif verdict:
            await Http2Connection(conn, self.config, lstats).run()
        else:
            return await Http1Connection(conn, self.config, lstats).run()
        return None


async def _peek_preface(conn: DownstreamConnection) -> bool | None:
    """Whether the client's first bytes are the HTTP/2 preface, read without consuming them
    (MSG_PEEK), so the HTTP/1.1 codec still sees every byte; ``None`` when the client closed
    without sending anything."""
    sock = conn.transport.socket
    for _ in range(200):  # a preface split over packets: a few ms at most
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(len(PREFACE), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            return False
        if not data:
            return None
        verdict = is_preface(data)
        if verdict is not None:
            return bool(verdict)
        await trio.sleep(0.005)
    return False


def _create(raw: Mapping[str, Any], ctx: BuildContext) -> HttpConnectionManager:
    return HttpConnectionManager(HcmConfig.from_proto(raw, ctx))


@hookimpl
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    # The config converter is the identity: building an HCM needs the whole BuildContext
    # (registry, cluster manager), which `create` receives.
    return [NetworkFilterFactory(NAME, (TYPE_URL,), create=_create, terminal=True)]
