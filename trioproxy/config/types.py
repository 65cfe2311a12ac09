"""Small converters shared by the ``from_proto`` builders.

They take values from the canonical proto-JSON dict (already schema-checked) and turn them into
plain Python values; malformed input still raises ``ConfigError`` with a path relative to the
value handed in, so callers can prefix it with ``err.at(...)``.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from typing import Any

from trioproxy.errors import ConfigError

_DUR = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")
#: ``envoy.type.v3.FractionalPercent.DenominatorType`` by name.
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_DENOM = DENOMINATORS


def duration(value: str | None, default: float | None) -> float | None:
    """``"0.250s"`` → 0.25 seconds; ``None`` → ``default``."""
    if value is None:
        return default
    m = _DUR.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"invalid duration {value!r}")
    v = int(m.group(2)) + int((m.group(3) or "0").ljust(9, "0")) / 1e9
    return -v if m.group(1) else v


def uint(value: Any, default: int) -> int:
    """A uint32/uint64 (possibly a string in proto-JSON); ``None`` → ``default``."""
    if value is None:
        return default
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid unsigned integer {value!r}") from None
    if v < 0 or isinstance(value, bool):
        raise ConfigError(f"invalid unsigned integer {value!r}")
    return v


def percent(value: Mapping[str, Any] | None, default: float = 0.0) -> float:
    """envoy.type.v3.Percent (``{"value": 50}``) → 50.0."""
    if value is None:
        return default
    return float(value.get("value", 0.0))


def fractional_percent(d: Mapping[str, Any] | None, default: float = 0.0) -> float:
    """envoy.type.v3.FractionalPercent → a percentage in [0, 100]."""
    if d is None:
        return default
    denom = _DENOM.get(d.get("denominator", "HUNDRED"))
    if denom is None:
        raise ConfigError("invalid enum value", path="denominator")
    return min(100.0, uint(d.get("numerator"), 0) * 100.0 / denom)


def data_source(d: Mapping[str, Any] | None, base_dir: str = ".") -> bytes:
    """envoy.config.core.v3.DataSource → its bytes."""
    if not d:
        return b""
    if "filename" in d:
        path = os.path.join(base_dir, d["filename"])
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"unable to read {path}: {exc.strerror}", path="filename") from None
    if "inline_string" in d:
        return str(d["inline_string"]).encode("utf-8")
    if "inline_bytes" in d:
        try:
            return base64.b64decode(d["inline_bytes"])
        except ValueError:
            raise ConfigError("invalid base64", path="inline_bytes") from None
    if "environment_variable" in d:
        name = d["environment_variable"]
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(
                f"environment variable {name} does not exist", path="environment_variable"
            )
        return value.encode("utf-8")
    return b""


def socket_address(d: Mapping[str, Any]) -> tuple[str, int]:
    """envoy.config.core.v3.SocketAddress → (address, port)."""
    addr = d.get("address")
    if not addr:
        raise ConfigError("value length must be at least 1 characters", path="address")
    if "named_port" in d:
        raise ConfigError("named ports are not supported", path="named_port")
    port = uint(d.get("port_value"), 0)
    if port > 65535:
        raise ConfigError("value must be less than or equal to 65535", path="port_value")
    return str(addr), port
