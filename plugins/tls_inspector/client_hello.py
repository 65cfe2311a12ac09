"""Reading SNI and ALPN from a TLS ClientHello without terminating TLS (pure, sans-IO).

``parse(data)`` takes the bytes peeked from a new connection and returns ``NOT_TLS``,
``NEED_MORE`` (a partial record) or the ``ClientHello`` found: server name (lower-case) and
ALPN protocols. Only the first TLS record is read; a ClientHello split across records is
read as far as the first record goes (what Envoy's inspector needs for SNI in practice).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ClientHello:
    server_name: str = ""
    alpn: tuple[str, ...] = ()


NOT_TLS = object()
NEED_MORE = object()

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise IndexError
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")


def parse(data: bytes) -> ClientHello | object:
    if not data:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    if len(data) < 5:
        return NEED_MORE
    if data[1] != 0x03:  # record version major: SSL 3.0 / TLS 1.x
        return NOT_TLS
    record_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + min(record_len, 4):
        return NEED_MORE
    body = data[5 : 5 + record_len]
    if body[0] != _CLIENT_HELLO:
        return NOT_TLS
    try:
        return _client_hello(_Reader(body))
    except IndexError:
        return NEED_MORE if len(data) < 5 + record_len else ClientHello()


def _client_hello(r: _Reader) -> ClientHello:
    r.u8()  # handshake type
    r.u24()  # length
    r.take(2 + 32)  # client version, random
    r.take(r.u8())  # session id
    r.take(r.u16())  # cipher suites
    r.take(r.u8())  # compression methods
    if r.pos == len(r.data):
        return ClientHello()
    end = r.pos + 2 + r.u16()
    sni = ""
    alpn: tuple[str, ...] = ()
    while r.pos < end:
        ext_type = r.u16()
        ext = _Reader(r.take(r.u16()))
        if ext_type == _EXT_SERVER_NAME:
            list_end = 2 + ext.u16()
            while ext.pos < list_end:
                kind = ext.u8()
                name = ext.take(ext.u16())
                if kind == 0 and not sni:
                    sni = name.decode("ascii", "replace").lower()
        elif ext_type == _EXT_ALPN:
            list_end = 2 + ext.u16()
            protos = []
            while ext.pos < list_end:
                protos.append(ext.take(ext.u8()).decode("ascii", "replace"))
            alpn = tuple(protos)
    return ClientHello(sni, alpn)
