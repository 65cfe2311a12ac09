"""Header maps as filters see them.

A ``Headers`` is an ordered multimap of ``(name, value)`` string pairs. Names are lower-case
(HTTP/1 names are folded when parsed, HTTP/2 requires it); values are ``str`` decoded as
latin-1, so any byte survives the round trip. Like Envoy's header map, the request line and
status live in it as pseudo-headers (``:method``, ``:path``, ``:authority``, ``:scheme``,
``:status``) and are kept in front of the regular headers; codecs turn them back into a request
or status line.

Maps are small (a dozen entries), so a list scanned linearly beats a dict here, and it keeps
wire order and repeated names without extra bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class Headers:
    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    # -- reading ---------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (lower-case), or ``default``."""
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def __contains__(self, name: object) -> bool:
        for k, _ in self._items:  # noqa: SIM110 - a plain loop is faster than any() here
            if k == name:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def items(self) -> list[tuple[str, str]]:
        """The live list of pairs (wire order). Mutating it mutates the map."""
        return self._items

    def regular(self) -> Iterator[tuple[str, str]]:
        """Pairs other than pseudo-headers."""
        for item in self._items:
            if item[0][:1] != ":":
                yield item

    # -- writing ---------------------------------------------------------------------------
    def add(self, name: str, value: str) -> None:
        """Append a value, keeping pseudo-headers in front."""
        if name[:1] == ":":
            i = 0
            while i < len(self._items) and self._items[i][0][:1] == ":":
                i += 1
            self._items.insert(i, (name, value))
        else:
            self._items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one value (in the first one's place)."""
        items = self._items
        if name[0] != ":" and name not in [k for k, _ in items]:
            items.append((name, value))  # absent: the common case
            return
        for i, (k, _) in enumerate(items):
            if k == name:
                items[i] = (name, value)
                j = i + 1
                while j < len(items):
                    if items[j][0] == name:
                        del items[j]
                    else:
                        j += 1
                return
        self.add(name, value)

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current

    def remove(self, name: str) -> bool:
        """Remove every value of ``name``; say whether there was any."""
        before = len(self._items)
        self._items[:] = [item for item in self._items if item[0] != name]
        return len(self._items) != before

    def remove_prefix(self, prefix: str) -> None:
        self._items[:] = [item for item in self._items if not item[0].startswith(prefix)]

    def copy(self) -> Headers:
        return Headers(self._items)
