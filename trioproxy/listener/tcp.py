"""A TCP listener: the accept loop and each connection's life up to its terminal filter.

``Listener.serve`` reports the bound port through ``task_status.started()`` and accepts until
cancelled or drained; every connection is a task in the listener's handler nursery, so a
listener cannot outlive its connections. A connection runs: limits check → listener filters
(under ``listener_filters_timeout``) → hand-off to the listener of its original destination
(``use_original_dst``) → filter-chain match → TLS handshake (if the chain terminates TLS) →
non-terminal network filters → the terminal filter.

An idle connection its terminal filter parks (``trioproxy.network.filter.Parked``) leaves its
task for the listener's parking lot (``trioproxy.listener.parking``), whose one watcher task
is in the same nursery and starts a task again for the connection when the client sends
more: parked or not, a connection still ends before its listener does.

A ``bind_to_port: false`` listener has no socket: it only serves connections handed to it by
a ``use_original_dst`` listener (Istio's virtual outbound listener hands each connection to the
listener named after its original destination's port).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import ssl
from collections.abc import Callable

import trio

from trioproxy.http.filter import ConnectionInfo
from trioproxy.http.stream_info import now
from trioproxy.io import FastSocketStream
from trioproxy.listener import parking
from trioproxy.listener.config import FilterChain, ListenerConfig
from trioproxy.listener.filter import AcceptedSocket
from trioproxy.listener.match import Conn, select
from trioproxy.listener.tls import peer_details
from trioproxy.network.filter import DownstreamConnection, Drain, Parked
from trioproxy.tls_stream import TlsStream

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)
TLS_HANDSHAKE_TIMEOUT = 10.0
#: The name of every connection's task (trio's default is built per task).
_CONNECTION_TASK = "trioproxy.listener.tcp connection"


def bind_socket(
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    udp: bool = False,
    ipv4_compat: bool = False,
    listen: bool = True,
) -> socket.socket:
    """A bound (and, for TCP, listening unless not ``listen``) non-blocking socket. An IPv6
    socket takes IPv4 too only with ``ipv4_compat`` (Envoy sets ``IPV6_V6ONLY`` otherwise)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if ipv4_compat else 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen and not udp:
            sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


#: Finds the listener for an original destination address (the listener manager's lookup).
FindListener = Callable[[tuple[str, int]], "Listener | None"]


def _fixed_local_address(sock: socket.socket) -> tuple[str, int] | None:
    """The local address of every connection the socket accepts, when the socket says it:
    bound to one IP address (not a wildcard), each accepted connection has that address, so
    no ``getsockname`` per connection (a system call, and a tuple and a string each idle
    connection would hold). ``None``: ask each connection."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        return None
    return (host, port)


class _Idle:
    """A parked connection, as its listener keeps it: what resuming and finishing it need."""

    __slots__ = ("parked", "raw", "started", "addr")

    def __init__(
        self, parked: Parked, raw: FastSocketStream, started: float, addr: tuple[str, int]
    ) -> None:
        self.parked = parked
        self.raw = raw
        self.started = started
        self.addr = addr


class Listener:
    """A running listener. ``drain`` stops new connections and tells live ones to finish."""

    def __init__(
        self,
        config: ListenerConfig,
        sock: socket.socket | None,
        find_listener: FindListener | None = None,
        *,
        park_after: float = parking.PARK_AFTER,
    ) -> None:
        self.config = config
        self.sock = sock
        self.drain = Drain()
        self.active = 0
        self._drained = trio.Event()
        self._handed_off = False
        self._accept_stopped = trio.Event()
        self._find_listener = find_listener
        self._handlers: trio.Nursery | None = None
        # (park_after 0: never park)
        self._lot: parking.ParkingLot[_Idle] | None = (
            parking.ParkingLot(self._resume_parked, self._abandon_parked, after=park_after)
            if parking.available() and park_after > 0
            else None
        )
        self.port: int = sock.getsockname()[1] if sock is not None else config.address[1]

    def __repr__(self) -> str:
        return f"<Listener {self.config.name} port={self.port} active={self.active}>"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.sock
        stats = self.config.stats
        try:
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                task_status.started(self.port)
                with trio.CancelScope() as accept_scope:
                    handlers.start_soon(self._cancel_on_drain, accept_scope)
                    while sock is None:  # bind_to_port: false — hand-offs only
                        await trio.sleep_forever()
                    fixed_local = _fixed_local_address(sock)
                    per_event = self.config.accept_per_event
                    batch = stats.connections_accepted_per_socket_event
                    while True:
                        # One wake-up takes every pending connection (or at most
                        # ``per_event``), as Envoy's listener does. Taking one per scheduler
                        # round left connections in the kernel's queue while the proxy was
                        # busy, their first request waiting up to seconds (seen as a p99 of
                        # 0.6-1.1 s at 200 connections in benchmarks/bench_http.py).
                        n, more, failed = self._accept_batch(sock, fixed_local, per_event)
                        if per_event is not None and n:
                            batch.record(n)
                        if failed:  # (EMFILE and the like: the socket stays readable)
                            await trio.sleep(0.01)
                        elif more:
                            await trio.lowlevel.checkpoint()
                        else:
                            await trio.lowlevel.wait_readable(sock)
                # Stopped accepting (drain): close the socket — unless a newer listener
                # took it over — and let connections finish.
                self._accept_stopped.set()
                self._close_socket()
                if self._lot is not None:
                    self._lot.stop()
        finally:
            self._handlers = None
            self._accept_stopped.set()
            self._close_socket()
            if self._lot is not None:
                self._lot.close()

    def _accept_batch(
        self, sock: socket.socket, fixed_local: tuple[str, int] | None, limit: int | None
    ) -> tuple[int, bool, bool]:
        """Accept connections until none is pending or ``limit`` are taken, starting a task
        for each; returns how many were taken from the kernel, whether more may wait, and
        whether accept() failed."""
        stats = self.config.stats
        handlers = self._handlers
        assert handlers is not None
        n = 0
        while limit is None or n < limit:
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                return n, False, False
            except OSError as exc:
                log.warning("accept failed on %s: %s", self.config.name, exc)
                return n, False, True
            n += 1
            if self.active >= self.config.max_connections:
                stats.downstream_cx_overflow.value += 1
                conn.close()
                continue
            if fixed_local is not None:
                local = fixed_local
            else:
                try:
                    local = conn.getsockname()[:2]
                except OSError:
                    conn.close()
                    continue
            self.active += 1  # now, not when the task starts: a drain must see it
            # (the task starts in _run_connection: one coroutine frame less held by every
            # connection)
            accepted = AcceptedSocket(conn, (addr[0], addr[1]), local)
            handlers.start_soon(self._run_connection, accepted, name=_CONNECTION_TASK)
        return n, True, False

    def adopt(self, accepted: AcceptedSocket) -> bool:
        """Take a connection another listener accepted (``use_original_dst``); ``False`` when
        this listener is not serving or over its connection limit (the caller keeps it)."""
        if self._handlers is None or self.drain.draining:
            return False
        if self.active >= self.config.max_connections:
            self.config.stats.downstream_cx_overflow.value += 1
            return False
        self.active += 1
        accepted.handed_off = True
        self._handlers.start_soon(self._run_connection, accepted, name=_CONNECTION_TASK)
        return True

    async def hand_off(self) -> socket.socket | None:
        """Stop accepting and drain, leaving the listening socket open for a successor
        (an LDS update that keeps the address: no connection attempt is refused). Returns
        once this listener no longer waits on the socket."""
        self._handed_off = True
        self.drain.start(close_idle=False)
        await self._accept_stopped.wait()
        return self.sock

    async def wait_drained(self) -> None:
        """Wait until a draining listener has no connection left."""
        await trio.lowlevel.checkpoint()
        while self.active:
            self._drained = trio.Event()
            await self._drained.wait()

    def _close_socket(self) -> None:
        if self.sock is not None and not self._handed_off and self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def _cancel_on_drain(self, scope: trio.CancelScope) -> None:
        await self.drain.wait_draining()
        scope.cancel()

    def _connection_done(self) -> None:
        self.active -= 1
        if not self.active and self.drain.draining:
            self._drained.set()

    async def _listener_filters(self, accepted: AcceptedSocket) -> bool:
        """Run the listener filters; ``False``: close the connection."""
        cfg = self.config
        stats = cfg.stats
        stats.downstream_pre_cx_active.value += 1
        try:
            with trio.move_on_after(cfg.listener_filters_timeout) as scope:
                for filt in cfg.listener_filters:
                    if not await filt.on_accept(accepted):
                        return False
            if scope.cancelled_caught:
                stats.downstream_pre_cx_timeout.value += 1
                return cfg.continue_on_listener_filters_timeout
            return True
        finally:
            stats.downstream_pre_cx_active.value -= 1

    def _match(self, accepted: AcceptedSocket) -> FilterChain | None:
        cfg = self.config
        chain = cfg.single_chain
        if chain is not None:
            return chain
        found = select(
            cfg.filter_chains,
            Conn(
                local=accepted.local_address,
                remote=accepted.remote_address,
                server_name=accepted.server_name,
                transport_protocol=accepted.transport_protocol or "raw_buffer",
                application_protocols=accepted.application_protocols,
            ),
        )
        return found if found is not None else cfg.default_chain

    async def _run_connection(self, accepted: AcceptedSocket) -> None:
        sock = accepted.socket
        cfg = self.config
        parked = False
        try:
            if cfg.listener_filters and not await self._listener_filters(accepted):
                sock.close()
                return
            if cfg.use_original_dst and accepted.local_address_restored and not accepted.handed_off:
                target = (
                    self._find_listener(accepted.local_address) if self._find_listener else None
                )
                if target is not None and target is not self and target.adopt(accepted):
                    return  # the connection is the other listener's now
            chain = self._match(accepted)
            if chain is None:
                cfg.stats.no_filter_chain_match.value += 1
                log.debug(
                    "no filter chain matched a connection from %s to %s",
                    accepted.remote_address,
                    accepted.local_address,
                )
                sock.close()
                return
            parked = await self._connection(accepted, chain)
        except BaseException:
            sock.close()
            raise
        finally:
            if not parked:
                self._connection_done()

    async def _connection(self, accepted: AcceptedSocket, chain: FilterChain) -> bool:
        """Serve the connection; ``True``: it ended parked (the lot has it now)."""
        cfg = self.config
        stats = cfg.stats
        wstats = cfg.worker_stats
        stats.downstream_cx_total.value += 1
        stats.downstream_cx_active.value += 1
        wstats.downstream_cx_total.value += 1
        wstats.downstream_cx_active.value += 1
        started = now()
        addr = accepted.remote_address
        raw = FastSocketStream(accepted.socket)
        raw.setsockopt_nodelay()
        stream: trio.abc.Stream = raw
        parked = False
        try:
            local = accepted.local_address
            # (the SNI is the tls_inspector's, as Envoy's requestedServerName)
            sni, alpn = accepted.server_name, ""
            peer_certificate = None
            if chain.tls is not None:
                tls_stream = TlsStream(raw, chain.tls)
                tls_stats = cfg.tls_stats
                assert tls_stats is not None
                try:
                    with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                        await tls_stream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                    tls_stats.connection_error.value += 1
                    reason = str(exc.__cause__ or exc).lower()
                    if "did not return a certificate" in reason:
                        tls_stats.fail_verify_no_cert.value += 1
                    elif "certificate verify failed" in reason:
                        tls_stats.fail_verify_error.value += 1
                    log.debug("TLS handshake failed from %s: %s", addr, exc)
                    return False
                tls_stats.handshake.value += 1
                if chain.tls.verify_mode != ssl.CERT_NONE:
                    cert = tls_stream.getpeercert()
                    if not cert:
                        tls_stats.no_certificate.value += 1
                    elif chain.client_san_check is not None and not chain.client_san_check(cert):
                        tls_stats.fail_verify_san.value += 1
                        log.debug("client certificate from %s matches no allowed SAN", addr)
                        return False
                    else:
                        der = tls_stream.getpeercert(binary_form=True)
                        peer_certificate = peer_details(cert, der) if der else None
                alpn = tls_stream.selected_alpn_protocol() or ""
                version = tls_stream.version()
                if version:
                    cfg.scope.counter(f"ssl.versions.{version}").value += 1
                cipher = tls_stream.cipher()
                if cipher:
                    cfg.scope.counter(f"ssl.ciphers.{cipher[0]}").value += 1
                stream = tls_stream
            info = ConnectionInfo(
                remote_address=addr,
                local_address=local,
                local_address_restored=accepted.local_address_restored,
                tls=chain.tls is not None,
                sni=sni,
                alpn=alpn,
                connection_id=next(_connection_ids),
                peer_certificate=peer_certificate,
            )
            conn = DownstreamConnection(
                stream=stream,
                info=info,
                transport=raw,
                listener_stats=cfg.scope,
                drain=self.drain,
                buffer_limit=cfg.buffer_limit,
                filter_state=accepted.filter_state,
                parking=self._lot,
            )
            for filt in chain.filters:
                if not await filt.on_new_connection(conn):
                    await _refuse(stream)
                    return False
            parked = await self._serve(
                await chain.terminal.handle_connection(conn), raw, started, addr
            )
            return parked
        except Exception:
            log.exception("connection from %s failed", addr)
            return False
        finally:
            if not parked:
                self._connection_ended(started)
                if stream is not raw and not raw.closed:
                    # TLS: say close_notify first, or strict clients (OpenSSL 3) see a
                    # truncation.
                    with trio.move_on_after(0.5, shield=True):
                        try:
                            await stream.aclose()
                        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                            pass
                raw.close()

    def _connection_ended(self, started: float) -> None:
        stats = self.config.stats
        wstats = self.config.worker_stats
        stats.downstream_cx_active.value -= 1
        wstats.downstream_cx_active.value -= 1
        stats.downstream_cx_destroy.value += 1
        stats.downstream_cx_length_ms.record((now() - started) * 1000)

    # -- parked connections (trioproxy.listener.parking) ------------------------------------
    async def _serve(
        self, parked: Parked | None, raw: FastSocketStream, started: float, addr: tuple[str, int]
    ) -> bool:
        """Park what the terminal filter parked; ``True`` once the lot has it. Where it
        cannot park, the connection goes on in this task."""
        while parked is not None:
            if not isinstance(parked, Parked):
                # A terminal filter that returns something by mistake: its connection ended.
                log.warning("a terminal filter returned %r (not None or Parked): ignored", parked)
                return False
            lot, handlers = self._lot, self._handlers
            idle = _Idle(parked, raw, started, addr)
            if lot is not None and handlers is not None and lot.park(raw.socket, idle, handlers):
                return True
            parked = await parked.resume()
        return False

    def _resume_parked(self, idle: _Idle) -> None:
        assert self._handlers is not None  # the lot's task is in it while anything is parked
        self._handlers.start_soon(self._resumed, idle, name=_CONNECTION_TASK)

    async def _resumed(self, idle: _Idle) -> None:
        """A parked connection's task again: the client sent something (or closed), or its
        terminal filter woke it to close it."""
        parked = False
        try:
            resumed = await idle.parked.resume()
            parked = await self._serve(resumed, idle.raw, idle.started, idle.addr)
        except Exception:
            log.exception("connection from %s failed", idle.addr)
        finally:
            if not parked:
                self._finish_parked(idle)

    def _abandon_parked(self, idle: _Idle) -> None:
        """The listener stops with the connection parked: end it without a task."""
        try:
            idle.parked.abandon()
        finally:
            self._finish_parked(idle)

    def _finish_parked(self, idle: _Idle) -> None:
        self._connection_ended(idle.started)
        idle.raw.close()
        self._connection_done()


#: How long a refused connection's input is read and dropped after our FIN.
REFUSE_LINGER = 1.0


async def _refuse(stream: trio.abc.Stream) -> None:
    """Close a connection a network filter refused with a FIN, as Envoy does (it decides on
    the first bytes, already read): closing with the client's bytes unread would make the
    kernel answer RST. Send EOF, then drop what the client still sends for a moment."""
    with trio.move_on_after(REFUSE_LINGER):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
