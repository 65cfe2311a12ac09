"""A socket stream that tries the system call first, and sends once per scheduler tick.

``trio.SocketStream`` yields to the scheduler before and after every ``recv``/``send`` even when
the kernel could answer at once. On a proxy's hot path that is about 9 µs per request
(PERFORMANCE.md). ``FastSocketStream`` calls the non-blocking syscall directly and waits with
``trio.lowlevel.wait_readable``/``wait_writable`` only on EAGAIN. To stay fair to other tasks and
responsive to cancellation it still takes a full checkpoint every ``CHECKPOINT_EVERY``
operations that did not wait.

Under load, small sends are queued, not sent: every stream's queue goes out in one ``send``
each just before trio next waits for I/O (a trio instrument's ``before_io_wait``, once per
scheduler tick). A send on loopback wakes the peer's process, and when the peer's core is idle
that wake costs the sender more than everything else in the send (25 µs of a 114 µs request on
this machine, docs/benchmarks.md): one tick's sends go out back to back, so the peer wakes once
for a burst rather than once per request. Envoy does the same with its per-connection write
buffer, written when the event loop comes round. "Under load" is: a tick's second send, and
every send in the tick after one with two or more. A lone send goes out at once, as queueing
it would only delay it (by the task's next wait and the scheduler's turn: 10-20 µs of p50 at
one connection). Nothing else changes for the caller:

- order is kept: a send too big to queue (over ``QUEUE_LIMIT`` with what is queued) first
  sends the queue, then itself;
- back-pressure is kept: what the kernel does not take at the flush is sent by a system task
  as the socket drains, and the stream's next ``send_all`` (or ``send_eof``,
  ``wait_send_all_might_not_block``) waits for it; a cancelled wait loses nothing already
  accepted;
- an error in a queued send is raised by the stream's next ``send_all`` or ``send_eof``;
- ``close()`` sends the queue first; a remainder the kernel will not take yet keeps the socket
  open, unreadable, until it is sent or ``CLOSE_LINGER`` passes without progress (Envoy's
  ``delayed_close_timeout``, restarted by progress, the same), and then the connection is
  reset, not closed with a FIN: the peer must not take a cut stream for a whole one;
- a run that ends with sends still queued (or in a backlog) sends them after its last task,
  blocking for ``CLOSE_LINGER`` at most in all;
- a stream may be used by a later ``trio.run`` than the one that made it.

It implements ``trio.abc.HalfCloseableStream``, so ``trio.SSLStream`` can wrap it.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from typing import cast

import trio
from trio.lowlevel import checkpoint, wait_readable, wait_writable

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 16
DEFAULT_RECEIVE_SIZE = 65536
#: The most a stream queues in one tick; a larger send goes out at once.
QUEUE_LIMIT = 16384
#: How long a closed stream keeps trying to send what the kernel would not take, without
#: progress, before the socket is closed anyway (Envoy's default ``delayed_close_timeout``).
CLOSE_LINGER = 1.0


def _abort(sock: socket.socket) -> None:
    """Make the coming close() send a reset (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # pragma: no cover - already reset
        pass


def _map_oserror(exc: OSError) -> trio.BrokenResourceError:
    err = trio.BrokenResourceError(f"socket error: {exc}")
    err.__cause__ = exc
    return err


class _TickFlusher:
    """Sends every stream's queue just before trio waits for I/O; one per ``trio.run``.

    A trio instrument by duck type: trio registers the hooks an instrument has (here
    ``before_io_wait`` and ``after_run``). Neither may raise: trio would drop a raising
    instrument, and every queue after it would wait forever.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.live = True
        self.queued: list[FastSocketStream] = []
        # sends asked for in this tick; whether the last tick had more than one
        self.sends = 0
        self.busy = False
        # streams whose backlog the ending run could not send (see after_run)
        self.leftovers: list[FastSocketStream] = []

    def before_io_wait(self, timeout: float) -> None:
        self.busy = self.sends > 1
        self.sends = 0
        queued = self.queued
        if queued:
            self.queued = []
            for stream in queued:
                try:
                    stream._flush_queue()
                except BaseException:  # pragma: no cover - _flush_queue does not raise
                    log.exception("flushing a queued send failed")

    def after_run(self) -> None:
        """The run ended: what is still queued, or was left in a backlog by the cancelled
        system task, gets ``CLOSE_LINGER`` in all to go out with blocking sends."""
        self.live = False
        deadline = time.monotonic() + CLOSE_LINGER
        for stream in self.queued + self.leftovers:
            try:
                stream._send_at_exit(deadline)
            except BaseException:  # pragma: no cover - _send_at_exit does not raise
                log.exception("sending a queued write at the end of the run failed")
        self.queued = []
        self.leftovers = []


_FLUSHER: trio.lowlevel.RunVar[_TickFlusher] = trio.lowlevel.RunVar("trioproxy.io.flusher")


def _current_flusher() -> _TickFlusher:
    try:
        return _FLUSHER.get()
    except LookupError:
        flusher = _TickFlusher(trio.lowlevel.current_trio_token())
        trio.lowlevel.add_instrument(cast("trio.abc.Instrument", flusher))
        _FLUSHER.set(flusher)
        return flusher


def _wake_run() -> None:
    """Nothing: run through ``run_sync_soon``, it makes trio's next I/O wait return at once."""


class _Backlog:
    """What the kernel did not take when a queue was flushed, and the task sending it."""

    __slots__ = ("data", "wake", "closing", "scope")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        # set when the backlog is sent (or failed), and by close(): a waiting sender wakes
        self.wake = trio.Event()
        self.closing = False
        self.scope: trio.CancelScope | None = None


class FastSocketStream(trio.abc.HalfCloseableStream):
    __slots__ = (
        "socket",
        "_ops",
        "_closed",
        "_shut_wr",
        "_queue",
        "_queued",
        "_flusher",
        "_backlog",
        "_error",
    )

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._ops = 0
        self._closed = False
        self._shut_wr = False
        # what send_all queued this tick (None: nothing), and its length
        self._queue: list[bytes] | None = None
        self._queued = 0
        self._flusher: _TickFlusher | None = None
        # set while a system task sends what a flush left over
        self._backlog: _Backlog | None = None
        # a queued send's failure, raised by the next send_all or send_eof
        self._error: OSError | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def sending(self) -> bool:
        """Whether bytes wait to be sent: queued this tick, or left by a flush to the system
        task that sends them as the socket drains."""
        return self._queue is not None or self._backlog is not None

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
                await wait_readable(sock)
                continue
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise _map_oserror(exc) from exc
            # (the checkpoint inlined: this runs once per read on the hot path)
            self._ops += 1
            if self._ops >= CHECKPOINT_EVERY:
                self._ops = 0
                await checkpoint()
            return data

    async def receive_some_after_wait(self, max_bytes: int | None = None) -> bytes:
        """Like ``receive_some`` when the caller expects to wait (a response to a request
        just sent, the next request on a keep-alive connection): skip the recv() that would
        only say EAGAIN and go straight to waiting. The wait is the checkpoint."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._ops = 0
        sock = self.socket
        await wait_readable(sock)
        while True:
            try:
                return sock.recv(max_bytes or DEFAULT_RECEIVE_SIZE)
            except BlockingIOError:
                await wait_readable(sock)
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise _map_oserror(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._shut_wr:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        if self._backlog is not None:
            await self._wait_backlog()
        if self._error is not None:
            raise _map_oserror(self._error)
        size = len(data)
        queue = self._queue
        if queue is None:
            flusher = self._flusher
            if flusher is None or not flusher.live:
                flusher = self._flusher = _current_flusher()
            flusher.sends += 1
            if 0 < size <= QUEUE_LIMIT and (flusher.busy or flusher.sends > 1):
                # the common case under load: queue it for this tick's flush
                self._queue = [data if type(data) is bytes else bytes(data)]
                self._queued = size
                flusher.queued.append(self)
            elif size:
                await self._send_now(data)
        elif self._queued + size <= QUEUE_LIMIT:
            queue.append(data if type(data) is bytes else bytes(data))
            self._queued += size
        else:
            # too much for one tick: what is queued goes first (a remainder by the backlog
            # task, so a cancel here loses nothing already accepted), then this, now
            self._flush_queue()
            await self._wait_backlog()
            if self._error is not None:
                raise _map_oserror(self._error)
            await self._send_now(data)
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await checkpoint()

    async def _send_now(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        total = len(data)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed") from None
            raise _map_oserror(exc) from exc
        if sent < total:
            await self._send_rest(data, sent)

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
                    await wait_writable(sock)
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("stream is closed") from None
                    raise _map_oserror(exc) from exc
        finally:
            view.release()

    def _flush_queue(self) -> None:
        """Send what this tick queued; hand a remainder to a system task. Never raises."""
        queue = self._queue
        if queue is None:
            return  # sent meanwhile (a large send, send_eof, close)
        self._queue = None
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._error = exc
            return
        if sent < len(data):
            self._start_backlog(memoryview(data)[sent:])

    def _start_backlog(self, rest: memoryview) -> None:
        backlog = self._backlog = _Backlog(rest)
        flusher = self._flusher
        assert flusher is not None
        try:
            trio.lowlevel.spawn_system_task(self._send_backlog, backlog)
        except RuntimeError:
            # the run is ending (its system nursery is closed): sent after it ends
            self._backlog = None
            backlog.wake.set()
            self._leave_for_exit(rest)
            return
        try:
            # (from the flush hook trio has already chosen how long to sleep: wake it so
            # the task starts in the next tick)
            flusher.token.run_sync_soon(_wake_run)
        except trio.RunFinishedError:  # pragma: no cover - the hook runs inside the run
            pass

    def _leave_for_exit(self, rest: memoryview) -> None:
        """The run is ending with ``rest`` unsent: ``_TickFlusher.after_run`` sends it."""
        flusher = self._flusher
        assert flusher is not None
        self._queue = [bytes(rest)]
        flusher.leftovers.append(self)

    async def _send_backlog(self, backlog: _Backlog) -> None:
        # (what is left is kept in backlog.data, not in a local, for the handlers below)
        sock = self.socket
        handed_over = False
        try:
            with trio.CancelScope() as scope:
                backlog.scope = scope
                if backlog.closing:
                    scope.deadline = trio.current_time() + CLOSE_LINGER
                while len(backlog.data):
                    try:
                        sent = sock.send(backlog.data)
                    except BlockingIOError:
                        try:
                            await wait_writable(sock)
                        except trio.ClosedResourceError:
                            # close() woke every waiter on the socket: keep sending, the
                            # socket is ours to close now
                            if not backlog.closing:
                                raise
                        continue
                    backlog.data = backlog.data[sent:]
                    if backlog.closing:
                        scope.deadline = trio.current_time() + CLOSE_LINGER
        except trio.Cancelled:
            # the run is ending: what is left goes after it ends (_TickFlusher.after_run)
            self._leave_for_exit(backlog.data)
            handed_over = True
            raise
        except OSError as exc:
            self._error = self._error or exc
        except trio.ClosedResourceError:
            pass
        except Exception as exc:  # pragma: no cover - a bug here must not take the run down
            log.exception("sending a queued write failed")
            self._error = self._error or BrokenPipeError(f"sending a queued write failed: {exc!r}")
        finally:
            unsent = len(backlog.data) > 0 and not handed_over
            self._backlog = None
            if unsent and self._error is None:
                self._error = BrokenPipeError("the peer took nothing for CLOSE_LINGER")
            backlog.wake.set()
            if backlog.closing and not handed_over:
                # given up with bytes unsent: a reset, so the peer cannot take the
                # truncated stream for a whole one
                self._close_socket(abort=unsent)

    def _send_at_exit(self, deadline: float) -> None:
        """After the run: send what is queued, blocking until ``deadline`` at most; then
        close the socket if the stream was closed meanwhile (a reset if bytes are left)."""
        queue = self._queue
        self._queue = None
        sock = self.socket
        unsent = False
        if queue is not None and self._error is None and sock.fileno() != -1:
            data = memoryview(b"".join(queue))
            try:
                while len(data):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    sock.settimeout(left)
                    # (not data[sock.send(data):]: mypyc evaluates that bound twice)
                    sent = sock.send(data)
                    data = data[sent:]
            except OSError as exc:  # (socket.timeout is an OSError)
                self._error = exc
            finally:
                unsent = len(data) > 0
                if sock.fileno() != -1:
                    sock.setblocking(False)
        if self._closed and sock.fileno() != -1:
            if unsent:
                _abort(sock)
            sock.close()

    async def _wait_backlog(self) -> None:
        backlog = self._backlog
        if backlog is not None:
            await backlog.wake.wait()
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")

    async def wait_send_all_might_not_block(self) -> None:
        self._flush_queue()  # (a backlog's task must be the one waiting to write)
        if self._backlog is not None:
            await self._wait_backlog()
            return
        await wait_writable(self.socket)

    async def send_eof(self) -> None:
        await checkpoint()
        if self._shut_wr or self._closed:
            return
        # what is queued goes before the FIN; until then no more may be sent, and a cancel
        # leaves the stream as it was (what was queued goes on in the backlog)
        self._shut_wr = True
        try:
            self._flush_queue()
            await self._wait_backlog()
        except BaseException:
            self._shut_wr = False
            raise
        if self._error is not None:
            raise _map_oserror(self._error)
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _map_oserror(exc) from exc

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._backlog is None:
            self._flush_queue()
        self._queue = None
        backlog = self._backlog
        if backlog is None:
            self._close_socket(abort=False)
            return
        # what the kernel has not taken yet still goes, before the FIN; tasks waiting on the
        # stream (to read, or to send after the backlog) are woken with ClosedResourceError
        # as on any close
        backlog.closing = True
        if backlog.scope is not None:
            backlog.scope.deadline = trio.current_time() + CLOSE_LINGER
        backlog.wake.set()
        trio.lowlevel.notify_closing(self.socket)

    def _close_socket(self, *, abort: bool) -> None:
        trio.lowlevel.notify_closing(self.socket)
        if abort:
            _abort(self.socket)
        self.socket.close()

    def sockname(self) -> tuple[str, int]:
        addr = self.socket.getsockname()
        return (addr[0], addr[1])
