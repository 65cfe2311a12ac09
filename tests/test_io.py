"""FastSocketStream over real TCP sockets: sends are queued per scheduler tick, yet the peer
gets every byte in order, a slow peer holds the sender back, close() still delivers what was
sent, and a failed send surfaces on the next one."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import trio

from trioproxy.io import CLOSE_LINGER, QUEUE_LIMIT, FastSocketStream

SMALL_BUFFER = 4096  # the kernel doubles it, and keeps a floor


def _pair(small_buffers: bool = False) -> tuple[FastSocketStream, socket.socket]:
    """A connected pair on 127.0.0.1: our stream, and the peer's plain socket."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if small_buffers:
            # the accepted socket inherits the listener's receive buffer (and window)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        listener.listen(1)
        ours = socket.socket()
        if small_buffers:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        ours.connect(listener.getsockname())
        peer, _ = listener.accept()
    peer.setblocking(False)
    return FastSocketStream(ours), peer


async def _read_all(peer: socket.socket) -> bytes:
    """Read until EOF, as a plain trio reader."""
    got = bytearray()
    while True:
        await trio.lowlevel.wait_readable(peer)
        data = peer.recv(65536)
        if not data:
            break
        got += data
    return bytes(got)


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) % 251 for i in range(n))


async def test_sends_of_one_tick_arrive_whole_and_in_order() -> None:
    stream, peer = _pair()
    parts: list[bytes | bytearray | memoryview] = [
        _pattern(10, 1),
        bytearray(_pattern(300, 2)),
        memoryview(_pattern(QUEUE_LIMIT - 400, 3)),
        _pattern(QUEUE_LIMIT * 3, 4),  # too big to queue: the queue goes first
        _pattern(5, 5),
        b"",
        _pattern(70, 6),
    ]
    for part in parts:
        await stream.send_all(part)
    await stream.send_eof()
    assert await _read_all(peer) == b"".join(bytes(p) for p in parts)
    stream.close()
    peer.close()


async def test_a_caller_may_reuse_its_buffer_once_send_all_returns() -> None:
    stream, peer = _pair()
    await stream.send_all(b"0-")  # a quiet tick's first send goes at once
    buf = bytearray(b"first")
    await stream.send_all(buf)  # the second is queued: it must not keep the caller's buffer
    buf[:] = b"XXXXX"
    await stream.send_all(b"-second")
    stream.close()
    assert await _read_all(peer) == b"0-first-second"
    peer.close()


async def test_close_right_after_a_send_delivers_it() -> None:
    stream, peer = _pair()
    await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbye")
    stream.close()
    assert await _read_all(peer) == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbye"
    peer.close()


async def test_a_slow_reader_holds_the_sender_back_and_gets_every_byte() -> None:
    stream, peer = _pair(small_buffers=True)
    chunk = 1000
    total = 4_000_000
    accepted = 0

    async def sender() -> None:
        nonlocal accepted
        for i in range(total // chunk):
            await stream.send_all(_pattern(chunk, i))
            accepted += chunk
        stream.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(0.3)
        # nothing read yet: the sender is held at what the two kernels buffer plus one
        # tick's queue, not at everything it wanted to send
        assert accepted < 1_000_000, accepted
        got = await _read_all(peer)
    assert len(got) == total
    assert got == b"".join(_pattern(chunk, i) for i in range(total // chunk))
    peer.close()


class _Filled:
    """What ``_fill`` got the stream to accept, and the send that was cancelled: as trio
    allows, a cancelled send_all may have sent a prefix of its data."""

    def __init__(self, accepted: bytes, cancelled: bytes) -> None:
        self.accepted = accepted
        self.cancelled = cancelled

    def delivered(self, got: bytes) -> bool:
        extra = len(got) - len(self.accepted)
        return 0 <= extra <= len(self.cancelled) and got == self.accepted + self.cancelled[:extra]


async def _fill(stream: FastSocketStream) -> _Filled:
    """Send until a send_all blocks (the peer is not reading). The last accepted sends wait
    in the stream's backlog: the kernel has no room for them."""
    accepted = bytearray()
    for i in range(100_000):
        part = _pattern(1000, i)
        with trio.move_on_after(0.2) as scope:
            await stream.send_all(part)
        if scope.cancelled_caught:
            return _Filled(bytes(accepted), part)
        accepted += part
    raise AssertionError("the kernel never filled")


async def test_close_with_a_backlog_sends_it_before_the_fin() -> None:
    stream, peer = _pair(small_buffers=True)
    filled = await _fill(stream)
    stream.close()
    await trio.sleep(0.1)
    assert filled.delivered(await _read_all(peer))
    peer.close()


async def test_close_with_a_backlog_gives_up_after_the_linger_with_a_reset() -> None:
    stream, peer = _pair(small_buffers=True)
    await _fill(stream)
    stream.close()
    await trio.sleep(0.1)
    assert stream.socket.fileno() != -1  # still sending
    await trio.sleep(CLOSE_LINGER + 0.3)
    assert stream.socket.fileno() == -1  # the peer never read: closed anyway,
    with pytest.raises(ConnectionResetError):  # and not with a FIN: the stream was cut
        await _read_all(peer)
    peer.close()


async def test_close_wakes_a_sender_waiting_for_the_backlog() -> None:
    stream, peer = _pair(small_buffers=True)
    await _fill(stream)

    async def sender() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"after the backlog")

    with trio.fail_after(0.5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.sleep(0.05)
            stream.close()
    peer.close()


async def test_a_cancelled_large_send_loses_nothing_sent_before_it() -> None:
    stream, peer = _pair(small_buffers=True)
    filled = await _fill(stream)
    with trio.move_on_after(0.1):
        await stream.send_all(b"x" * (QUEUE_LIMIT * 2))  # waits for the backlog: cancelled
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_eof)  # after the backlog, read here
        assert filled.delivered(await _read_all(peer))
    stream.close()
    peer.close()


def _reset(peer: socket.socket) -> None:
    """The peer goes away with a reset (SO_LINGER 0)."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


async def test_a_failed_queued_send_is_raised_by_the_next_send() -> None:
    stream, peer = _pair()
    await stream.send_all(b"one")  # a quiet tick's first send: sent at once
    await stream.send_all(b"two")  # the tick's second: queued
    _reset(peer)
    await trio.sleep(0.01)  # the flush fails
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"three")
    stream.close()


async def test_a_failed_queued_send_is_raised_by_send_eof() -> None:
    stream, peer = _pair()
    await stream.send_all(b"one")
    await stream.send_all(b"two")
    _reset(peer)
    await trio.sleep(0.01)
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_eof()
    stream.close()


async def test_a_cancelled_send_eof_can_be_retried() -> None:
    stream, peer = _pair(small_buffers=True)
    filled = await _fill(stream)
    with trio.move_on_after(0.1) as scope:
        await stream.send_eof()  # waits for the backlog: the peer is not reading
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_eof)
        assert filled.delivered(await _read_all(peer))  # everything, then the FIN
    stream.close()
    peer.close()


async def test_send_eof_sends_the_queue_first() -> None:
    stream, peer = _pair()
    await stream.send_all(b"last words")
    await stream.send_eof()
    assert await _read_all(peer) == b"last words"
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"more")
    stream.close()
    peer.close()


async def test_a_reader_blocked_on_the_stream_is_woken_by_close_even_with_a_backlog() -> None:
    stream, peer = _pair(small_buffers=True)
    await _fill(stream)
    woken = trio.Event()

    async def reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        stream.close()
        with trio.fail_after(1):
            await woken.wait()
    peer.close()


def test_a_stream_outlives_its_trio_run() -> None:
    """Made in one run, used in the next: its sends are not queued for the ended run."""
    stream, peer = _pair()

    async def send(data: bytes) -> None:
        for byte in data:
            await stream.send_all(bytes([byte]))  # a tick's second send on is queued

    trio.run(send, b"ab")
    trio.run(send, b"cde")

    async def finish() -> bytes:
        stream.close()
        return await _read_all(peer)

    assert trio.run(finish) == b"abcde"
    peer.close()


def test_what_a_run_leaves_in_a_backlog_is_sent_after_it_ends() -> None:
    stream, peer = _pair(small_buffers=True)
    got = bytearray()

    def read() -> None:
        peer.setblocking(True)
        while chunk := peer.recv(65536):
            got.extend(chunk)

    reader = threading.Thread(target=read)

    async def main() -> _Filled:
        filled = await _fill(stream)
        stream.close()  # with a backlog: the run ends before it is sent
        reader.start()
        return filled

    filled = trio.run(main)
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert filled.delivered(bytes(got))
    peer.close()
