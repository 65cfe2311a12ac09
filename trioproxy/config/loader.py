"""YAML/JSON text to a plain dict that still knows where every key came from.

PyYAML composes the text into a node graph; we convert that graph ourselves so that, next to
the plain data, a parallel tree of positions is kept (1-based line and column of every mapping
key and sequence item). JSON goes through the same parser (JSON is YAML). Duplicate keys in one
mapping are an error, as in Envoy; anchors, aliases and ``<<`` merge keys work.

``Document.locate("a.b[0].c")`` walks the position tree along the path; the longest existing
prefix wins, and camelCase keys in the file match snake_case path segments.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from trioproxy.errors import ConfigError

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
_Pos = tuple[int, int, Any]  # line, column, child position tree (dict, list or None)
_SEG = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """camelCase → snake_case (``statPrefix`` → ``stat_prefix``)."""
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), name)


def split_path(path: str) -> list[str | int]:
    out: list[str | int] = []
    for m in _SEG.finditer(path):
        out.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return out


class Document:
    """Parsed data plus source positions."""

    __slots__ = ("data", "source", "_pos")

    def __init__(self, data: Any, positions: Any, source: str) -> None:
        self.data = data
        self.source = source
        self._pos = positions

    def locate(self, path: str) -> tuple[int, int] | None:
        """Line and column (1-based) of the deepest existing prefix of ``path``."""
        tree = self._pos
        found: tuple[int, int] | None = None
        for seg in split_path(path):
            entry: _Pos | None = None
            if isinstance(seg, int):
                if isinstance(tree, list) and 0 <= seg < len(tree):
                    entry = tree[seg]
            elif isinstance(tree, dict):
                entry = tree.get(seg)
                if entry is None:
                    for k, v in tree.items():
                        if isinstance(k, str) and snake(k) == seg:
                            entry = v
                            break
            if entry is None:
                break
            found = (entry[0], entry[1])
            tree = entry[2]
        return found


def _convert(loader: Any, node: yaml.Node, source: str) -> tuple[Any, Any]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for knode, _ in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(knode, deep=True)
            if key in seen:
                m = knode.start_mark
                raise ConfigError(
                    f"duplicate key {key!r}", line=m.line + 1, column=m.column + 1, source=source
                )
            seen[key] = knode
        loader.flatten_mapping(node)
        data: dict[Any, Any] = {}
        pos: dict[Any, _Pos] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if isinstance(key, (list, dict)):
                raise ConfigError("mapping keys must be scalars", source=source)
            value, child = _convert(loader, vnode, source)
            data[key] = value
            m = knode.start_mark
            pos[key] = (m.line + 1, m.column + 1, child)
        return data, pos
    if isinstance(node, yaml.SequenceNode):
        items: list[Any] = []
        ipos: list[_Pos] = []
        for item in node.value:
            value, child = _convert(loader, item, source)
            items.append(value)
            m = item.start_mark
            ipos.append((m.line + 1, m.column + 1, child))
        return items, ipos
    return loader.construct_object(node, deep=True), None


def load_text(text: str, source: str = "<config-yaml>") -> Document:
    """Parse YAML or JSON ``text``; errors carry line/column of the offending spot."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document({}, {}, source)
        data, pos = _convert(loader, node, source)
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        raise ConfigError(
            f"unable to parse YAML: {exc.problem}",
            line=m.line + 1 if m else None,
            column=m.column + 1 if m else None,
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"unable to parse YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
    if data is None:
        data, pos = {}, {}
    return Document(data, pos, source)


def load_file(path: str) -> Document:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"unable to read file: {exc.strerror}", source=path) from None
    return load_text(text, path)
