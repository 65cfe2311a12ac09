"""Validate a raw config dict against Envoy's v3 schema and return its canonical proto-JSON form.

The v3 API is loaded once from ``envoy_v3.pb`` (a FileDescriptorSet built by
tools/build_descriptors.py) into a private ``DescriptorPool``. A hand-written walker goes over
the raw dict guided by the message descriptors, so every error knows the exact field path:
names are accepted as proto name or json_name and emitted as proto (snake_case) names; scalars
are checked and normalised as proto-JSON prints them (int64/uint64 as strings, enums as names,
durations like ``"0.250s"``, wrappers unwrapped, Struct/Value as plain JSON); ``Any`` is
resolved through ``@type`` and walked recursively unless its URL is in ``opaque_types``.
Scalars equal to their default are omitted unless the field tracks presence, as MessageToDict
does. Then the protoc-gen-validate rules that reject configs in Envoy are enforced; they are
read by pgv.py. Per-message tables are built lazily and cached.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from trioproxy.config import pgv, unsupported
from trioproxy.config.descriptors import pool
from trioproxy.errors import ConfigError

__all__ = ["Locate", "canonicalize", "merge", "pool"]

_DUR = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")
_INT_RANGE = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "uint32"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "uint32"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "uint64"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "uint64"),
}
_AS_STRING = {"int64", "uint64"}
_WRAPPERS = {
    "google.protobuf." + n
    for n in [
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    ]
}
_JSON_ANY = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
Locate = Callable[[str], "tuple[int, int] | None"]


def _fail(reason: str, path: str) -> ConfigError:
    return ConfigError(reason, path=path)


# --- the walker ----------------------------------------------------------------------------


class _Msg:
    """Per-message lookup table built once."""

    __slots__ = ("by_name", "required", "oneofs_required", "checked")

    def __init__(self, md: Descriptor) -> None:
        self.by_name: dict[str, FieldDescriptor] = {}
        for f in md.fields:
            self.by_name[f.name] = f
            self.by_name[f.json_name] = f
        self.required = [
            f for f in md.fields if f.containing_oneof is None and pgv.required(pgv.field_rules(f))
        ]
        self.oneofs_required = [o for o in md.oneofs if pgv.oneof_required(o)]
        self.checked = [
            (f, r)
            for f in md.fields
            if (r := pgv.field_rules(f)) is not None and not _only_required(r)
        ]


def _checks_default(fd: FieldDescriptor) -> bool:
    return (
        not fd.is_repeated
        and fd.containing_oneof is None
        and fd.type != FieldDescriptor.TYPE_MESSAGE
        and not fd.has_presence
    )


def _is_map(fd: FieldDescriptor) -> bool:
    mt = fd.message_type
    return mt is not None and mt.GetOptions().map_entry


def _only_required(r: Any) -> bool:
    return r.WhichOneof("type") is None


_msgs: dict[str, _Msg] = {}


def _table(md: Descriptor) -> _Msg:
    t = _msgs.get(md.full_name)
    if t is None:
        t = _msgs[md.full_name] = _Msg(md)
    return t


class _Walker:
    def __init__(self, opaque: Collection[str]) -> None:
        self.opaque = opaque

    def message(self, md: Descriptor, raw: Any, path: str) -> Any:
        name = md.full_name
        if name.startswith("google.protobuf."):
            special = self.wkt(name, md, raw, path)
            if special is not _NOT_WKT:
                return special
        if not isinstance(raw, Mapping):
            raise _fail(f"expected an object for {name}", path)
        if name == "google.protobuf.Any":
            return self.any(raw, path)
        table = _table(md)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise _fail(f"field names must be strings, got {key!r}", path)
            fd = table.by_name.get(key)
            sub = f"{path}.{key}" if path else key
            if fd is None:
                raise _fail(f"no such field in {name}", sub)
            sub = f"{path}.{fd.name}" if path else fd.name
            if value is None:
                out.pop(fd.name, None)
                continue
            conv = self.field(fd, value, sub)
            if conv is not _OMIT:
                out[fd.name] = conv  # a later spelling of the same field wins, as in Envoy
            else:
                out.pop(fd.name, None)
        if (refused := unsupported.refused(name, out)) is not None:
            raise _fail("not supported by trioproxy yet", f"{path}.{refused}" if path else refused)
        for o in md.oneofs:
            present = [f.name for f in o.fields if f.name in out]
            if len(present) > 1:
                raise _fail(f"multiple values for oneof {o.name}: {', '.join(present)}", path)
        for o in table.oneofs_required:
            if not any(f.name in out for f in o.fields):
                raise _fail(f"value is required (oneof {o.name})", path)
        for fd in table.required:
            if fd.name not in out:
                raise _fail("value is required", f"{path}.{fd.name}" if path else fd.name)
        for fd, rules in table.checked:
            if fd.name not in out and _checks_default(fd):
                sub = f"{path}.{fd.name}" if path else fd.name
                pgv.check_value(rules, self.default_for(fd), sub)
            elif fd.name not in out and fd.is_repeated:
                self.rules(
                    fd, rules, {} if _is_map(fd) else [], f"{path}.{fd.name}" if path else fd.name
                )
            elif fd.name in out:
                self.rules(fd, rules, out[fd.name], f"{path}.{fd.name}" if path else fd.name)
        return out

    def rules(self, fd: FieldDescriptor, rules: Any, value: Any, path: str) -> None:
        kind = rules.WhichOneof("type")
        if kind == "repeated":
            r = rules.repeated
            if r.HasField("min_items") and len(value) < r.min_items:
                raise _fail(f"value must contain at least {r.min_items} item(s)", path)
            if r.HasField("max_items") and len(value) > r.max_items:
                raise _fail(f"value must contain no more than {r.max_items} item(s)", path)
            if r.HasField("items"):
                for i, v in enumerate(value):
                    if r.items.HasField("message") and r.items.message.skip:
                        break
                    pgv.check_value(r.items, v, f"{path}[{i}]")
        elif kind == "map":
            r = rules.map
            if r.HasField("min_pairs") and len(value) < r.min_pairs:
                raise _fail(f"value must contain at least {r.min_pairs} pair(s)", path)
        elif not fd.is_repeated:
            pgv.check_value(rules, value, path)

    def field(self, fd: FieldDescriptor, value: Any, path: str) -> Any:
        if fd.is_repeated:
            mt = fd.message_type
            if mt is not None and mt.GetOptions().map_entry:
                if not isinstance(value, Mapping):
                    raise _fail("expected an object (map)", path)
                kf, vf = mt.fields_by_name["key"], mt.fields_by_name["value"]
                out_map: dict[str, Any] = {}
                for k, v in value.items():
                    ks = str(k).lower() if isinstance(k, bool) else str(k)
                    self.scalar(kf, ks if kf.type == FieldDescriptor.TYPE_STRING else k, path)
                    cv = self.single(vf, v, f"{path}.{ks}")
                    out_map[ks] = self.default_for(vf) if cv is _OMIT else cv
                return out_map if out_map else _OMIT
            if not isinstance(value, list):
                raise _fail("expected a list", path)
            items = []
            for i, v in enumerate(value):
                cv = self.single(fd, v, f"{path}[{i}]")
                items.append(self.default_for(fd) if cv is _OMIT else cv)
            return items if items else _OMIT
        cv = self.single(fd, value, path)
        if cv is _OMIT and (fd.containing_oneof is not None or fd.has_presence):
            return self.default_for(fd)
        return cv

    def default_for(self, fd: FieldDescriptor) -> Any:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name in _WRAPPERS:
            return self.default_for(fd.message_type.fields_by_name["value"])
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return fd.enum_type.values[0].name
        if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            return ""
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return False
        if _INT_RANGE.get(fd.type, (0, 0, ""))[2] in _AS_STRING:
            return "0"
        return 0

    def single(self, fd: FieldDescriptor, value: Any, path: str) -> Any:
        if fd.type == FieldDescriptor.TYPE_MESSAGE or fd.type == FieldDescriptor.TYPE_GROUP:
            return self.message(fd.message_type, value, path)
        return self.scalar(fd, value, path)

    def scalar(self, fd: FieldDescriptor, value: Any, path: str) -> Any:
        t = fd.type
        if t == FieldDescriptor.TYPE_STRING:
            if not isinstance(value, str):
                raise _fail("expected a string", path)
            return value if value else _OMIT
        if t == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, str) and value in ("true", "false"):
                value = value == "true"  # Envoy's YAML loader accepts quoted booleans
            if not isinstance(value, bool):
                raise _fail("expected a boolean", path)
            return value if value else _OMIT
        if t == FieldDescriptor.TYPE_ENUM:
            et = fd.enum_type
            if isinstance(value, str):
                ev = et.values_by_name.get(value)
                if ev is None:
                    raise _fail(f"invalid enum value {value!r} for {et.full_name}", path)
            elif isinstance(value, int) and not isinstance(value, bool):
                ev = et.values_by_number.get(value)
                if ev is None:
                    raise _fail(f"invalid enum value {value} for {et.full_name}", path)
            else:
                raise _fail(f"invalid enum value {value!r} for {et.full_name}", path)
            return ev.name if ev.number != 0 else _OMIT
        if t == FieldDescriptor.TYPE_BYTES:
            if not isinstance(value, str):
                raise _fail("expected a base64 string", path)
            try:
                base64.b64decode(value + "=" * (-len(value) % 4), altchars=None, validate=False)
            except ValueError:
                raise _fail("invalid base64", path) from None
            return value if value else _OMIT
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if isinstance(value, bool):
                raise _fail("expected a number", path)
            if isinstance(value, str):
                if value in ("NaN", "Infinity", "-Infinity"):
                    return value
                try:
                    value = float(value)
                except ValueError:
                    raise _fail("expected a number", path) from None
            if not isinstance(value, (int, float)):
                raise _fail("expected a number", path)
            if isinstance(value, float) and math.isnan(value):
                return "NaN"
            return value if value else _OMIT
        lo, hi, tname = _INT_RANGE[t]
        if isinstance(value, bool):
            raise _fail(f"invalid value for {tname}", path)
        if isinstance(value, str):
            if value != value.strip() or "_" in value:
                raise _fail(f"invalid value {value!r} for {tname}", path)
            try:
                value = int(value)
            except ValueError:
                raise _fail(f"invalid value {value!r} for {tname}", path) from None
        elif isinstance(value, float):
            if not value.is_integer():
                raise _fail(f"invalid value {value!r} for {tname}", path)
            value = int(value)
        elif not isinstance(value, int):
            raise _fail(f"invalid value {value!r} for {tname}", path)
        if not lo <= value <= hi:
            raise _fail(f"value {value} out of range for {tname}", path)
        if not value:
            return _OMIT
        return str(value) if tname in _AS_STRING else value

    def wkt(self, name: str, md: Descriptor, raw: Any, path: str) -> Any:
        if name == "google.protobuf.Duration":
            if not isinstance(raw, str):
                raise _fail('invalid duration: expected a string like "5s"', path)
            m = _DUR.match(raw)
            if not m:
                raise _fail(f"invalid duration {raw!r}", path)
            secs, frac = int(m.group(2)), (m.group(3) or "").ljust(9, "0")
            if secs > 315_576_000_000:
                raise _fail(f"invalid duration {raw!r}: out of range", path)
            s = pgv.fmt_dur(secs, int(frac))
            return "-" + s if m.group(1) and (secs or int(frac)) else s
        if name in _WRAPPERS:
            if isinstance(raw, Mapping) and set(raw) <= {"value"}:
                raw = raw.get("value")  # Envoy also takes the wrapper message spelt out
            return self.scalar(md.fields_by_name["value"], raw, path) if raw is not None else _OMIT
        if name in _JSON_ANY:
            if name == "google.protobuf.Struct" and not isinstance(raw, Mapping):
                raise _fail("expected an object", path)
            if name == "google.protobuf.ListValue" and not isinstance(raw, list):
                raise _fail("expected a list", path)
            return raw
        if name == "google.protobuf.Timestamp" or name == "google.protobuf.FieldMask":
            if not isinstance(raw, str):
                raise _fail("expected a string", path)
            return raw
        return _NOT_WKT

    def any(self, raw: Mapping[str, Any], path: str) -> Any:
        url = raw.get("@type")
        tpath = f"{path}.@type" if path else "@type"
        if not isinstance(url, str) or not url:
            raise _fail("Any without @type", tpath)
        type_name = url.rsplit("/", 1)[-1]
        try:
            md = pool().FindMessageTypeByName(type_name)
        except KeyError:
            if url in self.opaque or type_name in self.opaque:
                return dict(raw)
            raise _fail(f"unknown type URL {url!r}", tpath) from None
        if (
            md.full_name in _JSON_ANY
            or md.full_name in _WRAPPERS
            or md.full_name
            in (
                "google.protobuf.Duration",
                "google.protobuf.Timestamp",
                "google.protobuf.FieldMask",
            )
        ):
            return {"@type": url, "value": self.message(md, raw.get("value"), f"{path}.value")}
        body = {k: v for k, v in raw.items() if k != "@type"}
        out = self.message(md, body, path)
        return {"@type": url, **out}


_OMIT: Any = object()
_NOT_WKT: Any = object()


def canonicalize(
    type_name: str,
    raw: Mapping[str, Any],
    *,
    opaque_types: Collection[str] = (),
    locate: Locate | None = None,
) -> dict[str, Any]:
    """Validate ``raw`` as message ``type_name``; return the canonical proto-JSON dict."""
    try:
        md = pool().FindMessageTypeByName(type_name)
    except KeyError:
        raise ConfigError(f"unknown message type {type_name}") from None
    try:
        out = _Walker(opaque_types).message(md, raw, "")
    except ConfigError as exc:
        if locate is not None and exc.line is None and exc.path:
            where = locate(exc.path)
            if where is not None:
                raise ConfigError(
                    exc.reason, path=exc.path, line=where[0], column=where[1], source=exc.source
                ) from None
        raise
    assert isinstance(out, dict)
    return out


def merge(type_name: str, base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """protobuf MergeFrom over two canonical dicts of message ``type_name``.

    Singular messages merge field by field, repeated fields append, map entries and scalars
    are replaced, and setting one member of a oneof clears the others.
    """
    return _merge(pool().FindMessageTypeByName(type_name), base, over)


def _merge(md: Descriptor, base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        fd = md.fields_by_name.get(key)
        if fd is None:  # "@type" of an Any, or an opaque body
            out[key] = value
            continue
        if fd.containing_oneof is not None:
            for other in fd.containing_oneof.fields:
                if other.name != key:
                    out.pop(other.name, None)
        old = out.get(key)
        if old is None:
            out[key] = value
        elif fd.is_repeated and not _is_map(fd):
            out[key] = [*old, *value]
        elif _is_map(fd):
            out[key] = {**old, **value}
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and isinstance(old, dict):
            out[key] = _merge_message(fd.message_type, old, value)
        else:
            out[key] = value
    return out


def _merge_message(md: Descriptor, old: dict[str, Any], value: Any) -> Any:
    name = md.full_name
    if name == "google.protobuf.Any":
        if old.get("@type") != value.get("@type"):
            return value
        try:
            inner = pool().FindMessageTypeByName(str(value["@type"]).rsplit("/", 1)[-1])
        except KeyError:
            return {**old, **value}
        return _merge(inner, old, value)
    if name == "google.protobuf.Struct":
        return {**old, **value}
    if name.startswith("google.protobuf."):
        return value
    return _merge(md, old, value)
