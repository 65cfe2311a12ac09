"""The core access loggers: ``envoy.access_loggers.{stdout,stderr,file}`` and access log filters.

Theory of operation: ``log(info)`` formats one line and appends it to a *sink*, a byte buffer
shared by every logger writing to the same place (one per file path; ``/dev/stdout`` and
``/dev/stderr`` are the process's own fds, as with Envoy's access log manager). A sink writes
only when its buffer passes 64 KiB, when ``flush_all()`` is called — once a second by
``run_flusher()``, which the server runs in its root nursery — and at shutdown (``run_flusher``
flushes in ``finally``; an ``atexit`` hook catches the rest). The write is a plain ``os.write``
of at most a few tens of KiB to a local file or pipe, short enough to do on the event loop.

Access log filters (``AccessLog.filter``) compile into plain predicates over ``StreamInfo``;
``build_access_log(entry, registry.access_loggers, context)`` turns one ``access_log`` entry
into a logger with its filter applied, and is what a connection manager or tcp_proxy calls.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from trioproxy.accesslog.format import (
    RESPONSE_FLAGS,
    Formatter,
    JsonFormatter,
    TextFormatter,
    duration_ms,
    formatter_from_proto,
)
from trioproxy.errors import ConfigError
from trioproxy.hookspecs import hookimpl
from trioproxy.http.stream_info import StreamInfo
from trioproxy.registry import AccessLoggerFactory, Kind

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 1.0


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...


# -- sinks -----------------------------------------------------------------------------------


class Sink:
    """A buffered, append-only byte destination (a file descriptor)."""

    __slots__ = ("_buf", "_owns_fd", "fd", "name")

    def __init__(self, name: str, fd: int, owns_fd: bool) -> None:
        self.name = name
        self.fd = fd
        self._buf = bytearray()
        self._owns_fd = owns_fd

    def write(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if len(buf) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        while buf:
            try:
                n = os.write(self.fd, buf)
            except BlockingIOError:
                return  # a non-blocking pipe is full: keep the rest for the next flush
            except OSError:
                buf.clear()  # the destination is gone; dropping lines beats crashing
                return
            del buf[:n]

    def pending(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self.fd)

    def __repr__(self) -> str:
        return f"<Sink {self.name} fd={self.fd} pending={len(self._buf)}>"


_SINKS: dict[str, Sink] = {}
_STD = {"/dev/stdout": 1, "/dev/stderr": 2}


def sink_for(path: str) -> Sink:
    """The shared sink for ``path`` (opened for appending on first use)."""
    sink = _SINKS.get(path)
    if sink is not None:
        return sink
    if path in _STD:
        sink = Sink(path, _STD[path], owns_fd=False)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"Failed to open file '{path}': {exc.strerror}", path="path"
            ) from None
        sink = Sink(path, fd, owns_fd=True)
    _SINKS[path] = sink
    return sink


def flush_all() -> None:
    """Write out every sink's buffer (also called at interpreter exit)."""
    for sink in list(_SINKS.values()):
        sink.flush()


def close_all() -> None:
    """Flush and close every sink (for tests and for a clean shutdown)."""
    for sink in list(_SINKS.values()):
        sink.close()
    _SINKS.clear()


async def run_flusher(
    interval: float = FLUSH_INTERVAL,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Flush every access log sink each ``interval`` seconds; flush once more when cancelled.

    Run it in the server's root nursery: ``nursery.start_soon(run_flusher)``.
    """
    task_status.started()
    try:
        while True:
            await trio.sleep(interval)
            flush_all()
    finally:
        flush_all()


atexit.register(flush_all)


# -- loggers ---------------------------------------------------------------------------------


class StreamLogger:
    """Formats each stream into a line and hands it to a sink."""

    __slots__ = ("formatter", "sink")

    def __init__(self, formatter: Formatter, sink: Sink) -> None:
        self.formatter = formatter
        self.sink = sink

    def log(self, info: StreamInfo) -> None:
        self.sink.write(self.formatter.format(info).encode("utf-8", "surrogateescape"))

    def flush(self) -> None:
        self.sink.flush()

    def __repr__(self) -> str:
        return f"<StreamLogger {self.sink.name}>"


class FilteredLogger:
    """A logger behind an access log filter."""

    __slots__ = ("inner", "predicate")

    def __init__(self, predicate: Callable[[StreamInfo], bool], inner: AccessLogger) -> None:
        self.predicate = predicate
        self.inner = inner

    def log(self, info: StreamInfo) -> None:
        if self.predicate(info):
            self.inner.log(info)

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()


# -- configs ---------------------------------------------------------------------------------


def _legacy_formatter(d: Mapping[str, Any]) -> Formatter:
    if "log_format" in d:
        try:
            return formatter_from_proto(d["log_format"])
        except ConfigError as exc:
            raise exc.at("log_format") from None
    if "format" in d:
        try:
            return TextFormatter(str(d["format"]))
        except ConfigError as exc:
            raise exc.at("format") from None
    for key in ("json_format", "typed_json_format"):
        if key in d:
            try:
                return JsonFormatter(d[key])
            except ConfigError as exc:
                raise exc.at(key) from None
    return formatter_from_proto(None)


@attrs.frozen
class StreamAccessLogConfig:
    """``StdoutAccessLog`` / ``StderrAccessLog``."""

    formatter: Formatter

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> StreamAccessLogConfig:
        try:
            return cls(formatter_from_proto(d.get("log_format")))
        except ConfigError as exc:
            raise exc.at("log_format") from None


@attrs.frozen
class FileAccessLogConfig:
    """``envoy.extensions.access_loggers.file.v3.FileAccessLog``."""

    path: str
    formatter: Formatter

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> FileAccessLogConfig:
        path = d.get("path", "")
        if not path:
            raise ConfigError("value length must be at least 1 characters", path="path")
        return cls(path=str(path), formatter=_legacy_formatter(d))


def _create_stream(path: str) -> Callable[[StreamAccessLogConfig, Any], StreamLogger]:
    def create(config: StreamAccessLogConfig, context: Any) -> StreamLogger:
        return StreamLogger(config.formatter, sink_for(path))

    return create


def _create_file(config: FileAccessLogConfig, context: Any) -> StreamLogger:
    return StreamLogger(config.formatter, sink_for(config.path))


_URL = "type.googleapis.com/envoy.extensions.access_loggers."


@hookimpl
def trioproxy_access_loggers() -> list[AccessLoggerFactory]:
    return [
        AccessLoggerFactory(
            name="envoy.access_loggers.stdout",
            type_urls=(_URL + "stream.v3.StdoutAccessLog",),
            config_type=StreamAccessLogConfig.from_proto,
            create=_create_stream("/dev/stdout"),
        ),
        AccessLoggerFactory(
            name="envoy.access_loggers.stderr",
            type_urls=(_URL + "stream.v3.StderrAccessLog",),
            config_type=StreamAccessLogConfig.from_proto,
            create=_create_stream("/dev/stderr"),
        ),
        AccessLoggerFactory(
            name="envoy.access_loggers.file",
            type_urls=(_URL + "file.v3.FileAccessLog",),
            config_type=FileAccessLogConfig.from_proto,
            create=_create_file,
        ),
    ]


# -- filters ---------------------------------------------------------------------------------

Predicate = Callable[[StreamInfo], bool]

_OPS: dict[str, Callable[[int, int], bool]] = {
    "EQ": lambda a, b: a == b,
    "GE": lambda a, b: a >= b,
    "LE": lambda a, b: a <= b,
    "NE": lambda a, b: a != b,
}


def _comparison(d: Mapping[str, Any], value_of: Callable[[StreamInfo], int | None]) -> Predicate:
    cmp = d.get("comparison", {})
    op_name = cmp.get("op", "EQ")
    op = _OPS.get(op_name)
    if op is None:
        raise ConfigError(f"invalid comparison op {op_name!r}", path="comparison.op")
    rv = cmp.get("value", {})
    # runtime_key is required by Envoy's schema; with no runtime layer its default_value is what
    # Envoy would use too, so the key is accepted and ignored.
    try:
        target = int(rv.get("default_value", 0))
    except (TypeError, ValueError):
        raise ConfigError("must be an integer", path="comparison.value.default_value") from None

    def pred(info: StreamInfo) -> bool:
        v = value_of(info)
        return op(0 if v is None else v, target)

    return pred


def _status_code_filter(d: Mapping[str, Any]) -> Predicate:
    return _comparison(d, lambda i: i.response_code)


def _duration_filter(d: Mapping[str, Any]) -> Predicate:
    return _comparison(d, lambda i: duration_ms(i.start_monotonic, i.end_monotonic))


def _not_health_check_filter(d: Mapping[str, Any]) -> Predicate:
    return lambda i: not i.health_check


def _response_flag_filter(d: Mapping[str, Any]) -> Predicate:
    flags = d.get("flags", [])
    for j, f in enumerate(flags):
        if f not in RESPONSE_FLAGS:
            raise ConfigError(f"invalid response flag {f!r}", path=f"flags[{j}]")
    if not flags:
        return lambda i: bool(i.response_flags)
    wanted = frozenset(flags)
    return lambda i: not wanted.isdisjoint(i.response_flags)


def _and_filter(d: Mapping[str, Any]) -> Predicate:
    preds = _sub_filters(d)
    return lambda i: all(p(i) for p in preds)


def _or_filter(d: Mapping[str, Any]) -> Predicate:
    preds = _sub_filters(d)
    return lambda i: any(p(i) for p in preds)


def _sub_filters(d: Mapping[str, Any]) -> tuple[Predicate, ...]:
    filters = d.get("filters", [])
    if len(filters) < 2:
        raise ConfigError("value must contain at least 2 item(s)", path="filters")
    out = []
    for j, f in enumerate(filters):
        try:
            out.append(build_filter(f))
        except ConfigError as exc:
            raise exc.at(f"filters[{j}]") from None
    return tuple(out)


_FILTERS: dict[str, Callable[[Mapping[str, Any]], Predicate]] = {
    "status_code_filter": _status_code_filter,
    "duration_filter": _duration_filter,
    "not_health_check_filter": _not_health_check_filter,
    "response_flag_filter": _response_flag_filter,
    "and_filter": _and_filter,
    "or_filter": _or_filter,
}


def build_filter(d: Mapping[str, Any]) -> Predicate:
    """Compile an ``AccessLogFilter`` dict into a predicate over ``StreamInfo``."""
    if len(d) != 1:
        raise ConfigError("exactly one filter type must be set")
    ((kind, body),) = d.items()
    make = _FILTERS.get(kind)
    if make is None:
        raise ConfigError(f"access log filter {kind} not supported yet", path=kind)
    try:
        return make(body or {})
    except ConfigError as exc:
        raise exc.at(kind) from None


def build_access_log(entry: Mapping[str, Any], loggers: Kind[Any], context: Any) -> AccessLogger:
    """One ``access_log`` entry (``{name, typed_config, filter}``) → a ready logger.

    ``loggers`` is ``registry.access_loggers``; errors carry paths relative to ``entry``.
    """
    factory, raw = loggers.lookup(entry)
    try:
        config = factory.config_type(raw)
    except ConfigError as exc:
        raise exc.at("typed_config") from None
    logger: AccessLogger = factory.create(config, context)
    if "filter" in entry:
        try:
            pred = build_filter(entry["filter"])
        except ConfigError as exc:
            raise exc.at("filter") from None
        logger = FilteredLogger(pred, logger)
    return logger


__all__ = [
    "FLUSH_BYTES",
    "AccessLogger",
    "FileAccessLogConfig",
    "FilteredLogger",
    "Sink",
    "StreamAccessLogConfig",
    "StreamLogger",
    "build_access_log",
    "build_filter",
    "close_all",
    "flush_all",
    "run_flusher",
    "sink_for",
]
