"""B3 propagation: ``x-b3-*`` headers and the single ``b3`` header.

``extract`` returns the incoming context, or a sampling decision alone (``b3: 0``,
``x-b3-sampled: 0`` without ids), and raises ``B3Error`` for a malformed header: Envoy then
does not trace the request at all, rather than start a trace that joins nothing.
"""

from __future__ import annotations

import attrs

from trioproxy.http.headers import Headers


class B3Error(ValueError):
    pass


@attrs.frozen
class B3Context:
    trace_id: int  # low 64 bits
    trace_id_high: int  # high 64 bits; 0 for a 64-bit trace id
    span_id: int
    parent_id: int | None
    sampled: bool | None
    is_128: bool = False


def _hex(value: str, lengths: tuple[int, ...], what: str) -> int:
    if len(value) not in lengths:
        raise B3Error(f"invalid {what} {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise B3Error(f"invalid {what} {value!r}") from None


def _sampled(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.lower()
    if v in ("1", "true", "d"):
        return True
    if v in ("0", "false"):
        return False
    raise B3Error(f"invalid sampling state {value!r}")


def _trace_id(value: str) -> tuple[int, int, bool]:
    n = _hex(value, (16, 32), "trace id")
    return n & 0xFFFF_FFFF_FFFF_FFFF, n >> 64, len(value) == 32


NO_B3: tuple[None, None, bool] = (None, None, False)


def extract(headers: Headers) -> tuple[B3Context | None, bool | None, bool]:
    """(context, sampled, single): ``sampled`` is the decision the headers carry (``None``:
    none); ``single`` says the context came in a ``b3`` header (and goes on in one).
    Returns ``NO_B3`` itself when the request has no B3 header at all (the common case,
    found in one pass over the headers)."""
    for k, _ in headers:
        if k[:2] == "b3" or k[:5] == "x-b3-":
            break
    else:
        return NO_B3
    single = headers.get("b3")
    if single is not None:
        parts = single.split("-")
        if len(parts) == 1:
            return None, _sampled(parts[0]), True
        if len(parts) > 4:
            raise B3Error(f"invalid b3 header {single!r}")
        low, high, is_128 = _trace_id(parts[0])
        span_id = _hex(parts[1], (16,), "span id")
        sampled = _sampled(parts[2]) if len(parts) > 2 else None
        parent = _hex(parts[3], (16,), "parent span id") if len(parts) > 3 else None
        return B3Context(low, high, span_id, parent, sampled, is_128), sampled, True
    trace = headers.get("x-b3-traceid")
    span = headers.get("x-b3-spanid")
    sampled = _sampled(headers.get("x-b3-sampled"))
    if headers.get("x-b3-flags") == "1":
        sampled = True
    if trace is None or span is None:
        return None, sampled, False
    low, high, is_128 = _trace_id(trace)
    parent_hdr = headers.get("x-b3-parentspanid")
    parent = _hex(parent_hdr, (16,), "parent span id") if parent_hdr else None
    return (
        B3Context(low, high, _hex(span, (16,), "span id"), parent, sampled, is_128),
        sampled,
        False,
    )
