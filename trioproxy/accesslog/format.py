"""Envoy's substitution formatter: ``%COMMAND(args):max_len%`` over a ``StreamInfo``.

Theory of operation: a format string is compiled once, at config time, into alternating literal
strings and *getters* — small closures ``(StreamInfo) -> str | int | None`` chosen by command
name from a table. Formatting a line is one pass over that list: no parsing, no regex and no
dispatch on command names per log line. ``None`` and ``""`` mean "missing" and print ``-`` (or
nothing with ``omit_empty_values``).

``json_format`` compiles each string value of the struct the same way. A value that is exactly
one command keeps its type: numbers for byte counts, durations and codes, ``null`` when missing;
a value mixing text and commands is a string. Non-string values pass through unchanged. Keys
come out sorted, as Envoy 1.40 prints them.

``%START_TIME(fmt)%`` takes strftime specifiers (always UTC) plus Envoy's ``%s`` (epoch
seconds), ``%f``/``%Nf`` (N fractional digits, 9 by default) and ``%ENS`` (seconds with N
fractional digits). The part that depends only on the whole second is cached, since consecutive
log lines almost always share it.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.stream_info import StreamInfo


class Blank:
    """An empty value that is not missing: written as nothing, where an empty string is
    written ``-`` (text) or ``null`` (JSON). Envoy's %LOCAL_REPLY_BODY% is one."""

    __slots__ = ()

    def __str__(self) -> str:
        return ""


BLANK = Blank()
Value = str | int | Blank | None
Getter = Callable[[StreamInfo], Value]

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
DEFAULT_START_TIME = "%Y-%m-%dT%H:%M:%E3SZ"

# Envoy's response flags in its bit order (the order %RESPONSE_FLAGS% prints them in), with the
# long names %RESPONSE_FLAGS_LONG% prints.
RESPONSE_FLAGS: dict[str, str] = {
    "LH": "FailedLocalHealthCheck",
    "UH": "NoHealthyUpstream",
    "UT": "UpstreamRequestTimeout",
    "LR": "LocalReset",
    "UR": "UpstreamRemoteReset",
    "UF": "UpstreamConnectionFailure",
    "UC": "UpstreamConnectionTermination",
    "UO": "UpstreamOverflow",
    "NR": "NoRouteFound",
    "DI": "DelayInjected",
    "FI": "FaultInjected",
    "RL": "RateLimited",
    "UAEX": "UnauthorizedExternalService",
    "RLSE": "RateLimitServiceError",
    "DC": "DownstreamConnectionTermination",
    "URX": "UpstreamRetryLimitExceeded",
    "SI": "StreamIdleTimeout",
    "IH": "InvalidEnvoyRequestHeaders",
    "DPE": "DownstreamProtocolError",
    "UMSDR": "UpstreamMaxStreamDurationReached",
    "RFCF": "ResponseFromCacheFilter",
    "NFCF": "NoFilterConfigFound",
    "DT": "DurationTimeout",
    "UPE": "UpstreamProtocolError",
    "NC": "NoClusterFound",
    "OM": "OverloadManager",
    "DF": "DnsResolutionFailed",
    "DO": "DropOverload",
    "DR": "DownstreamRemoteReset",
    "UDO": "UnconditionalDropOverload",
}
_FLAG_ORDER = {name: i for i, name in enumerate(RESPONSE_FLAGS)}


def _flags_key(flag: str) -> int:
    return _FLAG_ORDER.get(flag, len(_FLAG_ORDER))


def flags_short(flags: set[str]) -> str:
    """Envoy prints ``-`` for no flags even where other missing values are null or omitted."""
    if not flags:
        return "-"
    if len(flags) == 1:
        return next(iter(flags))
    return ",".join(sorted(flags, key=_flags_key))


# -- START_TIME ------------------------------------------------------------------------------


class StartTimeFormat:
    """A compiled ``%START_TIME(...)%`` format: cached whole-second text + fractional parts."""

    __slots__ = ("_cache", "_cache_sec", "_parts", "_split")

    def __init__(self, fmt: str) -> None:
        # parts: ("s", strftime chunk) | ("e", "") epoch seconds | ("f", digits)
        parts: list[tuple[str, str | int]] = []
        chunk: list[str] = []
        i, n = 0, len(fmt)
        while i < n:
            c = fmt[i]
            if c != "%" or i + 1 >= n:
                chunk.append(c)
                i += 1
                continue
            nxt = fmt[i + 1]
            special: tuple[str, str | int] | None = None
            width = 2
            if nxt == "s":
                special = ("e", "")
            elif nxt == "f":
                special = ("f", 9)
            elif nxt.isdigit() and nxt != "0" and i + 2 < n and fmt[i + 2] == "f":
                special, width = ("f", int(nxt)), 3
            elif nxt == "E" and i + 3 < n and fmt[i + 2].isdigit() and fmt[i + 3] == "S":
                digits = int(fmt[i + 2])
                chunk.append("%S")
                if digits:
                    chunk.append(".")
                    special = ("f", digits)
                else:
                    special = None
                i += 4
                if special is not None:
                    parts.append(("s", "".join(chunk)))
                    chunk = []
                    parts.append(special)
                continue
            if special is None:
                chunk.append(fmt[i : i + 2])
                i += 2
                continue
            if chunk:
                parts.append(("s", "".join(chunk)))
                chunk = []
            parts.append(special)
            i += width
        if chunk:
            parts.append(("s", "".join(chunk)))
        self._parts = tuple(parts)
        self._cache_sec = -1
        self._cache: tuple[str, ...] = ()
        self._split: tuple[str, int, str] | None = None

    def format(self, t: float) -> str:
        us = round(t * 1e6)  # a float epoch time holds microseconds, not nanoseconds
        sec, frac = divmod(us, 1_000_000)
        if sec != self._cache_sec:
            self._fill_cache(sec)
        split = self._split
        if split is not None:  # the common shape: text, one fraction, text
            head, n, tail = split
            return head + f"{frac:06d}000"[:n] + tail
        out = []
        digits9 = f"{frac:06d}000"
        for (kind, arg), cached in zip(self._parts, self._cache, strict=True):
            out.append(digits9[: int(arg)] if kind == "f" else cached)
        return "".join(out)

    def _fill_cache(self, sec: int) -> None:
        tm = time.gmtime(sec)
        self._cache = tuple(
            time.strftime(str(arg), tm) if kind == "s" else str(sec) if kind == "e" else ""
            for kind, arg in self._parts
        )
        self._cache_sec = sec
        kinds = [kind for kind, _ in self._parts]
        if kinds.count("f") == 1:
            i = kinds.index("f")
            self._split = (
                "".join(self._cache[:i]),
                int(self._parts[i][1]),
                "".join(self._cache[i + 1 :]),
            )
        elif "f" not in kinds:
            self._split = ("".join(self._cache), 0, "")
        else:
            self._split = None


# -- command table ---------------------------------------------------------------------------


def duration_ms(a: float | None, b: float | None) -> int | None:
    if a is None or b is None:
        return None
    # Envoy truncates nanoseconds to milliseconds; the epsilon undoes float error (9.9999…→10).
    return math.floor((b - a) * 1000 + 1e-6)


def _without_port(addr: str) -> str:
    if not addr:
        return addr
    if addr[0] == "[":
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return addr


def _header_getter(
    which: Callable[[StreamInfo], Headers | None], args: str, command: str
) -> Callable[[StreamInfo], str | None]:
    if not args:
        raise ConfigError(f"{command} requires parameters")
    main, _, alt = args.partition("?")
    main = main.lower()
    alt = alt.lower()
    if not alt:

        def get(info: StreamInfo) -> str | None:
            headers = which(info)
            return None if headers is None else headers.get(main)

        return get

    def get_alt(info: StreamInfo) -> str | None:
        headers = which(info)
        if headers is None:
            return None
        v = headers.get(main)
        return headers.get(alt) if v is None else v

    return get_alt


def _simple(field: str) -> Getter:
    def get(info: StreamInfo) -> Value:
        return getattr(info, field)  # type: ignore[no-any-return]

    get.__name__ = f"get_{field}"
    return get


_HOSTNAME = socket.gethostname()

# Commands without arguments: name -> getter. Strings are "missing" when empty.
_NOARG: dict[str, Getter] = {
    "RESPONSE_CODE": lambda i: i.response_code,
    "RESPONSE_CODE_DETAILS": lambda i: i.response_code_details,
    "RESPONSE_FLAGS": lambda i: flags_short(i.response_flags),
    "RESPONSE_FLAGS_LONG": lambda i: (
        ",".join(RESPONSE_FLAGS.get(f, f) for f in sorted(i.response_flags, key=_flags_key))
        if i.response_flags
        else "-"
    ),
    "DURATION": lambda i: duration_ms(i.start_monotonic, i.end_monotonic),
    "REQUEST_DURATION": lambda i: duration_ms(i.start_monotonic, i.last_downstream_rx),
    "RESPONSE_DURATION": lambda i: duration_ms(i.start_monotonic, i.first_upstream_rx),
    "RESPONSE_TX_DURATION": lambda i: duration_ms(i.first_upstream_rx, i.last_downstream_tx),
    "BYTES_RECEIVED": lambda i: i.bytes_received,
    "BYTES_SENT": lambda i: i.bytes_sent,
    "PROTOCOL": lambda i: i.protocol,
    "UPSTREAM_HOST": lambda i: i.upstream_host,
    "UPSTREAM_REMOTE_ADDRESS": lambda i: i.upstream_host,
    # (a cluster's alt_stat_name where it has one, as Envoy 1.40; _RAW: its name)
    "UPSTREAM_CLUSTER": lambda i: i.upstream_cluster_observability or i.upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": lambda i: i.upstream_cluster,
    "UPSTREAM_LOCAL_ADDRESS": lambda i: i.upstream_local_address,
    # (spaces as underscores, as Envoy's formatter writes it)
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda i: i.upstream_transport_failure_reason.replace(
        " ", "_"
    ),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda i: i.downstream_remote_address,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_remote_address),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda i: i.downstream_local_address,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_local_address),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda i: i.downstream_direct_remote_address,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: _without_port(
        i.downstream_direct_remote_address
    ),
    "REQUESTED_SERVER_NAME": lambda i: i.requested_server_name,
    "ROUTE_NAME": lambda i: i.route_name,
    "VIRTUAL_HOST_NAME": lambda i: i.virtual_host_name,
    "HOSTNAME": lambda i: _HOSTNAME,
    "CONNECTION_ID": lambda i: i.connection_id,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda i: i.attempt_count,
    "LOCAL_REPLY_BODY": lambda i: i.local_reply_body or BLANK,
}

# Commands whose single-command JSON value is a number.
NUMERIC = frozenset(
    {
        "RESPONSE_CODE",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "CONNECTION_ID",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    }
)

_HEADER_COMMANDS: dict[str, Callable[[StreamInfo], Headers | None]] = {
    "REQ": lambda i: i.request_headers,
    "RESP": lambda i: i.response_headers,
    "TRAILER": lambda i: i.response_trailers,
}


def _truncate(get: Getter, n: int) -> Getter:
    def truncated(info: StreamInfo) -> Value:
        v = get(info)
        return v[:n] if isinstance(v, str) else v

    return truncated


def make_getter(command: str, args: str | None, max_len: int | None) -> Getter:
    """The getter for one command; ``ConfigError`` for commands Envoy would not know."""
    get: Getter
    if command in _HEADER_COMMANDS:
        get = _header_getter(_HEADER_COMMANDS[command], args or "", command)
    elif command == "START_TIME":
        st = StartTimeFormat(args or DEFAULT_START_TIME)

        def get(info: StreamInfo) -> Value:
            return st.format(info.start_time)

    elif command in _NOARG:
        get = _NOARG[command]
    else:
        raise ConfigError(f"Not supported field in StreamInfo: {command}")
    if max_len is not None:
        get = _truncate(get, max_len)
    return get


# -- parsing ---------------------------------------------------------------------------------

Segment = tuple[str, str | None, int | None]  # (command, args, max_len)


def parse(fmt: str) -> list[str | Segment]:
    """Split a format string into literals and ``(command, args, max_len)`` segments."""
    out: list[str | Segment] = []
    lit: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            j = fmt.find("%", i)
            j = n if j < 0 else j
            lit.append(fmt[i:j])
            i = j
            continue
        if fmt.startswith("%%", i):
            lit.append("%")
            i += 2
            continue
        j = i + 1
        while j < n and (fmt[j].isupper() or fmt[j].isdigit() or fmt[j] == "_"):
            j += 1
        command = fmt[i + 1 : j]
        args: str | None = None
        if j < n and fmt[j] == "(":
            close = fmt.find(")", j)
            if close < 0:
                raise _bad(fmt, i)
            args = fmt[j + 1 : close]
            j = close + 1
        max_len: int | None = None
        if j < n and fmt[j] == ":":
            k = j + 1
            while k < n and fmt[k].isdigit():
                k += 1
            if k == j + 1:
                raise _bad(fmt, i)
            max_len = int(fmt[j + 1 : k])
            j = k
        if not command or j >= n or fmt[j] != "%":
            raise _bad(fmt, i)
        if lit:
            out.append("".join(lit))
            lit = []
        out.append((command, args, max_len))
        i = j + 1
    if lit:
        out.append("".join(lit))
    return out


def _bad(fmt: str, pos: int) -> ConfigError:
    return ConfigError(
        f"Incorrect configuration: {fmt}. Couldn't find valid command at position {pos}"
    )


# -- formatters ------------------------------------------------------------------------------


class TextFormatter:
    """A compiled text format: ``format(info)`` returns the line (newline included if the
    format has one)."""

    __slots__ = ("_head", "_missing", "_ops")

    def __init__(self, fmt: str, *, omit_empty_values: bool = False) -> None:
        segments = parse(fmt)
        ops: list[tuple[Getter, str]] = []
        head = ""
        for seg in segments:
            if isinstance(seg, str):
                if ops:
                    ops[-1] = (ops[-1][0], ops[-1][1] + seg)
                else:
                    head += seg
            else:
                ops.append((make_getter(*seg), ""))
        self._head = head
        self._ops = tuple(ops)
        self._missing = "" if omit_empty_values else "-"

    def format(self, info: StreamInfo) -> str:
        out = [self._head]
        missing = self._missing
        for get, tail in self._ops:
            v = get(info)
            if v is None or v == "":
                out.append(missing)
            elif v.__class__ is str:
                out.append(v)
            else:
                out.append(str(v))
            out.append(tail)
        return "".join(out)


class JsonFormatter:
    """A compiled ``json_format``: one JSON object per line."""

    __slots__ = ("_omit", "_template")

    def __init__(self, struct: Mapping[str, Any], *, omit_empty_values: bool = False) -> None:
        self._omit = omit_empty_values
        self._template = self._compile(struct, "json_format")

    def _compile(self, value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            return {k: self._compile(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, str):
            try:
                segs = parse(value)
                if len(segs) == 1 and not isinstance(segs[0], str):
                    command = segs[0][0]
                    get = make_getter(*segs[0])
                    return _Single(get, command in NUMERIC)
                if all(isinstance(s, str) for s in segs):
                    return "".join(s for s in segs if isinstance(s, str))
                return TextFormatter(value, omit_empty_values=self._omit)
            except ConfigError as exc:
                raise ConfigError(exc.reason, path=path) from None
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        raise ConfigError(
            "Only string values, nested structs, bool values and number values are "
            "supported in structured access log format.",
            path=path,
        )

    def _render(self, template: Mapping[str, Any], info: StreamInfo) -> dict[str, Any]:
        out: dict[str, Any] = {}
        omit = self._omit
        for k, t in template.items():
            cls = t.__class__
            if cls is _Single:
                v = t.get(info)
                if v is None or v == "":
                    if omit:
                        continue
                    v = None
                elif not t.numeric and v.__class__ is not str:
                    v = str(v)
            elif cls is TextFormatter:
                v = t.format(info)
                if omit and not v:
                    continue
            elif cls is dict:
                v = self._render(t, info)
            else:
                v = t
            out[k] = v
        return out

    def format(self, info: StreamInfo) -> str:
        return (
            json.dumps(
                self._render(self._template, info),
                separators=(",", ":"),
                ensure_ascii=False,
                sort_keys=True,
            )
            + "\n"
        )


class _Single:
    __slots__ = ("get", "numeric")

    def __init__(self, get: Getter, numeric: bool) -> None:
        self.get = get
        self.numeric = numeric


Formatter = TextFormatter | JsonFormatter


def formatter_from_proto(d: Mapping[str, Any] | None) -> Formatter:
    """Build a formatter from a ``SubstitutionFormatString`` dict (``None``: Envoy's default)."""
    if not d:
        return TextFormatter(DEFAULT_FORMAT)
    if d.get("formatters"):
        raise ConfigError("custom formatters are not supported yet", path="formatters")
    omit = bool(d.get("omit_empty_values", False))
    try:
        if "json_format" in d:
            return JsonFormatter(d["json_format"], omit_empty_values=omit)
        if "text_format_source" in d:
            src = d["text_format_source"]
            if "inline_string" in src:
                text = str(src["inline_string"])
            elif "inline_bytes" in src:
                text = base64.b64decode(src["inline_bytes"]).decode()
            elif "filename" in src:
                try:
                    with open(src["filename"], encoding="utf-8") as f:
                        text = f.read()
                except OSError as exc:
                    raise ConfigError(
                        f"cannot read {src['filename']}: {exc.strerror}",
                        path="text_format_source.filename",
                    ) from None
            else:
                raise ConfigError("empty data source", path="text_format_source")
            return _text(text, omit, "text_format_source")
        if "text_format" in d:
            return _text(str(d["text_format"]), omit, "text_format")
    except ConfigError as exc:
        if exc.path:
            raise
        raise exc.at("json_format" if "json_format" in d else "") from None
    return TextFormatter(DEFAULT_FORMAT, omit_empty_values=omit)


def _text(text: str, omit: bool, path: str) -> TextFormatter:
    try:
        return TextFormatter(text, omit_empty_values=omit)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=path) from None
