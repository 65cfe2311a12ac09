"""TLS over a ``FastSocketStream``: ``ssl.SSLObject`` and two memory BIOs.

``trio.SSLStream`` does this for any transport and any use, and pays for it on every call:
conflict detectors, locks, a generic retry loop that handles renegotiation from either
direction, all interpreted. Profiled on HTTP/1.1 over TLS it was a quarter of the proxy's
samples. This stream does only what the proxy's connections need (downstream: the listener's;
upstream: the pools' and tcp_proxy's), in a module setup.py compiles:

- ``do_handshake``, then ``receive_some`` and ``send_all``, which may run at the same time in
  two tasks (HTTP/2's reader and writer, the TCP proxy's two pumps), but never two receives
  or two sends at once (the callers are built that way, as for any trio stream);
- no renegotiation (both sides' contexts refuse it, as Envoy's BoringSSL does), so a send
  never has to read, and a read only ever has to send: TLS 1.3's post-handshake messages
  (session tickets, a key update's answer);
- ``aclose`` sends close_notify without waiting for the peer's.

Records leave in the order OpenSSL wrote them: whoever takes bytes from the outgoing BIO
does so while it holds the send turn (``_flush``), without awaiting in between.

Errors map as trio's: a TLS failure or an end of the transport without close_notify (a
"ragged EOF") is ``trio.BrokenResourceError``, a close_notify ends the data (``b""``), a
send that failed or was cancelled leaves the stream broken for sending, and
``ssl.SSLError`` during the handshake is raised as ``trio.BrokenResourceError`` from it (the
listener reads the reason from ``__cause__``).
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from trioproxy.io import FastSocketStream

#: How much a receive asks of the socket at once (TLS records are at most 16 KiB + overhead).
READ_SIZE = 65536
#: What ``receive_some()`` returns at most when not told (as ``FastSocketStream``).
DEFAULT_MAX = 65536


class TlsStream(trio.abc.Stream):
    """A TLS connection on ``transport``, the server's side unless ``server_hostname`` is
    given (the client's, with that SNI); call ``do_handshake`` first."""

    __slots__ = (
        "transport",
        "_obj",
        "_in",
        "_out",
        "_sending",
        "_sent",
        "_closed",
        "_eof",
        "_broken",
    )

    def __init__(
        self,
        transport: FastSocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        #: a task is sending bytes taken from ``_out``; ``_sent`` wakes the one waiting
        self._sending = False
        self._sent: trio.Event | None = None
        self._closed = False
        self._eof = False  # the transport ended (before or after close_notify)
        #: a send to the transport failed or was cancelled: how much of its records went
        #: out is unknown, so nothing more can be sent (as trio.SSLStream)
        self._broken = False

    # -- what the listener asks after the handshake ---------------------------------------
    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._obj.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    # -- the stream -----------------------------------------------------------------------
    async def do_handshake(self) -> None:
        obj = self._obj
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                # (the alert that says why goes out first, as OpenSSL wrote it)
                await self._flush_quietly()
                raise _broken("TLS handshake failed", exc) from exc
        await self._flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        obj = self._obj
        size = max_bytes or DEFAULT_MAX
        while True:
            try:
                data = obj.read(size)
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush()
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return b""  # close_notify
            except ssl.SSLError as exc:
                raise _broken("TLS failed", exc) from exc
            if self._out.pending:  # (a session ticket or a key update's answer)
                await self._flush()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            # (no renegotiation: a write that wants to read means the connection is broken)
            raise _broken("TLS failed", exc) from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (when the connection is still whole) and close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if not self._eof and not self.transport.closed:
                try:
                    self._obj.unwrap()
                except (ssl.SSLWantReadError, ssl.SSLError):
                    pass  # (the peer's close_notify is not waited for)
                await self._flush_quietly()
        finally:
            await self.transport.aclose()

    # -- the transport ------------------------------------------------------------------------
    async def _fill(self) -> None:
        """Feed the incoming BIO from the transport; its end becomes the BIO's EOF (OpenSSL
        then tells a close_notify that came before it from a ragged end)."""
        if self._eof:
            raise trio.BrokenResourceError("TLS: the peer closed without close_notify")
        raw = await self.transport.receive_some(READ_SIZE)
        if raw:
            self._in.write(raw)
        else:
            self._eof = True
            self._in.write_eof()

    async def _flush(self) -> None:
        """Send what OpenSSL wrote, after any send in progress (whose bytes came first)."""
        while self._sending:
            sent = self._sent
            if sent is None:
                sent = self._sent = trio.Event()
            await sent.wait()
        out = self._out
        if not out.pending:
            return
        if self._broken:
            raise trio.BrokenResourceError("TLS: an earlier send failed")
        data = out.read()
        self._sending = True
        try:
            await self.transport.send_all(data)
        except BaseException:
            self._broken = True
            raise
        finally:
            self._sending = False
            sent = self._sent
            if sent is not None:
                self._sent = None
                sent.set()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _broken(what: str, exc: ssl.SSLError) -> trio.BrokenResourceError:
    """The error for a TLS failure, its cause set here: code compiled by mypyc does not set
    ``__cause__`` from ``raise ... from`` (the listener reads the reason from it)."""
    err = trio.BrokenResourceError(f"{what}: {exc}")
    err.__cause__ = exc
    return err
