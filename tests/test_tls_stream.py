"""TlsStream (the listener's TLS) against trio.SSLStream as the client, over real sockets on
127.0.0.1 with trustme certificates: data arrives whole both ways, also with a read and a
send running at once; the ends (close_notify, a ragged close, our own close) and a failed
handshake are what a trio stream reports."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trustme

from trioproxy.io import FastSocketStream
from trioproxy.tls_stream import TlsStream


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _contexts(
    ca: trustme.CA, *, alpn: list[str] | None = None, mtls: bool = False
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.options |= ssl.OP_NO_RENEGOTIATION
    ca.issue_cert("proxy.test").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    if alpn:
        server.set_alpn_protocols(alpn)
        client.set_alpn_protocols(alpn)
    if mtls:
        server.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(server)
        ca.issue_cert("client.test").configure_cert(client)
    return server, client


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


async def _connected(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[TlsStream, trio.SSLStream[trio.SocketStream]]:
    s, c = _socket_pair()
    ours = TlsStream(FastSocketStream(s), server_ctx)
    theirs = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(c)),
        client_ctx,
        server_hostname="proxy.test",
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours.do_handshake)
        nursery.start_soon(theirs.do_handshake)
    return ours, theirs


def _pattern(n: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(n))


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def test_handshake_reports_what_the_listener_asks(ca: trustme.CA) -> None:
    ours, theirs = await _connected(*_contexts(ca, alpn=["h2", "http/1.1"], mtls=True))
    assert ours.selected_alpn_protocol() == "h2"
    assert ours.version() == theirs.version()
    cipher = ours.cipher()
    assert cipher is not None and cipher[0] == theirs.cipher()[0]
    cert = ours.getpeercert()
    assert ("DNS", "client.test") in cert["subjectAltName"]
    assert ours.getpeercert(binary_form=True)[:1] == b"\x30"  # DER
    await ours.aclose()
    await theirs.aclose()


async def test_data_arrives_whole_both_ways_at_once(ca: trustme.CA) -> None:
    """A receive and a send in two tasks on the same stream (HTTP/2's reader and writer),
    each moving more than the socket buffers hold."""
    ours, theirs = await _connected(*_contexts(ca))
    up, down = _pattern(3_000_000, 1), _pattern(2_000_000, 2)
    got: dict[str, bytes] = {}

    async def ours_receive() -> None:
        got["ours"] = await _receive_exactly(ours, len(up))

    async def ours_send() -> None:
        for i in range(0, len(down), 50_000):
            await ours.send_all(down[i : i + 50_000])

    async def theirs_send() -> None:
        await theirs.send_all(up)

    async def theirs_receive() -> None:
        got["theirs"] = await _receive_exactly(theirs, len(down))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for task in (ours_receive, ours_send, theirs_send, theirs_receive):
                nursery.start_soon(task)
    assert got["ours"] == up
    assert got["theirs"] == down
    await ours.aclose()
    await theirs.aclose()


async def test_close_notify_ends_the_data(ca: trustme.CA) -> None:
    ours, theirs = await _connected(*_contexts(ca))
    await theirs.send_all(b"last words")
    await theirs.aclose()  # close_notify, then the socket closes
    with trio.fail_after(5):
        assert await _receive_exactly(ours, 10) == b"last words"
        assert await ours.receive_some() == b""
        assert await ours.receive_some() == b""  # (and stays ended)
    await ours.aclose()


async def test_close_without_close_notify_is_broken(ca: trustme.CA) -> None:
    ours, theirs = await _connected(*_contexts(ca))
    await theirs.send_all(b"cut")
    await theirs.transport_stream.aclose()  # the socket only: a truncation
    with trio.fail_after(5):
        assert await _receive_exactly(ours, 3) == b"cut"
        with pytest.raises(trio.BrokenResourceError):
            await ours.receive_some()
    await ours.aclose()


async def test_our_close_says_close_notify(ca: trustme.CA) -> None:
    ours, theirs = await _connected(*_contexts(ca))
    await ours.send_all(b"bye")
    await ours.aclose()
    with trio.fail_after(5):
        assert await _receive_exactly(theirs, 3) == b"bye"
        assert await theirs.receive_some() == b""  # trio.SSLStream: clean only after close_notify
    with pytest.raises(trio.ClosedResourceError):
        await ours.send_all(b"more")
    with pytest.raises(trio.ClosedResourceError):
        await ours.receive_some()
    await theirs.aclose()


async def test_failed_handshake_sends_the_alert_and_says_why(ca: trustme.CA) -> None:
    """The client does not trust our certificate: both sides fail, with the reason; and a
    client without a certificate where one is required gets the server's refusal."""
    server_ctx, _ = _contexts(ca)
    distrustful = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trustme.CA().configure_trust(distrustful)
    s, c = _socket_pair()
    ours = TlsStream(FastSocketStream(s), server_ctx)
    theirs = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(c)),
        distrustful,
        server_hostname="proxy.test",
    )
    errors: dict[str, BaseException] = {}

    async def run(name: str, stream: TlsStream | trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            errors[name] = exc
            if isinstance(stream, trio.SSLStream):
                await stream.transport_stream.aclose()  # a failed client hangs up

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "ours", ours)
            nursery.start_soon(run, "theirs", theirs)
    assert "certificate verify failed" in str(errors["theirs"].__cause__)
    assert isinstance(errors["ours"].__cause__, ssl.SSLError)  # the client's alert
    await ours.aclose()

    server_ctx, client_ctx = _contexts(ca, mtls=True)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(anonymous)
    s, c = _socket_pair()
    ours = TlsStream(FastSocketStream(s), server_ctx)
    theirs = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(c)),
        anonymous,
        server_hostname="proxy.test",
    )
    errors.clear()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "ours", ours)
            nursery.start_soon(theirs.do_handshake)  # (TLS 1.3: the client learns it later)
    assert "did not return a certificate" in str(errors["ours"].__cause__).lower()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await theirs.receive_some()  # the server's alert
    await ours.aclose()
    await theirs.transport_stream.aclose()


async def test_a_peer_that_never_completes_the_handshake_is_not_waited_for_forever(
    ca: trustme.CA,
) -> None:
    """Garbage instead of a ClientHello fails the handshake at once."""
    server_ctx, _ = _contexts(ca)
    s, c = _socket_pair()
    ours = TlsStream(FastSocketStream(s), server_ctx)
    c.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
        await ours.do_handshake()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await ours.aclose()
    c.close()


async def test_client_side_sends_sni_and_verifies_the_server(ca: trustme.CA) -> None:
    """The upstream side: SNI and ALPN offered, the server's certificate checked against the
    trusted CA (a server from another CA fails the handshake, with the reason)."""
    server_ctx, client_ctx = _contexts(ca, alpn=["h2"])
    names: list[str | None] = []
    server_ctx.sni_callback = lambda obj, name, ctx: names.append(name)
    s, c = _socket_pair()
    theirs = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(s)), server_ctx, server_side=True
    )
    ours = TlsStream(
        FastSocketStream(c), client_ctx, server_side=False, server_hostname="proxy.test"
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.do_handshake)
            nursery.start_soon(theirs.do_handshake)
        assert names == ["proxy.test"]
        assert ours.selected_alpn_protocol() == "h2"
        await ours.send_all(b"ping")
        assert await _receive_exactly(theirs, 4) == b"ping"
        await theirs.send_all(b"pong")
        assert await _receive_exactly(ours, 4) == b"pong"
    await ours.aclose()
    await theirs.aclose()

    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("proxy.test").configure_cert(stranger)
    s, c = _socket_pair()
    theirs = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(s)), stranger, server_side=True
    )
    ours = TlsStream(
        FastSocketStream(c), client_ctx, server_side=False, server_hostname="proxy.test"
    )

    async def server() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await theirs.do_handshake()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            with pytest.raises(trio.BrokenResourceError) as info:
                await ours.do_handshake()
            await ours.aclose()  # (the server sees the alert, then the close)
    assert "certificate verify failed" in str(info.value)
    await theirs.transport_stream.aclose()
