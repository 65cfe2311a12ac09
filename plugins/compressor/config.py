"""The compressor filter's config (``envoy.extensions.filters.http.compressor.v3.Compressor``)
with the gzip library (``envoy.extensions.compression.gzip.compressor.v3.Gzip``)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError

GZIP_TYPE = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
#: Envoy's default compressible types.
DEFAULT_TYPES = frozenset(
    {
        "text/html",
        "text/plain",
        "text/css",
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "text/x-javascript",
        "text/ecmascript",
        "text/js",
        "text/jscript",
        "text/x-js",
        "application/ecmascript",
        "application/x-json",
        "application/xml",
        "application/json",
        "image/svg+xml",
        "text/xml",
        "application/xhtml+xml",
    }
)
_LEVELS = {"DEFAULT_COMPRESSION": 6, "BEST_SPEED": 1, "BEST_COMPRESSION": 9}
_LEVELS.update({f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)})
_STRATEGIES = {
    "DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY,
    "FILTERED": zlib.Z_FILTERED,
    "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY,
    "RLE": zlib.Z_RLE,
    "FIXED": zlib.Z_FIXED,
}


def _uint(value: Any, default: int) -> int:
    if value is None:
        return default
    return int(value.get("value", default)) if isinstance(value, Mapping) else int(value)


@attrs.frozen
class Gzip:
    level: int = 6
    memory_level: int = 5
    window_bits: int = 12
    strategy: int = zlib.Z_DEFAULT_STRATEGY

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> Gzip:
        level = _LEVELS.get(d.get("compression_level", "DEFAULT_COMPRESSION"))
        strategy = _STRATEGIES.get(d.get("compression_strategy", "DEFAULT_STRATEGY"))
        if level is None or strategy is None:
            raise ConfigError("invalid enum value", path="compression_level")
        memory = _uint(d.get("memory_level"), 5)
        bits = _uint(d.get("window_bits"), 12)
        if not 1 <= memory <= 9 or not 9 <= bits <= 15:
            raise ConfigError("memory_level must be 1-9 and window_bits 9-15", path="window_bits")
        return cls(level, memory, bits, strategy)

    def compressor(self) -> Any:
        return zlib.compressobj(
            self.level, zlib.DEFLATED, 16 + self.window_bits, self.memory_level, self.strategy
        )


@attrs.frozen
class CompressorConfig:
    library_name: str
    gzip: Gzip
    enabled: bool = True
    #: the ``RuntimeFeatureFlag``'s ``runtime_key``: the runtime's value wins when it has one
    enabled_key: str = ""
    min_content_length: int = 30
    content_types: frozenset[str] = DEFAULT_TYPES
    disable_on_etag: bool = False
    remove_accept_encoding: bool = False

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> CompressorConfig:
        library = d.get("compressor_library") or {}
        typed = library.get("typed_config") or {}
        if typed.get("@type") != GZIP_TYPE:
            raise ConfigError(
                f"compressor library {typed.get('@type')!r} is not supported yet (gzip is)",
                path="compressor_library.typed_config",
            )
        try:
            gzip = Gzip.from_proto({k: v for k, v in typed.items() if k != "@type"})
        except ConfigError as exc:
            raise exc.at("compressor_library.typed_config") from None
        request = (d.get("request_direction_config") or {}).get("common_config") or {}
        request_on = (request.get("enabled") or {}).get("default_value")
        if isinstance(request_on, Mapping):
            request_on = request_on.get("value", False)
        if request_on:
            raise ConfigError(
                "request compression is not supported yet", path="request_direction_config"
            )
        response = d.get("response_direction_config") or {}
        common = response.get("common_config") or {}
        flag = common.get("enabled") or d.get("runtime_enabled") or {}
        enabled = flag.get("default_value")
        if isinstance(enabled, Mapping):
            enabled = enabled.get("value", True)
        # (the top-level fields are Envoy's deprecated spellings of the same settings)
        types = common.get("content_type") or d.get("content_type")
        min_length = common.get("min_content_length", d.get("content_length"))
        etag = response.get("disable_on_etag_header", d.get("disable_on_etag_header", False))
        remove = response.get(
            "remove_accept_encoding_header", d.get("remove_accept_encoding_header", False)
        )
        return cls(
            library_name=str(library.get("name", "")),
            gzip=gzip,
            enabled=True if enabled is None else bool(enabled),
            enabled_key=str(flag.get("runtime_key", "")),
            min_content_length=_uint(min_length, 30),
            content_types=frozenset(t.lower() for t in types) if types else DEFAULT_TYPES,
            disable_on_etag=bool(etag),
            remove_accept_encoding=bool(remove),
        )
