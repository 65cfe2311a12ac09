"""protoc-gen-validate rules, read from the descriptor options of the private pool.

The PGV extension (field 1071 on FieldOptions/OneofOptions) is not registered with the
protobuf runtime for a dynamically loaded pool, so it stays as unknown bytes in the options;
we pull field 1071 out of the serialized options and decode it as ``validate.FieldRules`` from
the same pool. ``check_value`` enforces the rules that reject configs in Envoy (string
lengths/prefix, numeric bounds and in/not_in, duration bounds, Any type URLs, bytes length) on
a value already in canonical proto-JSON form; required-ness is answered by ``required`` and
``oneof_required``. Messages use Envoy's wording ("value length must be at least 1 characters").
"""

from __future__ import annotations

import base64
import operator
import re
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

from trioproxy.config.descriptors import pool
from trioproxy.errors import ConfigError

_DUR = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")


def _fail(reason: str, path: str) -> ConfigError:
    return ConfigError(reason, path=path)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _ext_1071(options_bytes: bytes) -> bytes | int | None:
    """The raw value of extension field 1071 in serialized options, if present."""
    i, n = 0, len(options_bytes)
    found: bytes | int | None = None
    while i < n:
        key, i = _varint(options_bytes, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(options_bytes, i)
            if num == 1071:
                found = v
        elif wt == 2:
            ln, i = _varint(options_bytes, i)
            if num == 1071:
                found = options_bytes[i : i + ln]
            i += ln
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            break
    return found


_rules_cache: dict[str, Any] = {}


def field_rules(fd: FieldDescriptor) -> Any:
    key = fd.full_name
    if key in _rules_cache:
        return _rules_cache[key]
    rules = None
    if fd.has_options:
        raw = _ext_1071(fd.GetOptions().SerializeToString())
        if isinstance(raw, bytes):
            cls = message_factory.GetMessageClass(
                pool().FindMessageTypeByName("validate.FieldRules")
            )
            rules = cls.FromString(raw)
    _rules_cache[key] = rules
    return rules


def oneof_required(od: Any) -> bool:
    if not od.has_options:
        return False
    return _ext_1071(od.GetOptions().SerializeToString()) == 1


def _dur_seconds(s: str) -> float:
    m = _DUR.match(s)
    assert m
    v = int(m.group(2)) + int((m.group(3) or "0").ljust(9, "0")) / 1e9
    return -v if m.group(1) else v


def _num_rules(r: Any, v: float, path: str) -> None:
    if r.HasField("const") and v != r.const:
        raise _fail(f"value must equal {r.const}", path)
    if r.HasField("lt") and not v < r.lt:
        raise _fail(f"value must be less than {r.lt}", path)
    if r.HasField("lte") and not v <= r.lte:
        raise _fail(f"value must be less than or equal to {r.lte}", path)
    if r.HasField("gt") and not v > r.gt:
        raise _fail(f"value must be greater than {r.gt}", path)
    if r.HasField("gte") and not v >= r.gte:
        raise _fail(f"value must be greater than or equal to {r.gte}", path)
    if len(r.__getattribute__("in")) and v not in r.__getattribute__("in"):
        raise _fail(f"value must be in list {list(r.__getattribute__('in'))}", path)
    if len(r.not_in) and v in r.not_in:
        raise _fail(f"value must not be in list {list(r.not_in)}", path)


def check_value(rules: Any, value: Any, path: str) -> None:
    """PGV rules of one (non-repeated) value, given in canonical form."""
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    r = getattr(rules, kind)
    if not value and getattr(r, "ignore_empty", False):
        return
    if kind == "string":
        n = len(value)
        if r.HasField("min_len") and n < r.min_len:
            raise _fail(f"value length must be at least {r.min_len} characters", path)
        if r.HasField("max_len") and n > r.max_len:
            raise _fail(f"value length must be at most {r.max_len} characters", path)
        nb = len(value.encode("utf-8"))
        if r.HasField("min_bytes") and nb < r.min_bytes:
            raise _fail(f"value length must be at least {r.min_bytes} bytes", path)
        if r.HasField("max_bytes") and nb > r.max_bytes:
            raise _fail(f"value length must be at most {r.max_bytes} bytes", path)
        if r.HasField("prefix") and not value.startswith(r.prefix):
            raise _fail(f'value does not have prefix "{r.prefix}"', path)
    elif kind in (
        "uint32",
        "uint64",
        "int32",
        "int64",
        "sint32",
        "sint64",
        "fixed32",
        "fixed64",
        "sfixed32",
        "sfixed64",
        "double",
        "float",
    ):
        _num_rules(r, float(value) if kind in ("double", "float") else int(value), path)
    elif kind == "enum":
        pass  # defined_only is enforced while converting (names only resolve if defined)
    elif kind == "duration" and isinstance(value, str):
        v = _dur_seconds(value)
        for op, test, word in (
            ("lt", operator.lt, "less than"),
            ("lte", operator.le, "less than or equal to"),
            ("gt", operator.gt, "greater than"),
            ("gte", operator.ge, "greater than or equal to"),
        ):
            if r.HasField(op):
                lim = getattr(r, op)
                limit = lim.seconds + lim.nanos / 1e9
                if not test(v, limit):
                    raise _fail(f"value must be {word} {fmt_dur(lim.seconds, lim.nanos)}", path)
    elif kind == "any" and isinstance(value, dict):
        allowed = list(r.__getattribute__("in"))
        if allowed and value.get("@type") not in allowed:
            raise _fail(f"type URL must be in list {allowed}", path)
    elif kind == "bytes" and r.HasField("min_len") and len(base64.b64decode(value)) < r.min_len:
        raise _fail(f"value length must be at least {r.min_len} bytes", path)


def fmt_dur(seconds: int, nanos: int) -> str:
    if nanos == 0:
        return f"{seconds}s"
    frac = f"{nanos:09d}"
    if nanos % 1_000_000 == 0:
        frac = frac[:3]
    elif nanos % 1000 == 0:
        frac = frac[:6]
    return f"{seconds}.{frac}s"


def required(rules: Any) -> bool:
    kind = rules.WhichOneof("type") if rules is not None else None
    if rules is not None and rules.HasField("message") and rules.message.required:
        return True
    if kind in ("duration", "timestamp", "any"):
        return bool(getattr(rules, kind).required)
    return False
