"""Opening one upstream TCP connection: the part the HTTP pool and tcp_proxy share.

``open_connection`` binds the socket first when the cluster asks for a source address
(``upstream_bind_config``; Istio's inbound passthrough binds 127.0.0.6 so that its own traffic
is told apart by iptables), connects under the cluster's ``connect_timeout`` as a cancel-scope
deadline, and counts what Envoy counts for every connection attempt: ``upstream_cx_total``,
``upstream_cx_active``, ``upstream_cx_connect_fail`` / ``upstream_cx_connect_timeout`` (and
``upstream_cx_destroy_{remote,local}`` for them, as Envoy),
``upstream_cx_connect_ms``, the ``max_connections`` breaker and the host's ``cx_*``.
``close_connection`` undoes the gauges and records ``upstream_cx_length_ms``. Failures raise
``UpstreamError(flag="UF")``.

A cluster with an ``UpstreamTlsContext`` gets a ``TlsUpstream``: the TLS handshake (SNI, ALPN,
certificate verification against ``trusted_ca``, client certificate) is part of connecting,
under the same timeout, and counts ``cluster.<name>.ssl.handshake``, or its failure as Envoy
does (``_handshake_failed``; a handshake that times out is a connect timeout). It offers what
pools and tcp_proxy use of a plain socket stream (``socket``, ``closed``, ``close()``).
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import TYPE_CHECKING, Any

import trio

from trioproxy.errors import UpstreamError
from trioproxy.io import FastSocketStream
from trioproxy.tls_stream import TlsStream
from trioproxy.upstream.circuit_breaker import CircuitBreakers
from trioproxy.upstream.host import Host
from trioproxy.upstream.stats import ClusterStats

if TYPE_CHECKING:
    from trioproxy.upstream.config import ClusterConfig
    from trioproxy.upstream.tls import UpstreamTls


class TlsUpstream(trio.abc.Stream):
    """A TLS connection to an upstream, with the plain stream's synchronous parts."""

    def __init__(self, tls: TlsStream, transport: FastSocketStream) -> None:
        self.tls = tls
        self.transport = transport

    @property
    def socket(self) -> socket.socket:
        return self.transport.socket

    @property
    def closed(self) -> bool:
        return self.transport.closed

    def selected_alpn_protocol(self) -> str | None:
        return self.tls.selected_alpn_protocol()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.tls.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.tls.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.tls.receive_some(max_bytes)

    async def send_eof(self) -> None:
        """TLS has no half-close: the connection stays open until either side closes."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.transport.close()


UpstreamStream = FastSocketStream | TlsUpstream


async def open_connection(
    host: Host, stats: ClusterStats, breakers: CircuitBreakers, config: ClusterConfig
) -> tuple[UpstreamStream, float]:
    """A connected stream to ``host`` and the ``trio.current_time()`` it connected at, with
    the cluster's ``connect_timeout``, ``upstream_bind_config`` and TLS context."""
    connect_timeout = config.connect_timeout
    source_address = config.source_address
    keepalive = config.tcp_keepalive
    tls: UpstreamTls | None = config.upstream_tls
    tls_stats = stats.scope
    breakers.connections.inc()
    stats.upstream_cx_total.value += 1
    stats.upstream_cx_active.value += 1
    host.cx_total += 1
    host.cx_active += 1
    start = trio.current_time()
    address = host.address
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    ok = False
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive is not None:
            set_keepalive(raw, keepalive)
        if source_address is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raw.bind(source_address)
        tsock = trio.socket.from_stdlib_socket(raw)
        with trio.move_on_after(connect_timeout) as scope:
            await tsock.connect(address)
        if scope.cancelled_caught:
            stats.upstream_cx_connect_timeout.value += 1
            _connect_failed(host, stats, remote=False)
            raise UpstreamError(
                f"connect to {address[0]}:{address[1]} timed out", flag="UF", timeout=True
            )
        ok = True
    except OSError as e:
        _connect_failed(host, stats, remote=True)
        # (Envoy's words; a connect on this non-blocking socket fails once it is under way)
        raise UpstreamError(
            f"connect to {address[0]}:{address[1]} failed: {e.strerror or e}",
            flag="UF",
            transport=f"delayed connect error: {os.strerror(e.errno) if e.errno else e}",
        ) from None
    finally:
        if not ok:
            raw.close()
            connection_gone(host, stats, breakers)
    plain = FastSocketStream(raw)
    stream: UpstreamStream = plain
    if tls is not None:
        ssl_stream = TlsStream(
            plain, tls.context, server_side=False, server_hostname=tls.sni or None
        )
        shaken = False
        try:
            with trio.fail_after(max(connect_timeout - (trio.current_time() - start), 0.001)):
                await ssl_stream.do_handshake()
            shaken = True
        except trio.TooSlowError:
            # the connect timeout covers the handshake, as Envoy's does
            stats.upstream_cx_connect_timeout.value += 1
            _connect_failed(host, stats, remote=False)
            raise UpstreamError(
                f"TLS handshake with {address[0]}:{address[1]} timed out", flag="UF", timeout=True
            ) from None
        except (trio.BrokenResourceError, OSError) as exc:
            _handshake_failed(exc, tls_stats)
            _connect_failed(host, stats, remote=True)
            reason = str(exc.__cause__ or exc) or type(exc).__name__
            raise UpstreamError(
                f"TLS handshake with {address[0]}:{address[1]} failed: {reason}",
                flag="UF",
                transport=_tls_failure(exc),
            ) from None
        finally:
            if not shaken:  # (cancelled too: the client left, the route timeout passed)
                plain.close()
                connection_gone(host, stats, breakers)
        tls_stats.counter("ssl.handshake").value += 1
        stream = TlsUpstream(ssl_stream, plain)
    now = trio.current_time()
    stats.upstream_cx_connect_ms.record((now - start) * 1000.0)
    return stream, now


def set_keepalive(sock: Any, keepalive: tuple[int | None, int | None, int | None]) -> None:
    """``upstream_connection_options.tcp_keepalive``: on, with the probes, idle time and
    interval given (the system's where not)."""
    probes, idle, interval = keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if probes is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    if idle is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    if interval is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)


def _tls_failure(exc: Exception) -> str:
    """A failed handshake's transport failure reason: ``TLS error: `` and the TLS library's
    reason name (``CERTIFICATE_VERIFY_FAILED``), or the socket error. (Envoy's BoringSSL
    writes ``TLS_error:|<code>:SSL routines:OPENSSL_internal:<NAME>:TLS_error_end``; the
    numeric codes are BoringSSL's own.)"""
    cause = exc.__cause__ or exc
    name = getattr(cause, "reason", None)
    if isinstance(name, str) and name:
        return f"TLS error: {name}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"TLS error: {cause.strerror}"
    return f"TLS error: {cause or type(cause).__name__}"


def _handshake_failed(exc: Exception, tls_stats: Any) -> None:
    """The ``ssl.*`` counter of a failed handshake, as Envoy 1.40 counts it (measured): a
    certificate we refused, ``ssl.fail_verify_error``; any other TLS error,
    ``ssl.connection_error``; the peer's close, none."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        tls_stats.counter("ssl.fail_verify_error").value += 1
    elif isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
        tls_stats.counter("ssl.connection_error").value += 1


def _connect_failed(host: Host, stats: ClusterStats, *, remote: bool) -> None:
    """Count a connection that never opened. Envoy 1.40 counts its end too, measured: as
    remote for a refused connect or a failed TLS handshake (even one whose certificate we
    refused), as local for a connect timeout (the TLS handshake's included)."""
    stats.upstream_cx_connect_fail.value += 1
    host.cx_connect_fail += 1
    stats.upstream_cx_destroy.value += 1
    if remote:
        stats.upstream_cx_destroy_remote.value += 1
    else:
        stats.upstream_cx_destroy_local.value += 1


def connection_gone(host: Host, stats: ClusterStats, breakers: CircuitBreakers) -> None:
    """Undo ``open_connection``'s gauges and breaker slot (failed connect or closed)."""
    stats.upstream_cx_active.value -= 1
    host.cx_active -= 1
    breakers.connections.dec()


def close_connection(
    stream: UpstreamStream,
    created: float,
    host: Host,
    stats: ClusterStats,
    breakers: CircuitBreakers,
    *,
    remote: bool,
    active_rq: bool = False,
) -> None:
    """Close a connection opened by ``open_connection`` and count its end: ``remote``, the
    upstream ended it; ``active_rq``, a request on it had not finished
    (``upstream_cx_destroy_{local,remote}_with_active_rq``, as Envoy counts them)."""
    stream.close()
    stats.upstream_cx_destroy.value += 1
    if remote:
        stats.upstream_cx_destroy_remote.value += 1
    else:
        stats.upstream_cx_destroy_local.value += 1
    if active_rq:
        stats.upstream_cx_destroy_with_active_rq.value += 1
        if remote:
            stats.upstream_cx_destroy_remote_with_active_rq.value += 1
        else:
            stats.upstream_cx_destroy_local_with_active_rq.value += 1
    stats.upstream_cx_length_ms.record((trio.current_time() - created) * 1000.0)
    connection_gone(host, stats, breakers)
