"""OTLP trace export, protobuf-encoded by hand: the handful of messages a proxy's spans need
(``ExportTraceServiceRequest`` → ``ResourceSpans`` → ``ScopeSpans`` → ``Span``), written with
the protobuf wire format so trioproxy needs no OpenTelemetry package at run time. Field
numbers are those of opentelemetry-proto's ``trace/v1/trace.proto``,
``common/v1/common.proto`` and ``resource/v1/resource.proto``; the tests decode the output
with opentelemetry-proto itself.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, value: str) -> bytes:
    return _field(number, value.encode()) if value else b""


def _key_value(key: str, value: str) -> bytes:
    any_value = _string(1, value)  # AnyValue.string_value
    return _string(1, key) + _field(2, any_value)


def attributes(number: int, attrs: Mapping[str, str]) -> bytes:
    return b"".join(_field(number, _key_value(k, v)) for k, v in attrs.items())


def span(
    *,
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes,
    trace_state: str,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attrs: Mapping[str, str],
    error: bool,
) -> bytes:
    out = _field(1, trace_id) + _field(2, span_id) + _string(3, trace_state)
    if parent_span_id:
        out += _field(4, parent_span_id)
    out += _string(5, name) + _varint(6 << 3) + _varint(kind)
    out += _varint(7 << 3 | 1) + struct.pack("<Q", start_ns)
    out += _varint(8 << 3 | 1) + struct.pack("<Q", end_ns)
    out += attributes(9, attrs)
    if error:
        out += _field(15, _varint(3 << 3) + _varint(STATUS_ERROR))  # Status.code
    return out


def export_request(resource: Mapping[str, str], spans: Iterable[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of one resource and one (unnamed) scope."""
    scope_spans = _field(1, _string(1, "envoy")) + b"".join(_field(2, s) for s in spans)
    resource_spans = _field(1, attributes(1, resource)) + _field(2, scope_spans)
    return _field(1, resource_spans)
