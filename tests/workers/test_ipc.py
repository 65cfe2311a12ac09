"""The control channel (``trioproxy.workers.ipc``): a channel on which anything went wrong
mid-message is closed, never left to pair a reply with the wrong request."""

from __future__ import annotations

import pytest
import trio

from trioproxy.workers.ipc import _HEADER, MAX_MESSAGE, Channel, ChannelClosed


def _pair() -> tuple[Channel, trio.socket.SocketType]:
    mine, theirs = trio.socket.socketpair()
    return Channel(trio.SocketStream(mine)), theirs


async def test_an_oversize_message_closes_the_channel() -> None:
    channel, peer = _pair()
    await peer.send(_HEADER.pack(MAX_MESSAGE + 1))
    with pytest.raises(ChannelClosed, match="over the limit"):
        await channel.receive()
    with pytest.raises(ChannelClosed):
        await channel.send({"op": "state"})
    peer.close()


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b"{not json", b"[1, 2]"])
async def test_an_undecodable_message_closes_the_channel(body: bytes) -> None:
    channel, peer = _pair()
    await peer.send(_HEADER.pack(len(body)) + body)
    with pytest.raises(ChannelClosed):
        await channel.receive()
    with pytest.raises(ChannelClosed):
        await channel.request({"op": "state"})
    peer.close()


async def test_a_request_cancelled_before_its_reply_closes_the_channel() -> None:
    main, peer_sock = _pair()
    worker = Channel(trio.SocketStream(peer_sock))
    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def ask() -> None:
            with cancel:
                await main.request({"op": "snapshot"})

        nursery.start_soon(ask)
        assert (await worker.receive())["op"] == "snapshot"  # sent; the reply is to come
        cancel.cancel()
    try:
        await worker.send({"state": "stale"})  # the late reply to the cancelled request
    except ChannelClosed:
        pass
    # The next request must not be answered with the stale reply.
    with pytest.raises(ChannelClosed):
        await main.request({"op": "state"})
    await worker.aclose()


async def test_requests_and_replies_pair_up() -> None:
    main, peer_sock = _pair()
    worker = Channel(trio.SocketStream(peer_sock))
    async with trio.open_nursery() as nursery:

        async def answer() -> None:
            while True:
                message = await worker.receive()
                await worker.send({"echo": message["n"]})

        nursery.start_soon(answer)
        for n in range(3):
            assert await main.request({"n": n}) == {"echo": n}
        nursery.cancel_scope.cancel()
    await main.aclose()
