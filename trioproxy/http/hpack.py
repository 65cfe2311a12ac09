"""HPACK (RFC 7541) header compression: an encoder and a decoder for one HTTP/2 connection.

The pure-Python ``hpack`` package that ``h2`` uses spends most of its time in linear table
searches, per-bit Huffman work and ``logging.debug`` calls. This module does the same job with
dictionary lookups and C-speed builtins, and is compiled with mypyc (setup.py ``COMPILED``).

Theory of operation:

- Tables. The static table (RFC 7541 Appendix A) and the Huffman code (Appendix B) are read from
  the ``hpack`` package at import time and turned into lookup structures here. The dynamic table
  is a list, oldest entry first; its current size counts ``len(name) + len(value) + 32`` per
  entry (§4.1), and adding an entry evicts from the old end until it fits; an entry larger than
  the table empties it (§4.4).
- Encoder. Every field is looked up in dictionaries: an exact (name, value) match in the static
  table has a constant encoding; an exact match in the dynamic table is keyed to its insertion
  number, from which the index follows (the newest entry is index 62). Otherwise the field is
  sent as a literal with incremental indexing (name by index when a table has it) and added,
  unless it would take more than half of the table. ``hpack.NeverIndexedHeaderTuple`` fields
  are sent as "literal never indexed" (§6.2.3) and never added. Strings are Huffman coded when
  that is shorter; the coded literal of a string is memoised in a bounded module-wide dict.
  A table size change (``set_max_table_size``) is signalled at the start of the next block:
  the smallest size seen since the last block, then the final one (§4.2).
- Decoder. A block is one pass over the bytes; an error of any kind raises ``HpackError``
  (a COMPRESSION_ERROR). Huffman strings are decoded a byte at a time through a transition
  table built at import: 256 states (the internal nodes of the code tree, i.e. the bits read
  since the last symbol) plus a failure state (EOS seen), times 256 input bytes, giving the next
  state and the symbols completed. At the end the state must be a run of at most seven 1 bits
  (§5.2). The header list size limit is checked after the whole block was decoded, so that the
  dynamic table always stays in step with the peer's encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from hpack import NeverIndexedHeaderTuple
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["Decoder", "Encoder", "HeaderListTooLarge", "HpackError"]


class HpackError(Exception):
    """A header block that cannot be decoded: a connection error COMPRESSION_ERROR (RFC 9113
    §4.3)."""


class HeaderListTooLarge(Exception):
    """The decoded list is larger than max_header_list_size (sum of len(name)+len(value)+32 per
    field, RFC 9113 §6.5.2). Raised only after the whole block was decoded, so the dynamic table
    stays in step."""


DEFAULT_TABLE_SIZE: Final = 4096
#: The largest dynamic table the encoder keeps, whatever the peer allows (memory per connection).
MAX_ENCODER_TABLE_SIZE: Final = 65536
#: Entry overhead of RFC 7541 §4.1.
ENTRY_OVERHEAD: Final = 32
#: Integers above this are an error (no field, index or size is anywhere near it).
MAX_INT: Final = 1 << 32

# --------------------------------------------------------------------------------------------
# Static table (RFC 7541 Appendix A)

_STATIC: Final[list[Any]] = [(b"", b"")] + [
    (bytes(n), bytes(v)) for n, v in HeaderTable.STATIC_TABLE
]
STATIC_LEN: Final = len(_STATIC) - 1  # 61
_STATIC_FULL: Final[dict[object, int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i in range(STATIC_LEN, 0, -1):  # backwards: the first index of a name or field wins
    _STATIC_FULL[_STATIC[_i]] = _i
    _STATIC_NAME[_STATIC[_i][0]] = _i
#: The constant encoding of each static (name, value) match: an indexed field (§6.1).
_STATIC_FULL_ENC: Final[dict[object, bytes]] = {
    k: bytes((0x80 | i,)) for k, i in _STATIC_FULL.items()
}

# --------------------------------------------------------------------------------------------
# Huffman code (RFC 7541 Appendix B)

_EOS: Final = 256
#: For ``str.translate`` of a latin-1 decoded string: each byte to its code as "0"/"1" digits.
_HUFF_BITS: Final[list[str]] = [
    f"{REQUEST_CODES[_i]:0{REQUEST_CODES_LENGTH[_i]}b}" for _i in range(256)
]


def _build_huffman_decoder() -> tuple[list[int], list[bytes], list[bool]]:
    """Transition tables of the byte-at-a-time decoder: (next state, symbols out, accepting)."""
    # The code tree: node 0 is the root; children[node][bit] is a node (>= 0) or a leaf ~symbol.
    children: list[list[int]] = [[0, 0]]
    ones_depth: list[int] = [0]  # path length when the path from the root is all 1 bits, else -1
    for sym in range(257):
        code = REQUEST_CODES[sym]
        length = REQUEST_CODES_LENGTH[sym]
        node = 0
        for k in range(length - 1, -1, -1):
            bit = (code >> k) & 1
            if k == 0:
                children[node][bit] = ~sym
            else:
                nxt = children[node][bit]
                if nxt <= 0:  # not made yet (0 is the root, never a child)
                    nxt = len(children)
                    children.append([0, 0])
                    parent_ones = ones_depth[node]
                    ones_depth.append(parent_ones + 1 if bit and parent_ones >= 0 else -1)
                    children[node][bit] = nxt
                node = nxt
    n_states = len(children)  # 256 internal nodes
    fail = n_states
    # Nibble transitions first, then bytes as two nibbles.
    nib_next: list[int] = []
    nib_out: list[bytes] = []
    for state in range(n_states + 1):
        for nibble in range(16):
            if state == fail:
                nib_next.append(fail)
                nib_out.append(b"")
                continue
            node = state
            out = bytearray()
            for k in range(3, -1, -1):
                child = children[node][(nibble >> k) & 1]
                if child < 0:
                    sym = ~child
                    if sym == _EOS:
                        node = fail
                        break
                    out.append(sym)
                    node = 0
                else:
                    node = child
            nib_next.append(node)
            nib_out.append(bytes(out))
    interned: dict[bytes, bytes] = {}
    nxt_table: list[int] = []
    out_table: list[bytes] = []
    for state in range(n_states + 1):
        for hi in range(16):
            i1 = state * 16 + hi
            s1 = nib_next[i1]
            o1 = nib_out[i1]
            for lo in range(16):
                i2 = s1 * 16 + lo
                emitted = o1 + nib_out[i2]
                nxt_table.append(nib_next[i2])
                out_table.append(interned.setdefault(emitted, emitted))
    accepting = [0 <= d <= 7 for d in ones_depth] + [False]
    return nxt_table, out_table, accepting


_HUFF_NEXT, _HUFF_OUT, _HUFF_ACCEPT = _build_huffman_decoder()

#: Memoised results for short strings (the same values recur on every connection).
_CACHE_LIMIT: Final = 1024
_CACHE_MAX_STRING: Final = 128
_huff_decode_cache: dict[bytes, bytes] = {}
_literal_cache: dict[bytes, bytes] = {}


def huffman_decode(data: bytes, remember: bool = True) -> bytes:
    """Decode a Huffman-coded string (RFC 7541 §5.2); ``HpackError`` if it is invalid.
    ``remember=False`` keeps it out of the cache (see ``Decoder.decode``)."""
    cached = _huff_decode_cache.get(data)
    if cached is not None:
        return cached
    nxt = _HUFF_NEXT
    outs = _HUFF_OUT
    parts: list[bytes] = []
    state = 0
    for b in data:
        i = (state << 8) | b
        parts.append(outs[i])
        state = nxt[i]
    if not _HUFF_ACCEPT[state]:
        raise HpackError("invalid Huffman string (EOS, or bad padding)")
    result = b"".join(parts)
    if remember and len(data) <= _CACHE_MAX_STRING:
        if len(_huff_decode_cache) >= _CACHE_LIMIT:
            _huff_decode_cache.clear()
        _huff_decode_cache[data] = result
    return result


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code a string (RFC 7541 §5.2), padded with 1 bits."""
    if not data:
        return b""
    bits = data.decode("latin-1").translate(_HUFF_BITS)
    nbits = len(bits)
    nbytes = (nbits + 7) >> 3
    pad = nbytes * 8 - nbits
    return ((int(bits, 2) << pad) | ((1 << pad) - 1)).to_bytes(nbytes, "big")


def _encode_int(out: bytearray, value: int, prefix_bits: int, flags: int) -> None:
    """Append an integer with an N-bit prefix (RFC 7541 §5.1) whose first byte carries flags."""
    max_prefix = (1 << prefix_bits) - 1
    if value < max_prefix:
        out.append(flags | value)
        return
    out.append(flags | max_prefix)
    value -= max_prefix
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_string(data: bytes, remember: bool = True) -> bytes:
    """The string literal of ``data`` (RFC 7541 §5.2): Huffman coded when that is shorter.
    ``remember=False`` keeps it out of the cache (see ``Encoder._encode_never_indexed``)."""
    cached = _literal_cache.get(data)
    if cached is not None:
        return cached
    out = bytearray()
    coded = huffman_encode(data)
    if len(coded) < len(data):
        _encode_int(out, len(coded), 7, 0x80)
        out += coded
    else:
        _encode_int(out, len(data), 7, 0)
        out += data
    result = bytes(out)
    if remember and len(data) <= _CACHE_MAX_STRING:
        if len(_literal_cache) >= _CACHE_LIMIT:
            _literal_cache.clear()
        _literal_cache[data] = result
    return result


# --------------------------------------------------------------------------------------------
# Encoder


class Encoder:
    """Encodes header blocks for one connection; its dynamic table mirrors the peer's decoder."""

    def __init__(self) -> None:
        #: Current maximum size of the dynamic table.
        self.max_table_size: int = DEFAULT_TABLE_SIZE
        #: Sum of the entry sizes in the dynamic table.
        self.table_size: int = 0
        # (name, value) tuples, oldest first; the entry at position j was inserted as number
        # ``self._inserted - len(self._entries) + j``.
        self._entries: list[Any] = []
        self._inserted: int = 0
        self._full: dict[object, int] = {}  # (name, value) -> newest insertion number
        self._names: dict[bytes, int] = {}  # name -> newest insertion number
        self._size_changed: bool = False
        self._min_size: int = DEFAULT_TABLE_SIZE

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: resize now, signal it next block."""
        size = min(size, MAX_ENCODER_TABLE_SIZE)
        if size == self.max_table_size and not self._size_changed:
            return
        if not self._size_changed or size < self._min_size:
            self._min_size = size
        self._size_changed = True
        self.max_table_size = size
        self._evict(0)

    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest entry (index 62) first."""
        return self._entries[::-1]

    def _evict(self, room: int) -> None:
        limit = self.max_table_size - room
        entries = self._entries
        while self.table_size > limit and entries:
            key = entries.pop(0)
            number = self._inserted - len(entries) - 1
            name = key[0]
            self.table_size -= len(name) + len(key[1]) + ENTRY_OVERHEAD
            if self._full.get(key) == number:
                del self._full[key]
            if self._names.get(name) == number:
                del self._names[name]

    def _add(self, key: object, name: bytes, size: int) -> None:
        if size > self.max_table_size:
            self._evict(self.max_table_size)  # empties the table (§4.4)
            return
        self._evict(size)
        number = self._inserted
        self._inserted = number + 1
        self._entries.append(key)
        self.table_size += size
        self._full[key] = number
        self._names[name] = number

    def encode(self, fields: Iterable[Any]) -> bytes:
        """One header block of ``(name, value)`` bytes tuples (``NeverIndexedHeaderTuple``s are
        sent never indexed)."""
        out = bytearray()
        if self._size_changed:
            if self._min_size < self.max_table_size:
                _encode_int(out, self._min_size, 5, 0x20)
            _encode_int(out, self.max_table_size, 5, 0x20)
            self._size_changed = False
        static_full = _STATIC_FULL_ENC
        full = self._full
        for field in fields:
            if type(field) is not tuple and isinstance(field, NeverIndexedHeaderTuple):
                self._encode_never_indexed(out, field[0], field[1])
                continue
            enc = static_full.get(field)
            if enc is not None:
                out += enc
                continue
            number = full.get(field)
            if number is not None:
                _encode_int(out, STATIC_LEN + self._inserted - number, 7, 0x80)
                continue
            name: bytes = field[0]
            value: bytes = field[1]
            name_index = self._name_index(name)
            size = len(name) + len(value) + ENTRY_OVERHEAD
            if size * 2 <= self.max_table_size:
                _encode_int(out, name_index, 6, 0x40)  # literal with incremental indexing
                if not name_index:
                    out += encode_string(name)
                out += encode_string(value)
                self._add(field if type(field) is tuple else (name, value), name, size)
            else:
                _encode_int(out, name_index, 4, 0)  # literal without indexing
                if not name_index:
                    out += encode_string(name)
                out += encode_string(value)
        return bytes(out)

    def _name_index(self, name: bytes) -> int:
        index = _STATIC_NAME.get(name)
        if index is not None:
            return index
        number = self._names.get(name)
        if number is not None:
            return STATIC_LEN + self._inserted - number
        return 0

    def _encode_never_indexed(self, out: bytearray, name: bytes, value: bytes) -> None:
        # The value is a credential or new on every request (h2_headers): kept out of the
        # process-wide cache as out of the table, where it would only push out the values
        # that recur, and outlive its request.
        name_index = self._name_index(name)
        _encode_int(out, name_index, 4, 0x10)
        if not name_index:
            out += encode_string(name)
        out += encode_string(value, False)


# --------------------------------------------------------------------------------------------
# Decoder


class Decoder:
    """Decodes the header blocks of one connection; its dynamic table follows the peer's
    encoder."""

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 1 << 32
    ) -> None:
        self.max_header_list_size: int = max_header_list_size
        #: Our SETTINGS_HEADER_TABLE_SIZE: a size update above it is an error.
        self.max_allowed_table_size: int = max_table_size
        #: Current maximum size of the dynamic table (changed by size updates).
        self.max_table_size: int = max_table_size
        #: Sum of the entry sizes in the dynamic table.
        self.table_size: int = 0
        self._entries: list[Any] = []  # (name, value) tuples, oldest first

    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest entry (index 62) first."""
        return self._entries[::-1]

    def _evict(self, limit: int) -> None:
        entries = self._entries
        size = self.table_size
        while size > limit and entries:
            old = entries.pop(0)
            size -= len(old[0]) + len(old[1]) + ENTRY_OVERHEAD
        self.table_size = size

    def _get(self, index: int) -> Any:
        if index <= STATIC_LEN:
            if index == 0:
                raise HpackError("index 0")
            return _STATIC[index]
        entries = self._entries
        pos = len(entries) - (index - STATIC_LEN)
        if pos < 0:
            raise HpackError(f"index {index} beyond the tables")
        return entries[pos]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of one complete header block, as sent."""
        out: list[Any] = []
        pos = 0
        end = len(block)
        list_size = 0
        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed field (§6.1)
                index = b & 0x7F
                if index == 0x7F:
                    index, pos = _decode_int(block, pos, 7)
                else:
                    pos += 1
                entry = self._get(index)
                out.append(entry)
                list_size += len(entry[0]) + len(entry[1]) + ENTRY_OVERHEAD
                continue
            if b & 0x40:  # literal with incremental indexing (§6.2.1)
                index = b & 0x3F
                if index == 0x3F:
                    index, pos = _decode_int(block, pos, 6)
                else:
                    pos += 1
                indexing = True
            elif b & 0x20:  # dynamic table size update (§6.3)
                if out:
                    raise HpackError("dynamic table size update after a field")
                size, pos = _decode_int(block, pos, 5)
                if size > self.max_allowed_table_size:
                    raise HpackError(f"dynamic table size update to {size} above the maximum")
                self.max_table_size = size
                self._evict(size)
                continue
            else:  # literal without indexing or never indexed (§6.2.2, §6.2.3)
                index = b & 0x0F
                if index == 0x0F:
                    index, pos = _decode_int(block, pos, 4)
                else:
                    pos += 1
                indexing = False
            if index:
                name: bytes = self._get(index)[0]
            else:
                name, pos = _decode_string(block, pos)
            # Only a value the peer indexes is expected to recur: one it keeps out of its
            # table (a credential, a request id) stays out of the process-wide cache too.
            value, pos = _decode_string(block, pos, indexing)
            size = len(name) + len(value) + ENTRY_OVERHEAD
            list_size += size
            field = (name, value)
            out.append(field)
            if indexing:
                if size > self.max_table_size:
                    self._evict(0)
                else:
                    self._evict(self.max_table_size - size)
                    self._entries.append(field)
                    self.table_size += size
        if list_size > self.max_header_list_size:
            raise HeaderListTooLarge(
                f"header list of {list_size} bytes, more than {self.max_header_list_size}"
            )
        return out


def _decode_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer with an N-bit prefix at ``pos`` (RFC 7541 §5.1), and the position after."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    end = len(block)
    shift = 0
    while True:
        if pos >= end:
            raise HpackError("truncated integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 28:
            raise HpackError("integer too long")
    if value > MAX_INT:
        raise HpackError("integer too large")
    return value, pos


def _decode_string(block: bytes, pos: int, remember: bool = True) -> tuple[bytes, int]:
    """The string literal at ``pos`` (RFC 7541 §5.2), and the position after it."""
    end = len(block)
    if pos >= end:
        raise HpackError("truncated block")
    b = block[pos]
    length = b & 0x7F
    if length == 0x7F:
        length, pos = _decode_int(block, pos, 7)
    else:
        pos += 1
    stop = pos + length
    if stop > end:
        raise HpackError("string longer than the block")
    data = block[pos:stop]
    if b & 0x80:
        data = huffman_decode(data, remember)
    return data, stop
