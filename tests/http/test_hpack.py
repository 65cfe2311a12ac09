"""trioproxy.http.hpack: the RFC 7541 examples, agreement with the ``hpack`` package over many
blocks on one connection (tables in step), and every malformed block a decoder must refuse."""

from __future__ import annotations

import random

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trioproxy.http.hpack
from trioproxy.http.hpack import (
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
    huffman_decode,
    huffman_encode,
)

Fields = list[tuple[bytes, bytes]]

# --------------------------------------------------------------------------------------------
# RFC 7541 Appendix C

C2_CASES = [
    # C.2.1 literal with indexing, C.2.2 without indexing, C.2.3 never indexed, C.2.4 indexed
    (
        "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
        [(b"custom-key", b"custom-header")],
        [(b"custom-key", b"custom-header")],
        55,
    ),
    ("040c2f73616d706c652f70617468", [(b":path", b"/sample/path")], [], 0),
    ("100870617373776f726406736563726574", [(b"password", b"secret")], [], 0),
    ("82", [(b":method", b"GET")], [], 0),
]

REQ1: Fields = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"www.example.com"),
]
REQ2: Fields = [*REQ1, (b"cache-control", b"no-cache")]
REQ3: Fields = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html"),
    (b":authority", b"www.example.com"),
    (b"custom-key", b"custom-value"),
]
REQ_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    (
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]
C3_BLOCKS = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4_BLOCKS = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = (b"location", b"https://www.example.com")
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESP1: Fields = [
    (b":status", b"302"),
    (b"cache-control", b"private"),
    (b"date", DATE1),
    LOCATION,
]
RESP2: Fields = [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), LOCATION]
RESP3: Fields = [
    (b":status", b"200"),
    (b"cache-control", b"private"),
    (b"date", DATE2),
    LOCATION,
    (b"content-encoding", b"gzip"),
    (b"set-cookie", COOKIE),
]
RESP_TABLES = [
    ([LOCATION, (b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")], 222),
    ([(b":status", b"307"), LOCATION, (b"date", DATE1), (b"cache-control", b"private")], 222),
    ([(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]
C5_BLOCKS = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d"
    "546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f"
    "6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b"
    "2076657273696f6e3d31",
]
C6_BLOCKS = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c7"
    "8f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335"
    "dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


@pytest.mark.parametrize(("block", "fields", "table", "size"), C2_CASES)
def test_rfc_c2_literal_and_indexed_fields(
    block: str, fields: Fields, table: Fields, size: int
) -> None:
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex(block)) == fields
    assert decoder.entries() == table
    assert decoder.table_size == size


@pytest.mark.parametrize("blocks", [C3_BLOCKS, C4_BLOCKS], ids=["C.3 plain", "C.4 Huffman"])
def test_rfc_c3_c4_requests_decode_with_their_tables(blocks: list[str]) -> None:
    decoder = Decoder()
    for block, fields, (table, size) in zip(blocks, [REQ1, REQ2, REQ3], REQ_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == fields
        assert decoder.entries() == table
        assert decoder.table_size == size


@pytest.mark.parametrize("blocks", [C5_BLOCKS, C6_BLOCKS], ids=["C.5 plain", "C.6 Huffman"])
def test_rfc_c5_c6_responses_decode_with_eviction_at_256(blocks: list[str]) -> None:
    decoder = Decoder(max_table_size=256)
    for block, fields, (table, size) in zip(
        blocks, [RESP1, RESP2, RESP3], RESP_TABLES, strict=True
    ):
        assert decoder.decode(bytes.fromhex(block)) == fields
        assert decoder.entries() == table
        assert decoder.table_size == size


def test_rfc_c4_requests_encode_as_the_rfc_does() -> None:
    encoder = Encoder()
    for block, fields, (table, size) in zip(C4_BLOCKS, [REQ1, REQ2, REQ3], REQ_TABLES, strict=True):
        assert encoder.encode(fields).hex() == block
        assert encoder.entries() == table
        assert encoder.table_size == size


def test_rfc_c6_responses_encode_as_the_rfc_does_after_a_size_update() -> None:
    encoder = Encoder()
    encoder.set_max_table_size(256)
    blocks = [encoder.encode(fields) for fields in [RESP1, RESP2, RESP3]]
    assert blocks[0][:3] == b"\x3f\xe1\x01"  # dynamic table size update to 256
    assert [blocks[0][3:].hex(), blocks[2].hex()] == [C6_BLOCKS[0], C6_BLOCKS[2]]
    # "307" is 3 bytes Huffman coded too: the RFC codes it, we send it plain.
    assert blocks[1].hex() == C5_BLOCKS[1]
    assert (encoder.entries(), encoder.table_size) == RESP_TABLES[2]


@pytest.mark.parametrize("size", [4096, 256])
def test_encoder_output_of_the_rfc_fields_decodes_back(size: int) -> None:
    encoder, decoder = Encoder(), Decoder(max_table_size=size)
    encoder.set_max_table_size(size)
    for fields in [REQ1, REQ2, REQ3, RESP1, RESP2, RESP3, RESP1]:
        assert decoder.decode(encoder.encode(fields)) == fields
        assert decoder.entries() == encoder.entries()
        assert decoder.table_size == encoder.table_size


# --------------------------------------------------------------------------------------------
# Huffman code


def test_huffman_matches_hpack_for_every_byte_value() -> None:
    reference = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    )
    rnd = random.Random(7541)
    samples = [bytes(range(256)), b"", b"a", b"www.example.com"]
    samples += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(60))) for _ in range(500)]
    for data in samples:
        coded = huffman_encode(data)
        assert coded == reference.encode(data)
        assert huffman_decode(coded) == data


@pytest.mark.parametrize(
    "coded",
    [
        b"\x1f\xff\xff\xff\xff",  # 'a' (00011), then EOS (30 ones), then padding
        b"\xff\xff\xff\xff",  # EOS alone
        b"\x1f\xff",  # 'a' then 11 bits of padding
        b"\xff",  # 8 bits of padding
        b"\x18",  # 'a' then padding 000
        b"\x1e",  # 'a' then padding 110
    ],
)
def test_huffman_decoder_rejects_eos_and_bad_padding(coded: bytes) -> None:
    with pytest.raises(HpackError):
        huffman_decode(coded)
    block = b"\x40\x01a" + bytes((0x80 | len(coded),)) + coded
    with pytest.raises(HpackError):
        Decoder().decode(block)


def test_huffman_decoder_accepts_short_all_ones_padding() -> None:
    assert huffman_decode(b"\x1f") == b"a"
    assert huffman_decode(b"") == b""


# --------------------------------------------------------------------------------------------
# Decoder errors


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\x80", id="index 0"),
        pytest.param(b"\xbe", id="index 62 with an empty dynamic table"),
        pytest.param(b"\xff\x80\x01", id="index 255"),
        pytest.param(b"\x7e\x00", id="literal name index beyond the tables"),
        pytest.param(b"\x1f\x2f\x00", id="never-indexed name index beyond the tables"),
        pytest.param(b"\x3f\xe2\x1f", id="size update above the maximum"),
        pytest.param(b"\x82\x20", id="size update after a field"),
        pytest.param(b"\x82\x3f\xe1\x01", id="size update after an indexed field"),
        pytest.param(b"\xff" + b"\xff" * 10 + b"\x01", id="integer of many bytes"),
        pytest.param(b"\xff\xff\xff\xff\xff\x7f", id="integer above 2**32"),
        pytest.param(b"\xff\x80", id="truncated integer"),
        pytest.param(b"\x40\x05abc", id="string longer than the block"),
        pytest.param(b"\x40\x01a\x7f", id="truncated string length"),
        pytest.param(b"\x40", id="literal without name"),
        pytest.param(b"\x40\x01a", id="literal without value"),
        pytest.param(b"\x04", id="indexed-name literal without value"),
        pytest.param(b"\x10\x01a", id="never-indexed literal without value"),
    ],
)
def test_decoder_rejects_malformed_block(block: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(block)


def test_decoder_accepts_size_updates_at_the_start_only() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x01b")
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # 0, then 4096
    assert decoder.entries() == []
    assert decoder.max_table_size == 4096


def test_decoder_size_update_evicts() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x01b\x40\x01c\x01d")  # two entries of 34
    decoder.decode(b"\x3f\x24")  # size update to 67
    assert decoder.entries() == [(b"c", b"d")]
    assert decoder.table_size == 34


def test_decoder_lower_allowed_size_refuses_larger_update() -> None:
    decoder = Decoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(HpackError):
        decoder.decode(b"\x3f\x46")  # 101
    assert decoder.decode(b"\x3f\x45") == []  # 100


def test_decoder_returns_never_indexed_fields_as_plain_tuples_and_keeps_them_out() -> None:
    (field,) = Decoder().decode(bytes.fromhex("100870617373776f726406736563726574"))
    assert type(field) is tuple
    decoder = Decoder()
    assert decoder.decode(b"\x10\x01A\x01b") == [(b"A", b"b")]  # names as sent
    assert decoder.entries() == []


def test_decoder_entry_larger_than_the_table_empties_it() -> None:
    decoder = Decoder(max_table_size=64)
    decoder.decode(b"\x40\x01a\x01b")
    assert decoder.table_size == 34
    big = b"\x40\x01c\x20" + b"x" * 32  # 1 + 32 + 32 = 65 > 64
    assert decoder.decode(big) == [(b"c", b"x" * 32)]
    assert decoder.entries() == []
    assert decoder.table_size == 0


def test_header_list_too_large_raised_after_the_block_keeps_the_table_in_step() -> None:
    encoder = Encoder()
    decoder = Decoder(max_header_list_size=100)
    first = [(b"x-one", b"1" * 40), (b"x-two", b"2" * 40)]  # 77 + 77 > 100
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(encoder.encode(first))
    assert decoder.entries() == encoder.entries()
    decoder.max_header_list_size = 1000
    block = encoder.encode(first)
    assert len(block) == 2  # both indexed from the dynamic table
    assert decoder.decode(block) == first
    decoder.max_header_list_size = 77
    assert decoder.decode(encoder.encode(first[:1])) == first[:1]


# --------------------------------------------------------------------------------------------
# Encoder behaviour


def test_never_indexed_fields_use_the_never_indexed_form_and_stay_out_of_the_table() -> None:
    encoder = Encoder()
    fields = [
        hpack.NeverIndexedHeaderTuple(b"authorization", b"secret"),  # static name 23
        hpack.NeverIndexedHeaderTuple(b"x-token", b"t"),
        hpack.NeverIndexedHeaderTuple(b":method", b"GET"),  # a full static match, still literal
    ]
    block = encoder.encode(fields)
    assert block.startswith(b"\x1f\x08")  # 0x10 | 15, then 23 - 15
    assert encoder.entries() == []
    peer = hpack.Decoder()
    decoded = peer.decode(block, raw=True)
    assert decoded == fields
    assert all(isinstance(f, hpack.NeverIndexedHeaderTuple) for f in decoded)
    assert Decoder().decode(block) == [tuple(f) for f in fields]
    # The name of a never-indexed field is taken from the dynamic table when it is there.
    encoder.encode([(b"x-token", b"old")])
    block = encoder.encode([hpack.NeverIndexedHeaderTuple(b"x-token", b"new")])
    assert block[:2] == b"\x1f\x2f"  # 0x10 | 15, then 62 - 15
    assert len(encoder.entries()) == 1


def test_values_kept_out_of_the_table_stay_out_of_the_process_wide_caches() -> None:
    """A credential must not outlive its request in a cache shared by all connections."""
    secret = b"Bearer " + b"s3cr3t-t0ken" * 3
    fields = [hpack.NeverIndexedHeaderTuple(b"authorization", secret), (b"x-seen", b"recurs")]
    block = Encoder().encode(fields)
    assert Decoder().decode(block) == [tuple(f) for f in fields]
    cached = [
        *trioproxy.http.hpack._literal_cache,
        *trioproxy.http.hpack._huff_decode_cache.values(),
    ]
    assert cached.count(b"recurs") == 2 and secret not in cached


def test_full_and_name_matches_are_indexed() -> None:
    encoder = Encoder()
    assert encoder.encode([(b":method", b"GET"), (b":status", b"200")]) == b"\x82\x88"
    encoder.encode([(b"server", b"trioproxy")])
    assert encoder.encode([(b"server", b"trioproxy")]) == b"\xbe"
    assert encoder.encode([(b"server", b"trioproxy")]) == b"\xbe"
    encoder.encode([(b"x-custom", b"a")])
    assert encoder.encode([(b"x-custom", b"b")]) == b"\x7e\x01b"  # name 62, the first
    assert encoder.entries()[:2] == [(b"x-custom", b"b"), (b"x-custom", b"a")]


def test_a_field_over_half_the_table_goes_literal_without_indexing() -> None:
    encoder = Encoder()
    block = encoder.encode([(b"cookie", b"c" * 3000)])
    assert block[0] == 0x0F  # literal without indexing, name index 32 (15 + 17)
    assert block[1] == 32 - 15
    assert encoder.entries() == []
    assert Decoder().decode(block) == [(b"cookie", b"c" * 3000)]


def test_string_is_huffman_coded_only_when_shorter() -> None:
    plain = bytes(range(240, 256)) * 2  # long codes: Huffman would be longer
    block = Encoder().encode([(b"x-bin", plain)])
    assert plain in block
    block = Encoder().encode([(b"x-text", b"hello world")])
    assert b"hello world" not in block


def test_table_size_change_is_signalled_at_the_next_block_minimum_then_final() -> None:
    encoder = Encoder()
    encoder.encode([(b"x-a", b"1"), (b"x-b", b"2")])
    encoder.set_max_table_size(4096)  # unchanged: no update
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.set_max_table_size(0)
    encoder.set_max_table_size(100)
    encoder.set_max_table_size(4096)
    assert encoder.entries() == []
    assert encoder.encode([(b":method", b"GET")]) == b"\x20\x3f\xe1\x1f\x82"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.set_max_table_size(1000)
    encoder.set_max_table_size(2000)
    assert encoder.encode([]) == b"\x3f\xc9\x07\x3f\xb1\x0f"  # 1000, then 2000
    encoder.set_max_table_size(100)
    assert encoder.encode([]) == b"\x3f\x45"  # only the final when it is the minimum


def test_encoder_shrinking_evicts_the_oldest_entries() -> None:
    encoder, decoder = Encoder(), Decoder()
    fields = [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]  # 36 each
    decoder.decode(encoder.encode(fields))
    encoder.set_max_table_size(80)
    assert encoder.entries() == [(b"x-c", b"3"), (b"x-b", b"2")]
    decoder.decode(encoder.encode([]))
    assert decoder.entries() == encoder.entries()
    assert decoder.decode(encoder.encode(fields)) == fields
    assert decoder.entries() == encoder.entries()


# --------------------------------------------------------------------------------------------
# Differential against the hpack package, one connection, many blocks

NAMES = [
    b":method",
    b":path",
    b":authority",
    b":status",
    b"content-type",
    b"content-length",
    b"cookie",
    b"set-cookie",
    b"user-agent",
    b"accept-encoding",
    b"x-request-id",
    b"x-envoy-upstream-service-time",
    b"x-custom",
    b"x-b",
    b"date",
]
VALUES = [b"", b"GET", b"/", b"200", b"gzip, deflate", b"text/plain", b"0", b"1", b"abc"]


def random_field(rnd: random.Random) -> tuple[bytes, bytes]:
    name = rnd.choice(NAMES) if rnd.random() < 0.8 else random_bytes(rnd, 1, 20)
    r = rnd.random()
    if r < 0.4:
        value = rnd.choice(VALUES)
    elif r < 0.9:
        value = random_bytes(rnd, 0, 40)
    else:
        value = random_bytes(rnd, 100, 3000)
    if rnd.random() < 0.1:
        return hpack.NeverIndexedHeaderTuple(name, value)
    return (name, value)


def random_bytes(rnd: random.Random, low: int, high: int) -> bytes:
    if rnd.random() < 0.7:
        alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_/.:; =ABCXYZ"
        return bytes(rnd.choice(alphabet) for _ in range(rnd.randint(low, high)))
    return bytes(rnd.randrange(256) for _ in range(rnd.randint(low, high)))


def set_hpack_encoder_size(encoder: hpack.Encoder, size: int) -> None:
    # hpack 4.2 drops a pending size update when the same size is set twice in a row.
    if size != encoder.header_table_size:
        encoder.header_table_size = size


SIZES = [0, 1, 64, 256, 1000, 4096, 8192, 70000]


@pytest.mark.parametrize("seed", range(8))
def test_our_encoder_to_hpack_decoder_stays_in_step(seed: int) -> None:
    rnd = random.Random(seed)
    ours, theirs = Encoder(), hpack.Decoder(max_header_list_size=1 << 30)
    theirs.max_allowed_table_size = 4096
    for _ in range(300):
        if rnd.random() < 0.1:
            for _ in range(rnd.randint(1, 3)):
                size = rnd.choice(SIZES)
                theirs.max_allowed_table_size = max(theirs.max_allowed_table_size, size)
                ours.set_max_table_size(size)
        fields = [random_field(rnd) for _ in range(rnd.randint(0, 12))]
        decoded = theirs.decode(ours.encode(fields), raw=True)
        assert decoded == fields
        assert [type(f) for f in decoded] == [
            hpack.NeverIndexedHeaderTuple if type(f) is not tuple else hpack.HeaderTuple
            for f in fields
        ]
        assert list(theirs.header_table.dynamic_entries) == ours.entries()
        assert theirs.header_table_size == ours.max_table_size


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("huffman", [True, False])
def test_hpack_encoder_to_our_decoder_stays_in_step(seed: int, huffman: bool) -> None:
    rnd = random.Random(seed)
    theirs, ours = hpack.Encoder(), Decoder(max_table_size=4096)
    for _ in range(300):
        if rnd.random() < 0.1:
            for _ in range(rnd.randint(1, 3)):
                size = rnd.choice(SIZES)
                ours.max_allowed_table_size = max(ours.max_allowed_table_size, size)
                set_hpack_encoder_size(theirs, size)
        fields = [random_field(rnd) for _ in range(rnd.randint(0, 12))]
        assert ours.decode(theirs.encode(fields, huffman=huffman)) == [(f[0], f[1]) for f in fields]
        assert ours.entries() == list(theirs.header_table.dynamic_entries)
        assert ours.max_table_size == theirs.header_table_size


field_strategy = st.tuples(
    st.sampled_from(NAMES) | st.binary(min_size=1, max_size=12),
    st.sampled_from(VALUES) | st.binary(max_size=200),
)
step_strategy = st.one_of(
    st.lists(field_strategy, max_size=8),
    st.integers(min_value=0, max_value=5000),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step_strategy, max_size=30))
def test_round_trip_through_both_implementations(steps: list[Fields | int]) -> None:
    ours_enc, their_dec = Encoder(), hpack.Decoder(max_header_list_size=1 << 30)
    their_enc, ours_dec = hpack.Encoder(), Decoder()
    for step in steps:
        if isinstance(step, int):
            ours_enc.set_max_table_size(step)
            their_dec.max_allowed_table_size = max(their_dec.max_allowed_table_size, step)
            set_hpack_encoder_size(their_enc, step)
            ours_dec.max_allowed_table_size = max(ours_dec.max_allowed_table_size, step)
            continue
        assert their_dec.decode(ours_enc.encode(step), raw=True) == step
        assert ours_dec.decode(their_enc.encode(step)) == step
        assert ours_enc.entries() == list(their_dec.header_table.dynamic_entries)
        assert ours_dec.entries() == list(their_enc.header_table.dynamic_entries)
