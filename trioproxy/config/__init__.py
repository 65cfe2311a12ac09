"""The configuration pipeline: text → positioned dict → schema-checked canonical dict.

``load_bootstrap`` reads the ``-c`` file and/or ``--config-yaml`` text (loader.py), validates
each against ``envoy.config.bootstrap.v3.Bootstrap`` (schema.py), merges the YAML over the
file with protobuf MergeFrom semantics (messages merge field by field, repeated fields append,
scalars overwrite) and re-validates the result. Errors found later while building objects from
the canonical dict are given line/column with ``located`` / ``LoadedConfig.locate``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import attrs

from trioproxy.config.loader import Document, load_file, load_text
from trioproxy.config.schema import canonicalize, merge
from trioproxy.errors import ConfigError

BOOTSTRAP = "envoy.config.bootstrap.v3.Bootstrap"

__all__ = [
    "BOOTSTRAP",
    "Document",
    "LoadedConfig",
    "canonicalize",
    "load_bootstrap",
    "located",
    "merge",
]


@attrs.frozen
class LoadedConfig:
    canonical: dict[str, Any]
    document: Document
    source: str

    def locate(self, err: ConfigError) -> ConfigError:
        return located(err, self.document)


def located(err: ConfigError, doc: Document) -> ConfigError:
    """``err`` with line/column (and source) filled in from its path, when known."""
    if err.line is not None or not err.path:
        return err
    where = doc.locate(err.path)
    return ConfigError(
        err.reason,
        path=err.path,
        line=where[0] if where else None,
        column=where[1] if where else None,
        source=err.source or doc.source,
    )


def _check(doc: Document, opaque_types: Collection[str]) -> dict[str, Any]:
    if not isinstance(doc.data, Mapping):
        raise ConfigError("the configuration must be a mapping", source=doc.source)
    try:
        return canonicalize(BOOTSTRAP, doc.data, opaque_types=opaque_types, locate=doc.locate)
    except ConfigError as exc:
        raise ConfigError(
            exc.reason, path=exc.path, line=exc.line, column=exc.column, source=doc.source
        ) from None


def load_bootstrap(
    *,
    path: str | None = None,
    yaml_text: str | None = None,
    opaque_types: Collection[str] = (),
) -> LoadedConfig:
    """Load, validate and canonicalise a bootstrap from a file and/or ``--config-yaml``."""
    if not path and not yaml_text:
        raise ConfigError("no configuration: give -c FILE or --config-yaml")
    docs = []
    if path:
        docs.append(load_file(path))
    if yaml_text:
        docs.append(load_text(yaml_text, "<config-yaml>"))
    parts = [_check(d, opaque_types) for d in docs]
    if len(parts) == 1:
        return LoadedConfig(parts[0], docs[0], docs[0].source if path else "")
    merged = merge(BOOTSTRAP, parts[0], parts[1])
    try:
        canonical = canonicalize(BOOTSTRAP, merged, opaque_types=opaque_types)
    except ConfigError as exc:
        raise located(exc, docs[1]) from None
    return LoadedConfig(canonical, docs[0], docs[0].source)
