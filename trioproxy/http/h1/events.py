"""Events produced by the HTTP/1.1 parsers.

Plain slotted classes rather than attrs: one RequestHead is built per request on the hot path
and attrs' generated ``__init__`` with validators costs several microseconds more.  The parsers
guarantee the field invariants (lower-case names, latin-1 values, wire order).
``NEED_DATA`` and ``PAUSED`` are sentinels compared with ``is``.
"""

from __future__ import annotations

from typing import Final

HeaderList = list[tuple[str, str]]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")


def _fields(head: RequestHead | ResponseHead) -> tuple[object, ...]:
    """(For ``__eq__``, which tests use; compiled by mypyc, classes have no ``__slots__``.)"""
    if type(head) is RequestHead:
        return (
            head.method,
            head.target,
            head.version,
            head.headers,
            head.keep_alive,
            head.chunked,
            head.content_length,
            head.expect_continue,
            head.upgrade,
        )
    assert type(head) is ResponseHead
    return (
        head.status,
        head.reason,
        head.version,
        head.headers,
        head.keep_alive,
        head.chunked,
        head.content_length,
    )


class RequestHead:
    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: HeaderList,
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        expect_continue: bool,
        upgrade: str | None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.expect_continue = expect_continue
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method!r}, {self.target!r}, {self.version!r}, {self.headers!r}, "
            f"keep_alive={self.keep_alive}, chunked={self.chunked}, "
            f"content_length={self.content_length}, expect_continue={self.expect_continue}, "
            f"upgrade={self.upgrade!r})"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not RequestHead:
            return NotImplemented
        return _fields(self) == _fields(other)

    __hash__ = None  # type: ignore[assignment]


class ResponseHead:
    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        version: str,
        headers: HeaderList,
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length

    def __repr__(self) -> str:
        return (
            f"ResponseHead({self.status}, {self.reason!r}, {self.version!r}, {self.headers!r}, "
            f"keep_alive={self.keep_alive}, chunked={self.chunked}, "
            f"content_length={self.content_length})"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not ResponseHead:
            return NotImplemented
        return _fields(self) == _fields(other)

    __hash__ = None  # type: ignore[assignment]


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Data and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


class EndOfMessage:
    __slots__ = ("trailers",)

    def __init__(self, trailers: HeaderList) -> None:
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is EndOfMessage and other.trailers == self.trailers

    __hash__ = None  # type: ignore[assignment]


Event = RequestHead | ResponseHead | Data | EndOfMessage
