"""Drive a parser to completion over a byte string and record what a server would see."""

from __future__ import annotations

from typing import Any

from trioproxy.errors import ProtocolError
from trioproxy.http import h1

BACKENDS = ["httptools", "h11"]


def run(parser: Any, chunks: list[bytes], eof: bool = True, cycle: bool = True) -> list[Any]:
    """Feed ``chunks`` one by one, collecting events (Data merged); an error ends the list."""
    out: list[Any] = []
    heads: list[Any] = []
    cycled = False

    def drain() -> bool:
        nonlocal cycled
        while True:
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                out.append(("error", exc.status_hint))
                return False
            if ev is h1.NEED_DATA:
                return True
            if ev is h1.PAUSED:
                if cycle and out and type(out[-1]) is h1.EndOfMessage and not cycled:
                    cycled = True
                    parser.start_next_cycle()
                    continue
                out.append("paused")
                return False
            if type(ev) is h1.Data and out and type(out[-1]) is h1.Data:
                out[-1] = h1.Data(out[-1].data + ev.data)
            else:
                cycled = False
                out.append(ev)
                if type(ev) is h1.RequestHead or type(ev) is h1.ResponseHead:
                    heads.append(ev)

    for chunk in chunks:
        parser.feed(chunk)
        if not drain():
            return out
    if eof:
        parser.feed(b"")
        drain()
    return out


def parse_requests(
    codec: str, data: bytes, splits: list[int] | None = None, **kw: Any
) -> list[Any]:
    return run(h1.make_server_parser(codec, **kw), split(data, splits))


def split(data: bytes, cuts: list[int] | None) -> list[bytes]:
    if not cuts:
        return [data]
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return [c for c in out if c]
