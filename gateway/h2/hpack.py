"""HPACK (RFC 7541) header block decoding and encoding for the HTTP/2 codec.

Decoding keeps the dynamic table the peer's encoder drives. Because a client sends
the same block bytes request after request once its table has settled, whole blocks
that leave the table untouched are memoised per table state: the common case costs one
dict lookup and a list copy. Blocks that reference no dynamic entry decode the same
whatever the table holds, so they have a second memo that table changes do not empty:
a hit replays the block's inserts. That is what keeps a peer whose encoder inserts on
every block (nginx indexes its response fields afresh each time) off the slow path.

Encoding is stateless: static-table indexed fields for exact matches, otherwise
literals that are never added to a dynamic table, without Huffman coding. That keeps
the peer's decoder state trivial and our CPU cost at a dict lookup per header.
"""

from __future__ import annotations

from gateway.h2.hpack_tables import EOS, STATIC_COUNT, STATIC_TABLE, huffman_codes

__all__ = ["Decoder", "Encoder", "HeaderListTooLarge", "HpackError", "huffman_decode"]

DEFAULT_TABLE_SIZE = 4096  # RFC 9113 6.5.2 initial SETTINGS_HEADER_TABLE_SIZE
ENTRY_OVERHEAD = 32  # RFC 7541 4.1
_FIRST_DYNAMIC = STATIC_COUNT + 1

# Integers beyond this are refused: no legitimate index, length or size comes close,
# and the bound stops a peer from making us build huge ints.
_MAX_INT = (1 << 32) - 1

# Whole-block memo bounds (per decoder, i.e. per connection). Blocks are only memoised
# while small so that a peer cycling through distinct blocks cannot grow memory much.
_BLOCK_CACHE_ENTRIES = 512
_BLOCK_CACHE_KEY_BYTES = 32 * 1024
_BLOCK_CACHE_MAX_BLOCK = 512

# Huffman string memo, shared by all decoders (decoding is a pure function).
_HUFF_CACHE_ENTRIES = 4096
_HUFF_CACHE_MAX_STRING = 128


class HpackError(Exception):
    """Malformed header block: the connection must fail with COMPRESSION_ERROR."""


class HeaderListTooLarge(Exception):
    """The decoded header list exceeds max_header_list_size (RFC 9113 6.5.2 sizing).

    Raised only after the whole block was processed, so the dynamic table is still in
    sync and only the stream needs refusing.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"header list size {size} exceeds {limit}")
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------------- Huffman


def _build_huffman_machine() -> tuple[list[int], list[bytes], frozenset[int], int]:
    """A byte-at-a-time decoding automaton over the Huffman tree.

    States are the tree's internal nodes (the root means "between symbols"); a state
    value is premultiplied by 256 so the transition for (state, byte) sits at state + byte
    of two parallel lists: the next state, and the 0-2 symbols completed within that byte
    (two lists beat one list of tuples on both speed and memory). Decoding EOS
    leads to a sink state that never accepts, so the hot loop needs no error branch.
    """
    codes = huffman_codes()
    # children[node] = [child for bit 0, child for bit 1]; leaves are stored as ~symbol.
    children: list[list[int]] = [[0, 0]]
    for sym, (code, length) in enumerate(codes):
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            nxt = children[node][bit]
            if nxt == 0:
                nxt = len(children)
                children.append([0, 0])
                children[node][bit] = nxt
            node = nxt
        children[node][code & 1] = ~sym

    n_states = len(children)  # 256 internal nodes
    sink = n_states

    # Nibble transitions first (4096 of them), then bytes as two nibbles: far cheaper
    # at import than walking 8 bits for each of the 65536 (state, byte) pairs.
    nibble: list[tuple[int, bytes]] = []
    for state in range(n_states):
        for value in range(16):
            node = state
            out = bytearray()
            failed = False
            for shift in (3, 2, 1, 0):
                nxt = children[node][(value >> shift) & 1]
                if nxt < 0:
                    sym = ~nxt
                    if sym == EOS:
                        failed = True
                        break
                    out.append(sym)
                    node = 0
                else:
                    node = nxt
            nibble.append((sink, b"") if failed else (node, bytes(out)))

    # Share the state ints and emitted strings between entries: 65536 private copies
    # would cost megabytes.
    state_values = [state << 8 for state in range(n_states + 1)]
    sink_value = state_values[sink]
    pairs: dict[bytes, bytes] = {}
    next_state: list[int] = []
    emitted: list[bytes] = []
    for state in range(n_states):
        for byte in range(256):
            mid, first = nibble[state * 16 + (byte >> 4)]
            if mid != sink:
                end, second = nibble[mid * 16 + (byte & 15)]
                if end != sink:
                    syms = first + second
                    next_state.append(state_values[end])
                    emitted.append(pairs.setdefault(syms, syms))
                    continue
            next_state.append(sink_value)
            emitted.append(b"")
    next_state.extend([sink_value] * 256)
    emitted.extend([b""] * 256)

    # Valid padding is a strict prefix of EOS (all ones) of at most 7 bits: the nodes
    # reached from the root by 0..7 one-bits.
    accepting = set()
    node = 0
    for _ in range(8):
        accepting.add(node << 8)
        node = children[node][1]
    return next_state, emitted, frozenset(accepting), sink_value


_HUFF_NEXT, _HUFF_EMIT, _HUFF_ACCEPT, _HUFF_SINK = _build_huffman_machine()
_HUFF_CACHE: dict[bytes, bytes] = {}


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal; raises HpackError on EOS or bad padding."""
    next_state = _HUFF_NEXT
    emitted = _HUFF_EMIT
    state = 0
    out = bytearray()
    for byte in data:
        i = state + byte
        out += emitted[i]
        state = next_state[i]
    if state not in _HUFF_ACCEPT:
        if state == _HUFF_SINK:
            raise HpackError("EOS symbol inside a Huffman-coded string")
        raise HpackError("invalid Huffman padding")
    return bytes(out)


# --------------------------------------------------------------------------- decoding


def _read_int(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """Continuation bytes of an integer whose prefix was all ones (value = prefix max)."""
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _MAX_INT:
                raise HpackError("integer exceeds 2^32-1")
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer encoding too long")


def _read_string(block: bytes, pos: int) -> tuple[bytes, int]:
    first = block[pos]
    pos += 1
    length = first & 0x7F
    if length == 0x7F:
        length, pos = _read_int(block, pos, 0x7F)
    end = pos + length
    if end > len(block):
        raise HpackError("string literal runs past the end of the header block")
    raw = block[pos:end]
    if not first & 0x80:
        return raw, end
    decoded = _HUFF_CACHE.get(raw)
    if decoded is None:
        decoded = huffman_decode(raw)
        if length <= _HUFF_CACHE_MAX_STRING:
            if len(_HUFF_CACHE) >= _HUFF_CACHE_ENTRIES:
                _HUFF_CACHE.clear()
            _HUFF_CACHE[raw] = decoded
    return decoded, end


# Bytes 0x81..0xFE are complete indexed fields (indices 1..126) on their own; this maps
# them to their index and every other byte to 0, which no such field can produce.
_ONE_BYTE_INDEX = bytes(b & 0x7F if 0x81 <= b <= 0xFE else 0 for b in range(256))


class Decoder:
    """Decodes the header blocks of one connection (the peer's encoder drives our table).

    `max_table_size` is the table size both ends start from (4096 in HTTP/2, whatever our
    SETTINGS say, until the peer has seen them). Once the peer acknowledges our
    SETTINGS_HEADER_TABLE_SIZE, set `max_allowed_table_size` to it: size updates above it
    are errors, and lowering it below the current size obliges the peer to open its next
    block with a size update (RFC 7541 4.2).
    """

    __slots__ = (
        "_table",
        "_dyn_size",
        "_max_size",
        "_max_allowed",
        "_update_required",
        "_max_list_size",
        "_cache",
        "_cache_bytes",
        "_fixed",
        "_fixed_bytes",
    )

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 65536) -> None:
        # The whole index space in one list: _table[i] is HPACK index i (0 unused), the
        # dynamic part newest first. Lookups are one subscript; inserting shifts at most
        # a few hundred pointers.
        self._table: list[tuple[bytes, bytes]] = list(STATIC_TABLE)
        self._dyn_size = 0
        self._max_size = max_table_size
        self._max_allowed = max_table_size
        self._update_required = False
        self._max_list_size = max_header_list_size
        # Memo of blocks that did not change the table, valid for the current table
        # contents only: every table change empties it (the "generation" moves on).
        self._cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._cache_bytes = 0
        # Memo of blocks that reference no dynamic entry and carry no size update: their
        # headers do not depend on the table, so table changes leave it valid. Values are
        # (headers, None) or (headers, inserted entries newest first, their total size)
        # so that a hit can redo the inserts.
        self._fixed: dict[bytes, tuple] = {}
        self._fixed_bytes = 0

    # ---- settings

    @property
    def max_allowed_table_size(self) -> int:
        return self._max_allowed

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._max_allowed = value
        if value < self._max_size:
            self._update_required = True
            # The next block must open with a size update: no memoised block does.
            self._drop_cache()
            self._drop_fixed()

    @property
    def max_header_list_size(self) -> int:
        return self._max_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_list_size = value
        # Memoised blocks were admitted under the previous limit.
        self._drop_cache()
        self._drop_fixed()

    # ---- introspection (tests, debugging)

    @property
    def table_size(self) -> int:
        """Bytes the dynamic table currently accounts for (entries + 32 each)."""
        return self._dyn_size

    @property
    def max_table_size(self) -> int:
        """The dynamic table's current maximum, as last set by the peer."""
        return self._max_size

    @property
    def dynamic_table(self) -> list[tuple[bytes, bytes]]:
        """Entries newest first, i.e. index 62 first."""
        return self._table[_FIRST_DYNAMIC:]

    # ---- decoding

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode one complete header block (HEADERS + CONTINUATION payloads joined).

        Returns a new list of (name, value) each call. Raises HpackError on malformed
        input, HeaderListTooLarge when the list is over the limit (table kept in sync).
        """
        try:
            hit = self._cache.get(block)
            if hit is None:
                fixed = self._fixed.get(block)
                if fixed is None:
                    return self._decode(block)
                if fixed[1] is not None:
                    self._replay(fixed[1], fixed[2])
                return fixed[0][:]
        except TypeError:  # bytearray: unhashable, decoded from a bytes copy
            return self._decode(block)
        return hit[:]

    def _drop_cache(self) -> None:
        if self._cache:
            self._cache.clear()
        self._cache_bytes = 0

    def _drop_fixed(self) -> None:
        if self._fixed:
            self._fixed.clear()
        self._fixed_bytes = 0

    def _replay(self, entries: tuple, size: int) -> None:
        """Redo a memoised block's inserts (entries newest first, as they end up)."""
        self._drop_cache()
        # Inserting one by one, each evicting the oldest entries until it fits, keeps
        # the longest run of newest entries that fits; so does inserting all, then
        # evicting the oldest until the whole fits. That holds for an entry larger than
        # the table too (RFC 7541 4.4): no run that fits contains it, and it empties
        # the table of everything older.
        table = self._table
        table[_FIRST_DYNAMIC:_FIRST_DYNAMIC] = entries
        total = self._dyn_size + size
        limit = self._max_size
        while total > limit:
            old_name, old_value = table.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        self._dyn_size = total

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        if type(block) is not bytes:
            block = bytes(block)  # bytearray/memoryview: slices must be bytes, keys hashable
        table = self._table
        end = len(block)
        changed = False
        dynamic = False  # decoding read a dynamic entry or resized the table
        inserted = None
        if self._update_required and (end == 0 or block[0] & 0xE0 != 0x20):
            raise HpackError("dynamic table size update required at the start of the block")
        indices = block.translate(_ONE_BYTE_INDEX)
        if 0 not in indices:
            # Only one-byte indexed fields (a settled client's usual request): map the
            # indices through the table without a Python-level loop.
            try:
                headers = list(map(table.__getitem__, indices))
            except IndexError:
                raise HpackError(f"index {max(block) & 0x7F} beyond the dynamic table") from None
            dynamic = bool(indices) and max(indices) >= _FIRST_DYNAMIC
        else:
            headers = []
            append = headers.append
            pos = 0
            try:
                while pos < end:
                    if indices[pos]:
                        # A run of one-byte indexed fields: each byte is a whole field,
                        # so the run ends at the first byte that is not one.
                        stop = indices.find(0, pos)
                        if stop < 0:
                            stop = end
                        run = indices[pos:stop]
                        try:
                            headers += map(table.__getitem__, run)
                        except IndexError:
                            raise HpackError(f"index {max(run)} beyond the table") from None
                        if max(run) >= _FIRST_DYNAMIC:
                            dynamic = True
                        pos = stop
                        continue
                    byte = block[pos]
                    pos += 1
                    if byte & 0x80:  # indexed field (6.1)
                        index = byte & 0x7F
                        if index == 0x7F:
                            index, pos = _read_int(block, pos, 0x7F)
                        if 0 < index < len(table):
                            append(table[index])
                            if index >= _FIRST_DYNAMIC:
                                dynamic = True
                        else:
                            raise HpackError(f"index {index} beyond the table" if index else "index 0")
                    elif byte & 0x40:  # literal with incremental indexing (6.2.1)
                        index = byte & 0x3F
                        if index == 0x3F:
                            index, pos = _read_int(block, pos, 0x3F)
                        if index:
                            name = self._name_at(index)
                            if index >= _FIRST_DYNAMIC:
                                dynamic = True
                        else:
                            name, pos = _read_string(block, pos)
                        value, pos = _read_string(block, pos)
                        header = (name, value)
                        append(header)
                        self._insert(header)
                        changed = True
                        if inserted is None:
                            inserted = [header]
                        else:
                            inserted.append(header)
                    elif byte & 0x20:  # dynamic table size update (6.3)
                        if headers:
                            raise HpackError("dynamic table size update after a header field")
                        size = byte & 0x1F
                        if size == 0x1F:
                            size, pos = _read_int(block, pos, 0x1F)
                        if size > self._max_allowed:
                            raise HpackError(f"table size update to {size} above the limit {self._max_allowed}")
                        self._resize(size)
                        self._update_required = False
                        changed = True
                        dynamic = True
                    else:  # literal without indexing (0000) or never indexed (0001) (6.2.2, 6.2.3)
                        index = byte & 0x0F
                        if index == 0x0F:
                            index, pos = _read_int(block, pos, 0x0F)
                        if index:
                            name = self._name_at(index)
                            if index >= _FIRST_DYNAMIC:
                                dynamic = True
                        else:
                            name, pos = _read_string(block, pos)
                        value, pos = _read_string(block, pos)
                        append((name, value))
            except IndexError:
                raise HpackError("header block truncated") from None

        # Cheap upper bound first: a field is at most a table entry (each no larger than
        # the table, static ones under 64) plus what the block spells out literally
        # (Huffman expands at most 8/5).
        count = len(headers)
        if count * (max(self._max_size, 64) + ENTRY_OVERHEAD) + 2 * end > self._max_list_size:
            size = ENTRY_OVERHEAD * count
            for name, value in headers:
                size += len(name) + len(value)
            if size > self._max_list_size:
                raise HeaderListTooLarge(size, self._max_list_size)

        if end > _BLOCK_CACHE_MAX_BLOCK:
            return headers
        if not dynamic:
            fixed = self._fixed
            if len(fixed) >= _BLOCK_CACHE_ENTRIES or self._fixed_bytes + end > _BLOCK_CACHE_KEY_BYTES:
                fixed.clear()
                self._fixed_bytes = 0
            if inserted is None:
                fixed[block] = (headers, None)
            else:
                size = ENTRY_OVERHEAD * len(inserted)
                for name, value in inserted:
                    size += len(name) + len(value)
                inserted.reverse()
                fixed[block] = (headers, tuple(inserted), size)
            self._fixed_bytes += end
            return headers[:]
        if not changed:
            cache = self._cache
            if len(cache) >= _BLOCK_CACHE_ENTRIES or self._cache_bytes + end > _BLOCK_CACHE_KEY_BYTES:
                cache.clear()
                self._cache_bytes = 0
            cache[block] = headers
            self._cache_bytes += end
            return headers[:]
        return headers

    def _name_at(self, index: int) -> bytes:
        if index < len(self._table):
            return self._table[index][0]
        raise HpackError(f"name index {index} beyond the table")

    def _insert(self, header: tuple[bytes, bytes]) -> None:
        self._drop_cache()
        name, value = header
        size = len(name) + len(value) + ENTRY_OVERHEAD
        table = self._table
        if size > self._max_size:
            # RFC 7541 4.4: an entry larger than the table empties it and is not added.
            del table[_FIRST_DYNAMIC:]
            self._dyn_size = 0
            return
        total = self._dyn_size + size
        limit = self._max_size
        while total > limit:
            old_name, old_value = table.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        table.insert(_FIRST_DYNAMIC, header)
        self._dyn_size = total

    def _resize(self, size: int) -> None:
        self._drop_cache()
        self._max_size = size
        table = self._table
        total = self._dyn_size
        while total > size:
            old_name, old_value = table.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        self._dyn_size = total


# --------------------------------------------------------------------------- encoding

# Sent never-indexed (6.2.3) so that intermediaries re-encoding them do not index them
# either: credentials and cookies are what compression-ratio attacks (CRIME-style)
# target. Costs us nothing: our encoder indexes nothing anyway.
SENSITIVE_NAMES = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})

_STATIC_EXACT: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i in range(STATIC_COUNT, 0, -1):  # descending so the lowest index wins
    _STATIC_EXACT[STATIC_TABLE[_i]] = _i
    _STATIC_NAME[STATIC_TABLE[_i][0]] = _i
del _i

_FIELD_CACHE_ENTRIES = 4096
_FIELD_CACHE_MAX_FIELD = 256
# Fields whose value is new on every request (the gateway's own request ids): caching
# them would only churn the cache and keep one more object alive per request.
_UNIQUE_VALUES = frozenset((b"x-request-id",))


def _encode_int(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_field(name: bytes, value: bytes) -> bytes:
    """One header field as our encoder represents it (no table, no Huffman)."""
    index = _STATIC_EXACT.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))
    flags = 0x10 if name in SENSITIVE_NAMES else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        head = _encode_int(name_index, 4, flags)
    else:
        head = bytes((flags,)) + _encode_int(len(name), 7, 0) + name
    return head + _encode_int(len(value), 7, 0) + value


class _FieldCache(dict):
    """Encoded bytes per (name, value), shared by all encoders (encoding is stateless).

    A miss encodes through __missing__, so that `map(cache.__getitem__, fields)` does
    the whole lookup in C with no None to search for and no exception on a miss (a
    request id misses on every request)."""

    __slots__ = ()

    def __missing__(self, field: tuple[bytes, bytes]) -> bytes:
        name, value = field
        piece = _encode_field(name, value)
        if len(name) + len(value) <= _FIELD_CACHE_MAX_FIELD and name not in _UNIQUE_VALUES:
            if len(self) >= _FIELD_CACHE_ENTRIES:
                self.clear()
            self[field] = piece
        return piece


_FIELD_CACHE = _FieldCache()


class Encoder:
    """Encodes header lists for one connection without using the dynamic table."""

    __slots__ = ("_table_size", "_pending_update")

    def __init__(self) -> None:
        self._table_size = DEFAULT_TABLE_SIZE  # what the peer's decoder believes our table max is
        self._pending_update: int | None = None

    def set_max_table_size(self, n: int) -> None:
        """Apply the peer's SETTINGS_HEADER_TABLE_SIZE.

        We never insert, so only a limit below the size the peer assumes matters: RFC 7541
        4.2 then requires a size update at the start of our next block. The assumed size
        only shrinks, so the pending update is always the smallest limit seen since the
        last block, as 4.2 asks when the limit moves more than once.
        """
        if n < self._table_size:
            self._table_size = n
            self._pending_update = n

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Encode (name, value) tuples (hashable: they key the field cache) as given;
        lower-casing and validating names is the caller's business."""
        block = b"".join(map(_FIELD_CACHE.__getitem__, headers))
        if self._pending_update is not None:
            block = _encode_int(self._pending_update, 5, 0x20) + block
            self._pending_update = None
        return block
