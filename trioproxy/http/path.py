"""Request path normalisation before routing (Envoy's ``normalize_path``, ``merge_slashes``,
``path_with_escaped_slashes_action``).

Sans-IO and cheap in the common case: a path without ``%``, ``.`` segments, ``//`` or ``\\``
is returned as is without allocating. The normalised path is what RBAC and routing see and what
goes upstream. A path that cannot be made safe gives ``None`` (the caller answers 400).
"""

from __future__ import annotations

import enum

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789ABCDEFabcdef"


class EscapedSlashes(enum.Enum):
    KEEP_UNCHANGED = "KEEP_UNCHANGED"
    REJECT_REQUEST = "REJECT_REQUEST"
    UNESCAPE_AND_REDIRECT = "UNESCAPE_AND_REDIRECT"
    UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"


class Outcome(enum.Enum):
    OK = 0
    REJECT = 1  # 400
    REDIRECT = 2  # 307 to the normalised path


def _decode_unreserved(path: str) -> str | None:
    """Decode %XX of unreserved characters; upper-case the hex of the others."""
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "%":
            h = path[i + 1 : i + 3]
            if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                return None
            b = int(h, 16)
            if b in _UNRESERVED:
                out.append(chr(b))
            else:
                out.append("%" + h.upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


def normalize(
    path: str,
    *,
    normalize_path: bool,
    merge_slashes: bool,
    escaped_slashes: EscapedSlashes = EscapedSlashes.KEEP_UNCHANGED,
) -> tuple[Outcome, str]:
    """Normalise the path part of a request target (query kept as is).

    Returns the outcome and the new target. ``REJECT`` means 400; ``REDIRECT`` means Envoy's
    UNESCAPE_AND_REDIRECT answer (307 with the unescaped path as Location)."""
    q = path.find("?")
    p, query = (path, "") if q < 0 else (path[:q], path[q:])
    if not p.startswith("/"):
        return (Outcome.OK, path) if p == "*" else (Outcome.REJECT, path)
    outcome = Outcome.OK
    if escaped_slashes is not EscapedSlashes.KEEP_UNCHANGED and "%" in p:
        lowered = p.replace("%2f", "%2F").replace("%5c", "%5C")
        if "%2F" in lowered or "%5C" in lowered:
            if escaped_slashes is EscapedSlashes.REJECT_REQUEST:
                return Outcome.REJECT, path
            p = lowered.replace("%2F", "/").replace("%5C", "\\")
            if escaped_slashes is EscapedSlashes.UNESCAPE_AND_REDIRECT:
                outcome = Outcome.REDIRECT
    if normalize_path:
        if "%" in p:
            decoded = _decode_unreserved(p)
            if decoded is None:
                return Outcome.REJECT, path
            p = decoded
        if "\\" in p:
            p = p.replace("\\", "/")
        if "/." in p:
            p = _remove_dot_segments(p)
    if merge_slashes and "//" in p:
        while "//" in p:
            p = p.replace("//", "/")
    return outcome, p + query
