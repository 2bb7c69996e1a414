"""HPACK codec: RFC 7541 Appendix C vectors, malformed input, caches, and round trips
against the `hpack` package as an independent implementation."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from gateway.h2.hpack import (
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
    huffman_decode,
)

H = bytes.fromhex
_REF_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def ref_decode(decoder: hpack.Decoder, block: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(h) for h in decoder.decode(block, raw=True)]


# ---------------------------------------------------------------- Huffman


def test_huffman_every_symbol_matches_reference() -> None:
    for sym in range(256):
        for text in (bytes([sym]), bytes([sym]) * 7, b"a" + bytes([sym]) + b"0"):
            assert huffman_decode(_REF_HUFFMAN.encode(text)) == text


def test_huffman_random_strings_match_reference() -> None:
    rng = random.Random(7541)
    for _ in range(500):
        text = rng.randbytes(rng.randrange(0, 300))
        assert huffman_decode(_REF_HUFFMAN.encode(text)) == text


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x18", "padding"),  # 'a' (00011) then 000: padding not all ones
        (b"\x1f\xff", "padding"),  # 'a' then 11 one-bits: padding longer than 7 bits
        (b"\xff", "padding"),  # 8 one-bits, no symbol
        (b"\xff\xff\xff\xfc", "EOS"),  # 30 one-bits = EOS
        (b"\x1f\xff\xff\xff\xff", "EOS"),  # 'a', then EOS crossing byte boundaries
    ],
)
def test_huffman_rejects_bad_padding_and_eos(data: bytes, reason: str) -> None:
    with pytest.raises(HpackError, match=reason):
        huffman_decode(data)


def test_huffman_accepts_up_to_seven_padding_bits() -> None:
    assert huffman_decode(b"") == b""
    assert huffman_decode(b"\x1f") == b"a"  # 3 padding bits
    # '0' '0' '0' = 15 bits then 1 padding bit; ':' (7 bits) + '0' (5 bits) + 4 padding bits
    assert huffman_decode(_REF_HUFFMAN.encode(b"000")) == b"000"
    assert huffman_decode(_REF_HUFFMAN.encode(b":0")) == b":0"


# ---------------------------------------------------------------- RFC 7541 Appendix C


def test_c1_integers_via_table_size_updates() -> None:
    dec = Decoder()
    dec.decode(b"\x2a")  # C.1.1: 10 in a 5-bit prefix
    assert dec.max_table_size == 10
    dec.decode(b"\x3f\x9a\x0a")  # C.1.2: 1337 in a 5-bit prefix
    assert dec.max_table_size == 1337


def test_c2_field_representations() -> None:
    dec = Decoder()
    assert dec.decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572")) == [
        (b"custom-key", b"custom-header")
    ]
    assert dec.dynamic_table == [(b"custom-key", b"custom-header")]
    assert dec.table_size == 55

    dec = Decoder()
    assert dec.decode(H("040c2f73616d706c652f70617468")) == [(b":path", b"/sample/path")]
    assert dec.dynamic_table == []

    dec = Decoder()
    assert dec.decode(H("100870617373776f726406736563726574")) == [(b"password", b"secret")]
    assert dec.dynamic_table == []

    dec = Decoder()
    assert dec.decode(b"\x82") == [(b":method", b"GET")]
    assert dec.table_size == 0


AUTH = (b":authority", b"www.example.com")
REQ1 = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), AUTH]
REQ2 = [*REQ1, (b"cache-control", b"no-cache")]
REQ3 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), AUTH,
        (b"custom-key", b"custom-value")]
REQ_TABLES = [
    ([AUTH], 57),
    ([(b"cache-control", b"no-cache"), AUTH], 110),
    ([(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), AUTH], 164),
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

DATE1 = (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT")
LOC = (b"location", b"https://www.example.com")
PRIVATE = (b"cache-control", b"private")
COOKIE = (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
DATE2 = (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT")
RESP1 = [(b":status", b"302"), PRIVATE, DATE1, LOC]
RESP2 = [(b":status", b"307"), PRIVATE, DATE1, LOC]
RESP3 = [(b":status", b"200"), PRIVATE, DATE2, LOC, (b"content-encoding", b"gzip"), COOKIE]
RESP_TABLES = [
    ([LOC, DATE1, PRIVATE, (b":status", b"302")], 222),
    ([(b":status", b"307"), LOC, DATE1, PRIVATE], 222),
    ([COOKIE, (b"content-encoding", b"gzip"), DATE2], 215),
]

C5_BLOCKS = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
    "6e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f"
    "3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076"
    "657273696f6e3d31",
]
C6_BLOCKS = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f"
    "0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335df"
    "dfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


@pytest.mark.parametrize(
    "blocks, table_size, expected, tables",
    [
        (C3_BLOCKS, 4096, [REQ1, REQ2, REQ3], REQ_TABLES),
        (C4_BLOCKS, 4096, [REQ1, REQ2, REQ3], REQ_TABLES),
        (C5_BLOCKS, 256, [RESP1, RESP2, RESP3], RESP_TABLES),
        (C6_BLOCKS, 256, [RESP1, RESP2, RESP3], RESP_TABLES),
    ],
    ids=["C.3-requests", "C.4-requests-huffman", "C.5-responses-eviction", "C.6-responses-huffman"],
)
def test_appendix_c_sequences(blocks, table_size, expected, tables) -> None:
    dec = Decoder(max_table_size=table_size)
    for block, want, (table, size) in zip(blocks, expected, tables):
        assert dec.decode(H(block)) == want
        assert dec.dynamic_table == table
        assert dec.table_size == size


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\xff", id="truncated-integer-no-continuation"),
        pytest.param(b"\xff\x80", id="truncated-integer-continuation-bit"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\x01", id="integer-too-many-bytes"),
        pytest.param(b"\xff\xff\xff\xff\xff\x0f", id="integer-over-2^32"),
        pytest.param(b"\x3f\x80\x80\x80\x80\x80\x00", id="integer-redundant-zero-continuations"),
        pytest.param(b"\x80", id="index-0"),
        pytest.param(b"\xbe", id="index-62-empty-dynamic-table"),
        pytest.param(b"\xff\x80\x01", id="index-255"),
        pytest.param(b"\x82\xbe", id="valid-field-then-bad-index"),
        pytest.param(b"\x7e\x01a", id="incremental-name-index-beyond-table"),
        pytest.param(b"\x0f\x30\x01a", id="literal-name-index-beyond-table"),
        pytest.param(b"\x04\x81\x18", id="huffman-padding-zero-bits"),
        pytest.param(b"\x04\x82\x1f\xff", id="huffman-padding-too-long"),
        pytest.param(b"\x04\x84\xff\xff\xff\xfc", id="huffman-eos"),
        pytest.param(b"\x00\x81\x18\x00", id="huffman-bad-name"),
        pytest.param(b"\x3f\xe2\x1f", id="size-update-4097-above-limit"),
        pytest.param(b"\x82\x20", id="size-update-after-field"),
        pytest.param(b"\x04\x05abc", id="value-length-beyond-block"),
        pytest.param(b"\x04\x04abc", id="value-length-one-beyond-block"),
        pytest.param(b"\x04\x84\x1f\x1f\x1f", id="huffman-value-one-beyond-block"),
        pytest.param(b"\x40\x05ab", id="name-length-beyond-block"),
        pytest.param(b"\x04\x7f\x81\x01ab", id="long-length-beyond-block"),
        pytest.param(b"\x04", id="missing-value"),
        pytest.param(b"\x40", id="missing-name"),
        pytest.param(b"\x10\x00", id="never-indexed-missing-value"),
    ],
)
def test_malformed_blocks_raise_hpack_error(block: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(block)


def test_integer_bounds_are_checked_before_use() -> None:
    # Every integer is also range-checked by its use; these messages show the decoder
    # refused the integer itself rather than, say, building a huge length first.
    with pytest.raises(HpackError, match="2\\^32"):
        Decoder().decode(b"\xff\xff\xff\xff\xff\x0f")  # 127 + 2^32 - 1
    with pytest.raises(HpackError, match="too long"):
        Decoder().decode(b"\x04\x7f\x80\x80\x80\x80\x80\x01")
    # 2^32 - 1 itself is a well-formed integer (then an index beyond the table)
    with pytest.raises(HpackError, match="index 4294967295"):
        Decoder().decode(b"\xff\x80\xff\xff\xff\x0f")


def test_size_update_at_the_limit_is_accepted() -> None:
    dec = Decoder()
    assert dec.decode(b"\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # 4096
    assert dec.max_table_size == 4096


def test_several_size_updates_at_block_start_evict() -> None:
    dec = Decoder()
    dec.decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572"))
    assert dec.table_size == 55
    # update to 0 (evicts everything) then back to 4096, then reference index 62
    with pytest.raises(HpackError, match="index 62"):
        dec.decode(b"\x20\x3f\xe1\x1f\xbe")
    assert dec.dynamic_table == []


def test_lowered_limit_requires_size_update() -> None:
    dec = Decoder()
    dec.decode(b"\x41\x03abc")  # :authority: abc, indexed
    dec.decode(b"\xbe")  # memoised
    dec.max_allowed_table_size = 100
    with pytest.raises(HpackError, match="size update required"):
        dec.decode(b"\xbe")
    dec2 = Decoder()
    dec2.decode(b"\x41\x03abc")
    dec2.max_allowed_table_size = 100
    with pytest.raises(HpackError, match="above the limit"):
        dec2.decode(b"\x3f\x46")  # update to 101
    dec3 = Decoder()
    dec3.decode(b"\x41\x03abc")
    dec3.max_allowed_table_size = 100
    assert dec3.decode(b"\x3f\x45\xbe") == [(b":authority", b"abc")]  # update to 100 keeps the entry
    assert dec3.decode(b"\xbe") == [(b":authority", b"abc")]  # no further update needed


def test_raising_the_limit_needs_no_update() -> None:
    dec = Decoder()
    dec.max_allowed_table_size = 65536
    assert dec.decode(b"\x82") == [(b":method", b"GET")]
    dec.decode(b"\x3f\xe1\xff\x03")  # 65536
    assert dec.max_table_size == 65536


def test_entry_larger_than_table_empties_it() -> None:
    dec = Decoder(max_table_size=100)
    dec.decode(b"\x41\x03abc")
    value = b"v" * 80
    assert dec.decode(b"\x40\x01x" + bytes([len(value)]) + value) == [(b"x", value)]
    assert dec.dynamic_table == []
    assert dec.table_size == 0


def test_eviction_keeps_accounting_exact() -> None:
    dec = Decoder(max_table_size=100)
    dec.decode(b"\x40\x01a\x0a" + b"1" * 10)  # 43
    dec.decode(b"\x40\x01b\x0a" + b"2" * 10)  # 86
    dec.decode(b"\x40\x01c\x0a" + b"3" * 10)  # evicts a
    assert dec.dynamic_table == [(b"c", b"3" * 10), (b"b", b"2" * 10)]
    assert dec.table_size == 86
    assert dec.decode(b"\xbe\xbf") == [(b"c", b"3" * 10), (b"b", b"2" * 10)]
    with pytest.raises(HpackError):
        dec.decode(b"\xc0")


def test_accepts_bytearray_and_memoryview() -> None:
    block = H(C4_BLOCKS[0])
    assert Decoder().decode(bytearray(block)) == REQ1
    assert Decoder().decode(memoryview(block)) == REQ1


# ---------------------------------------------------------------- header list size


def test_header_list_too_large_keeps_table_in_sync() -> None:
    dec = Decoder(max_header_list_size=100)
    big = b"b" * 70
    block = b"\x40\x05x-big" + bytes([len(big)]) + big  # 5 + 70 + 32 = 107
    with pytest.raises(HeaderListTooLarge) as info:
        dec.decode(block)
    assert not isinstance(info.value, HpackError)
    assert (info.value.size, info.value.limit) == (107, 100)
    # The entry was added although the block was refused: the next block may reference it.
    dec.max_header_list_size = 1000
    assert dec.decode(b"\xbe\x82") == [(b"x-big", big), (b":method", b"GET")]


def test_header_list_limit_applies_to_memoised_blocks() -> None:
    dec = Decoder(max_header_list_size=1000)
    dec.decode(b"\x40\x01x\x20" + b"y" * 32)
    block = b"\xbe" * 10  # 10 * (1 + 32 + 32) = 650
    assert len(dec.decode(block)) == 10
    assert len(dec.decode(block)) == 10
    dec.max_header_list_size = 600
    for _ in range(2):
        with pytest.raises(HeaderListTooLarge):
            dec.decode(block)


def test_header_list_size_counts_indexed_fields() -> None:
    dec = Decoder(max_header_list_size=122)
    with pytest.raises(HeaderListTooLarge):
        dec.decode(b"\x82\x86\x84")  # :method GET 42, :scheme http 43, :path / 38 = 123
    dec.max_header_list_size = 123
    assert len(dec.decode(b"\x82\x86\x84")) == 3


# ---------------------------------------------------------------- block memo


def test_memo_never_returns_stale_headers_after_insertion() -> None:
    dec = Decoder()
    dec.decode(b"\x40\x01x\x011")
    assert dec.decode(b"\xbe\x82") == [(b"x", b"1"), (b":method", b"GET")]
    assert dec.decode(b"\xbe\x82") == [(b"x", b"1"), (b":method", b"GET")]
    dec.decode(b"\x40\x01y\x012")  # same bytes now mean something else
    assert dec.decode(b"\xbe\x82") == [(b"y", b"2"), (b":method", b"GET")]
    assert dec.decode(b"\xbf") == [(b"x", b"1")]


def test_memo_never_returns_stale_headers_after_eviction_or_resize() -> None:
    dec = Decoder(max_table_size=80)
    dec.decode(b"\x40\x01x\x011")
    assert dec.decode(b"\xbe") == [(b"x", b"1")]
    dec.decode(b"\x3f\x02")  # resize to 33: x (34 bytes) is evicted
    with pytest.raises(HpackError):
        dec.decode(b"\xbe")
    dec.decode(b"\x3f\x31\x40\x01a\x011")  # resize to 80, insert a
    assert dec.decode(b"\xbe") == [(b"a", b"1")]
    dec.decode(b"\x40\x01b\x011\x40\x01c\x011")  # b then c: a evicted, c newest
    assert dec.decode(b"\xbe") == [(b"c", b"1")]


def test_memo_returns_a_fresh_list_each_time() -> None:
    dec = Decoder()
    first = dec.decode(b"\x82\x84")
    first.append((b"x", b"y"))
    second = dec.decode(b"\x82\x84")
    assert second == [(b":method", b"GET"), (b":path", b"/")]
    second.append((b"z", b"z"))
    assert dec.decode(b"\x82\x84") == [(b":method", b"GET"), (b":path", b"/")]


def test_memo_covers_literals_without_indexing() -> None:
    dec = Decoder()
    block = b"\x82\x04\x05/item\x10\x01k\x01v"
    assert dec.decode(block) == [(b":method", b"GET"), (b":path", b"/item"), (b"k", b"v")]
    assert dec.decode(block) == [(b":method", b"GET"), (b":path", b"/item"), (b"k", b"v")]
    assert dec.table_size == 0


def test_memo_stays_bounded() -> None:
    dec = Decoder()
    for i in range(3000):
        block = b"\x82\x04" + bytes([len(str(i))]) + str(i).encode()
        assert dec.decode(block)[1] == (b":path", str(i).encode())
    assert len(dec._cache) <= 512
    assert len(dec._fixed) <= 512
    big = b"\x04\x7f\xbd\x04" + b"p" * 700  # larger than the memoised block size
    dec.decode(big)
    assert big not in dec._cache
    assert big not in dec._fixed


# The response head nginx sends on every response: :status 200 indexed, then server,
# date, content-type and content-length as literals with incremental indexing (names
# from the static table, Huffman values), so each block inserts 4 entries.
NGINX_HEAD = H("887689aa6355e580ae212e1f6196dc34fd2806d4be52282009c500f5c13771b794c5a37f"
               "5f8b1d75d0620d263d4c4d65645c023131")
NGINX_HEAD_FIELDS = [(b":status", b"200"), (b"server", b"nginx/1.22.1"),
                     (b"date", b"Sat, 05 Dec 2026 08:25:58 GMT"),
                     (b"content-type", b"application/grpc"), (b"content-length", b"11")]


def _assert_same_table(ours: Decoder, ref: hpack.Decoder) -> None:
    assert ours.dynamic_table == [(e[0], e[1]) for e in ref.header_table.dynamic_entries]
    assert ours.table_size == ref.header_table._current_size


def test_block_with_inserts_decoded_again_gives_same_headers_and_table() -> None:
    ours, ref = Decoder(), hpack.Decoder()
    for _ in range(3):
        assert ours.decode(NGINX_HEAD) == NGINX_HEAD_FIELDS
        assert ref_decode(ref, NGINX_HEAD) == NGINX_HEAD_FIELDS
        _assert_same_table(ours, ref)
    assert NGINX_HEAD in ours._fixed  # the later decodes were replays
    assert len(ours.dynamic_table) == 12
    # A block referencing the replayed entries sees the newest ones first.
    assert ours.decode(b"\xbe\xbf\xc0\xc1\xc2") == NGINX_HEAD_FIELDS[:0:-1] + [NGINX_HEAD_FIELDS[4]]


def test_replayed_inserts_evict_as_inserting_one_by_one_does() -> None:
    # Tables from tiny to roomy: replays that evict old entries, their own earlier
    # entries, or (entry larger than the table) empty the table.
    for size in (0, 40, 60, 90, 130, 200, 4096):
        ours, ref = Decoder(max_table_size=size), hpack.Decoder()
        ref.header_table.maxsize = size
        blocks = [b"\x40\x01a\x0a" + b"1" * 10, NGINX_HEAD, b"\x40\x01b\x0a" + b"2" * 10,
                  b"\x40\x01c\x01" + b"3" + b"\x40\x01d\x1e" + b"4" * 30,
                  b"\x40\x01e\x50" + b"5" * 80 + b"\x40\x01f\x016"]  # e: 113 bytes
        for block in blocks * 3:
            assert ours.decode(block) == ref_decode(ref, block)
            _assert_same_table(ours, ref)


def test_replay_after_the_table_shrank_empties_it_for_an_oversized_entry() -> None:
    ours, ref = Decoder(), hpack.Decoder()
    block = b"\x40\x01x\x50" + b"v" * 80  # 113 bytes as an entry
    for decoder in (ours, ref):
        decoder.decode(block) if decoder is ours else ref_decode(ref, block)
    resize = b"\x3f\x45\x40\x01a\x011"  # table size 100, then insert a
    assert ours.decode(resize) == ref_decode(ref, resize) == [(b"a", b"1")]
    _assert_same_table(ours, ref)
    assert ours.decode(block) == ref_decode(ref, block) == [(b"x", b"v" * 80)]
    _assert_same_table(ours, ref)
    assert ours.dynamic_table == []


def test_block_referencing_a_dynamic_entry_is_not_memoised_across_changes() -> None:
    dec = Decoder(max_table_size=80)
    dec.decode(b"\x40\x01x\x011")
    block = b"\x7e\x012"  # literal, indexed, with the name of entry 62
    assert dec.decode(block) == [(b"x", b"2")]
    assert block not in dec._fixed
    assert dec.decode(block) == [(b"x", b"2")]  # the name now comes from x: 2 itself
    assert dec.dynamic_table == [(b"x", b"2"), (b"x", b"2")]
    dec.decode(b"\x40\x01y\x011\x40\x01z\x011")  # x entries evicted
    assert dec.decode(block) == [(b"z", b"2")]
    dec.decode(b"\x3f\x02")  # resize to 33 (below one entry): everything evicted
    with pytest.raises(HpackError, match="name index 62"):
        dec.decode(block)
    with pytest.raises(HpackError):
        dec.decode(b"\xbe")


def test_evicted_entry_reference_is_not_served_from_any_memo() -> None:
    dec = Decoder(max_table_size=100)
    dec.decode(NGINX_HEAD[:1] + b"\x40\x01x\x011")
    assert dec.decode(b"\x82\xbe") == [(b":method", b"GET"), (b"x", b"1")]
    assert dec.decode(b"\x82\xbe") == [(b":method", b"GET"), (b"x", b"1")]
    dec.decode(b"\x00\x01k\x01v\x40\x01y\x0a" + b"2" * 10 + b"\x40\x01z\x0a" + b"3" * 10)
    assert dec.dynamic_table == [(b"z", b"3" * 10), (b"y", b"2" * 10)]  # x evicted
    assert dec.decode(b"\x82\xbe") == [(b":method", b"GET"), (b"z", b"3" * 10)]
    dec.decode(b"\x3f\x02")  # resize to 33: nothing left
    with pytest.raises(HpackError):
        dec.decode(b"\x82\xbe")


def test_memoised_static_block_still_needs_the_required_size_update() -> None:
    dec = Decoder()
    for block in (b"\x82\x84", NGINX_HEAD):
        dec.decode(block)
        assert block in dec._fixed
    dec.max_allowed_table_size = 100
    for block in (b"\x82\x84", NGINX_HEAD):
        with pytest.raises(HpackError, match="size update required"):
            dec.decode(block)
    assert dec.decode(b"\x3f\x45" + NGINX_HEAD) == NGINX_HEAD_FIELDS
    assert dec.decode(NGINX_HEAD) == NGINX_HEAD_FIELDS
    assert dec.table_size <= 100


def test_fixed_memo_respects_a_lowered_header_list_limit() -> None:
    dec = Decoder()
    assert dec.decode(NGINX_HEAD) == NGINX_HEAD_FIELDS
    dec.max_header_list_size = 100
    with pytest.raises(HeaderListTooLarge):
        dec.decode(NGINX_HEAD)
    assert len(dec.dynamic_table) == 8  # the refused block still inserted


def test_repeated_blocks_from_reference_encoder_keep_tables_in_sync() -> None:
    # Every block decoded 1-3 times by both decoders (the reference encoder does not
    # expect that, but both decoders must agree on what the repeated bytes do).
    rng = random.Random(7541_2)
    for _ in range(80):
        ref_enc = hpack.Encoder()
        table_size = rng.choice([0, 64, 256, 1024, 4096])
        if table_size != 4096:
            ref_enc.header_table_size = table_size
        ours, checker = Decoder(), hpack.Decoder()
        huffman = rng.random() < 0.7
        for headers in _random_blocks(rng, 8):
            block = ref_enc.encode(headers, huffman=huffman)
            for _ in range(rng.randrange(1, 4)):
                try:
                    expected = ref_decode(checker, block)
                except hpack.HPACKError:
                    with pytest.raises(HpackError):
                        ours.decode(block)
                    break
                assert ours.decode(block) == expected
                _assert_same_table(ours, checker)


# ---------------------------------------------------------------- encoder


def test_encoder_uses_static_index_for_exact_matches() -> None:
    enc = Encoder()
    assert enc.encode([(b":status", b"200")]) == b"\x88"
    assert enc.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https")]) == b"\x82\x84\x87"
    assert enc.encode([(b":authority", b"")]) == b"\x81"
    # name match only: literal without indexing, 4-bit name index
    assert enc.encode([(b":status", b"201")]) == b"\x08\x03201"
    assert enc.encode([(b"content-type", b"a")]) == b"\x0f\x10\x01a"  # index 31 = 15 + 16
    assert enc.encode([(b"x", b"")]) == b"\x00\x01x\x00"
    assert enc.encode([]) == b""


@pytest.mark.parametrize("name", [b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"])
def test_encoder_never_indexes_sensitive_fields(name: bytes) -> None:
    block = Encoder().encode([(name, b"secret")])
    assert block[0] & 0xF0 == 0x10
    (field,) = hpack.Decoder().decode(block, raw=True)
    assert isinstance(field, hpack.NeverIndexedHeaderTuple)
    assert tuple(field) == (name, b"secret")


def test_encoder_signals_lowered_table_size_once() -> None:
    enc = Encoder()
    enc.set_max_table_size(8192)  # a raise needs no signal: we never use the table
    assert enc.encode([(b":status", b"200")]) == b"\x88"
    enc.set_max_table_size(100)
    enc.set_max_table_size(0)
    enc.set_max_table_size(50)  # smallest value since the last block is what counts
    block = enc.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    assert enc.encode([(b":status", b"200")]) == b"\x88"

    ours = Decoder()
    ours.max_allowed_table_size = 0
    assert ours.decode(block) == [(b":status", b"200")]
    ref = hpack.Decoder()
    ref.max_allowed_table_size = 0
    assert ref_decode(ref, block) == [(b":status", b"200")]


@pytest.mark.parametrize("length", [0, 1, 126, 127, 128, 254, 255, 16510, 16511, 16512, 70000])
def test_encoder_length_prefix_boundaries(length: int) -> None:
    headers = [(b"x-" + b"n" * (length % 300), bytes(i & 0xFF for i in range(length)))]
    block = Encoder().encode(headers)
    assert Decoder(max_header_list_size=1 << 20).decode(block) == headers
    assert ref_decode(hpack.Decoder(max_header_list_size=1 << 20), block) == headers


def test_encoder_cache_returns_identical_bytes() -> None:
    enc = Encoder()
    headers = [(b"content-type", b"application/grpc"), (b"grpc-status", b"0")]
    first = enc.encode(headers)
    assert Encoder().encode([(b"content-type", b"application/grpc"), (b"grpc-status", b"0")]) == first
    assert Decoder().decode(first) == headers


# ---------------------------------------------------------------- round trips

_NAMES = [
    b":method", b":path", b":authority", b":scheme", b":status", b"content-type", b"user-agent",
    b"accept-encoding", b"cookie", b"authorization", b"set-cookie", b"te", b"grpc-timeout",
    b"grpc-encoding", b"x-request-id", b"x-forwarded-for", b"date", b"etag",
]
_VALUES = [b"", b"GET", b"POST", b"/", b"200", b"404", b"gzip, deflate", b"application/grpc",
           b"trailers", b"https"]


def _random_name(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(_NAMES)
    if roll < 0.85:
        return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz-0123456789") for _ in range(rng.randrange(1, 24)))
    if roll < 0.95:
        return rng.randbytes(rng.randrange(1, 40))  # any bytes: validation is not HPACK's job
    return b"x-long-" + b"n" * rng.randrange(121, 300)


def _random_value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(_VALUES)
    if roll < 0.35:
        return b""
    if roll < 0.7:
        return bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(1, 60)))
    if roll < 0.9:
        return rng.randbytes(rng.randrange(1, 120))  # non-ASCII, NUL, CR/LF included
    return rng.randbytes(rng.randrange(128, 700))


def _random_blocks(rng: random.Random, count: int) -> list[list[tuple[bytes, bytes]]]:
    seen: list[tuple[bytes, bytes]] = []
    blocks = []
    for _ in range(count):
        headers = []
        for _ in range(rng.randrange(0, 16)):
            if seen and rng.random() < 0.4:
                headers.append(rng.choice(seen))
            else:
                header = (_random_name(rng), _random_value(rng))
                headers.append(header)
                seen.append(header)
        blocks.append(headers)
    return blocks


def test_round_trip_reference_encoder_to_our_decoder() -> None:
    rng = random.Random(20240601)
    for _ in range(150):
        ref = hpack.Encoder()
        table_size = rng.choice([0, 64, 256, 1024, 4096, 8192])
        ours = Decoder()
        ours.max_allowed_table_size = 8192
        checker = hpack.Decoder()
        checker.max_allowed_table_size = 8192
        if table_size != 4096:
            ref.header_table_size = table_size
        huffman = rng.random() < 0.7
        for headers in _random_blocks(rng, 8):
            fields = [hpack.NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v) for n, v in headers]
            block = ref.encode(fields, huffman=huffman)
            before = ours.dynamic_table
            assert ours.decode(block) == headers
            assert ref_decode(checker, block) == headers
            assert ours.dynamic_table == [(e[0], e[1]) for e in checker.header_table.dynamic_entries]
            assert ours.table_size == checker.header_table._current_size
            if ours.dynamic_table == before:
                # Decoding left the table alone, so the same bytes (now memoised) must
                # decode the same way again.
                assert ours.decode(block) == headers


def test_round_trip_our_encoder_to_both_decoders() -> None:
    rng = random.Random(424242)
    for _ in range(150):
        enc = Encoder()
        ours = Decoder()
        ref = hpack.Decoder()
        for headers in _random_blocks(rng, 8):
            block = enc.encode(headers)
            assert ours.decode(block) == headers
            assert ref_decode(ref, block) == headers
        assert ours.table_size == 0  # our encoder never indexes


def test_header_list_limit_is_exact_for_random_blocks() -> None:
    rng = random.Random(1312)
    for _ in range(60):
        ref = hpack.Encoder()
        ref.header_table_size = rng.choice([0, 128, 4096])
        ours = Decoder()
        huffman = rng.random() < 0.5
        for headers in _random_blocks(rng, 6):
            block = ref.encode(headers, huffman=huffman)
            size = sum(len(n) + len(v) + 32 for n, v in headers)
            ours.max_header_list_size = rng.choice([size - 1, size])
            if ours.max_header_list_size < size:
                with pytest.raises(HeaderListTooLarge):
                    ours.decode(block)
            else:
                assert ours.decode(block) == headers


def test_shared_caches_stay_bounded() -> None:
    from gateway.h2 import hpack as module

    enc = Encoder()
    for i in range(5000):
        assert Decoder().decode(enc.encode([(b"x-n", b"%d" % i)])) == [(b"x-n", b"%d" % i)]
    assert len(module._FIELD_CACHE) <= 4096
    dec = Decoder()
    for i in range(5000):
        value = b"v%d" % i
        block = b"\x00\x01x" + bytes([0x80 | len(_REF_HUFFMAN.encode(value))]) + _REF_HUFFMAN.encode(value)
        assert dec.decode(block) == [(b"x", value)]
    assert len(module._HUFF_CACHE) <= 4096


def test_request_ids_are_encoded_but_not_cached() -> None:
    from gateway.h2 import hpack as module

    enc = Encoder()
    fields = [(b":status", b"200"), (b"x-request-id", b"0f1e2d3c-0000-4000-a000-000000000001")]
    for _ in range(2):
        block = enc.encode(fields)
        assert Decoder().decode(block) == fields
        assert ref_decode(hpack.Decoder(), block) == fields
    assert fields[1] not in module._FIELD_CACHE
    assert fields[0] in module._FIELD_CACHE
