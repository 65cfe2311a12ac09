"""A socket stream that tries the system call first.

``trio.SocketStream`` yields to the scheduler before and after every ``recv``/``send`` even when
the kernel could answer at once. On a proxy's hot path that is about 9 µs per request
(PERFORMANCE.md). ``FastSocketStream`` calls the non-blocking syscall directly and waits with
``trio.lowlevel.wait_readable``/``wait_writable`` only on EAGAIN. To stay fair to other tasks and
responsive to cancellation it still takes a full checkpoint every ``CHECKPOINT_EVERY``
operations that did not wait.

It implements ``trio.abc.HalfCloseableStream``, so ``trio.SSLStream`` can wrap it.
"""

from __future__ import annotations

import errno
import socket

import trio

CHECKPOINT_EVERY = 16
DEFAULT_RECEIVE_SIZE = 65536


def _map_oserror(exc: OSError) -> trio.BrokenResourceError:
    err = trio.BrokenResourceError(f"socket error: {exc}")
    err.__cause__ = exc
    return err


class FastSocketStream(trio.abc.HalfCloseableStream):
    __slots__ = ("socket", "_ops", "_closed", "_shut_wr")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._ops = 0
        self._closed = False
        self._shut_wr = False

    @property
    def closed(self) -> bool:
        return self._closed

    def setsockopt_nodelay(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - unix sockets
            pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        sock = self.socket
        size = max_bytes or DEFAULT_RECEIVE_SIZE
        while True:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                self._ops = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise _map_oserror(exc) from exc
            # (the checkpoint inlined: this runs once per read on the hot path)
            self._ops += 1
            if self._ops >= CHECKPOINT_EVERY:
                self._ops = 0
                await trio.lowlevel.checkpoint()
            return data

    async def receive_some_after_wait(self, max_bytes: int | None = None) -> bytes:
        """Like ``receive_some`` when the caller expects to wait (a response to a request
        just sent, the next request on a keep-alive connection): skip the recv() that would
        only say EAGAIN and go straight to waiting. The wait is the checkpoint."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._ops = 0
        sock = self.socket
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                return sock.recv(max_bytes or DEFAULT_RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise _map_oserror(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._shut_wr:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        sock = self.socket
        total = len(data)
        try:
            # the common case: the kernel takes it all at once (nothing to send: no syscall)
            sent = sock.send(data) if total else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed") from None
            raise _map_oserror(exc) from exc
        if sent < total:
            await self._send_rest(data, sent)
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()

    async def _send_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        sock = self.socket
        view = memoryview(data)
        total = len(view)
        try:
            while sent < total:
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    self._ops = 0
                    await trio.lowlevel.wait_writable(sock)
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("stream is closed") from None
                    raise _map_oserror(exc) from exc
        finally:
            view.release()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._shut_wr or self._closed:
            return
        self._shut_wr = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _map_oserror(exc) from exc

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    def sockname(self) -> tuple[str, int]:
        addr = self.socket.getsockname()
        return (addr[0], addr[1])
