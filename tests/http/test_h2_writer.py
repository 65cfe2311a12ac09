"""The HTTP/2 connection writer: one send per scheduler tick, bounded when the peer does not
read, and an orderly end (trio memory streams, no sockets)."""

from __future__ import annotations

import trio
import trio.testing

from trioproxy.http.h2_writer import FrameWriter


class Framer:
    """Stands for ``h2``: an outbound buffer that ``data_to_send`` empties."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def data_to_send(self, amount: int | None = None) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


class CountingStream(trio.abc.SendStream):
    def __init__(self, inner: trio.abc.SendStream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_frames_of_one_tick_go_out_in_one_send() -> None:
    framer = Framer()
    send, receive = trio.testing.memory_stream_one_way_pair()
    stream = CountingStream(send)
    closed = trio.Event()
    writer = FrameWriter(framer, stream, high_water=1 << 16, close=closed.set)

    async def one_stream(n: int) -> None:
        framer.buf += b"frame%d;" % n
        writer.wake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(5):
            nursery.start_soon(one_stream, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(stream.sends) == 1  # (trio runs a batch's tasks in any order)
        assert sorted(stream.sends[0].split(b";")) == [b"", *(b"frame%d" % n for n in range(5))]
        framer.buf += b"GOAWAY"
        writer.close_when_sent()
    assert closed.is_set()
    assert stream.sends[1:] == [b"GOAWAY"]  # what was queued goes out before the close


async def test_a_peer_that_does_not_read_holds_back_data_at_the_high_water_mark() -> None:
    framer = Framer()
    send, receive = trio.testing.lockstep_stream_pair()  # each send waits for the reader
    writer = FrameWriter(framer, send, high_water=32 * 1024, close=lambda: None)
    queued = 0

    async def producer() -> None:
        nonlocal queued
        while True:
            await writer.wait_room()
            framer.buf += bytes(16 * 1024)
            queued += 16 * 1024
            writer.queued(16 * 1024)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        # the batch in the stuck send is all there is: the producer waits for it
        assert writer.sending
        assert queued == 32 * 1024 and not framer.buf
        assert len(await receive.receive_some(1 << 20)) == 32 * 1024  # the reader moves on
        await trio.testing.wait_all_tasks_blocked()
        assert queued == 64 * 1024 and not framer.buf
        nursery.cancel_scope.cancel()


async def test_a_broken_peer_releases_every_waiter() -> None:
    framer = Framer()
    send, receive = trio.testing.lockstep_stream_pair()
    broken = []
    writer = FrameWriter(
        framer, send, high_water=1, close=lambda: None, on_broken=lambda: broken.append(1)
    )
    released = []

    async def waiter() -> None:
        await writer.wait_room()
        released.append(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        framer.buf += b"x"
        writer.queued(1)
        await trio.testing.wait_all_tasks_blocked()  # the writer is stuck sending it
        framer.buf += b"y"
        writer.queued(1)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert released == []
        await receive.aclose()
    assert broken == [1] and released == [1] and writer.done
