"""Constant tables of RFC 7541: the static table (Appendix A) and the Huffman code (Appendix B)."""

from __future__ import annotations

# Index 0 is unused so that STATIC_TABLE[i] is HPACK index i.
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b"", b""),
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
STATIC_COUNT = len(STATIC_TABLE) - 1  # 61

EOS = 256

# The Appendix B code is canonical: within one length, codes are consecutive in symbol
# order, and each length starts where the previous one ended (shifted). So the lengths
# alone determine every code; `huffman_codes()` rebuilds them.
HUFFMAN_LENGTHS: dict[int, tuple[int, ...]] = {
    5: tuple(b"012aceiost"),
    6: tuple(b" %-./3456789=A_bdfghlmnpru"),
    7: tuple(b":BCDEFGHIJKLMNOPQRSTUVWYjkqvwxyz"),
    8: tuple(b"&*,;XZ"),
    10: tuple(b"!\"()?"),
    11: tuple(b"'+|"),
    12: tuple(b"#>"),
    13: (0, *b"$@[]~"),
    14: tuple(b"^}"),
    15: tuple(b"<`{"),
    19: (92, 195, 208),
    20: (128, 130, 131, 162, 184, 194, 224, 226),
    21: (153, 161, 167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230),
    22: (129, 132, 133, 134, 136, 146, 154, 156, 160, 163, 164, 169, 170, 173, 178, 181, 185,
         186, 187, 189, 190, 196, 198, 228, 232, 233),
    23: (1, 135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165,
         166, 168, 174, 175, 180, 182, 183, 188, 191, 197, 231, 239),
    24: (9, 142, 144, 145, 148, 159, 171, 206, 215, 225, 236, 237),
    25: (199, 207, 234, 235),
    26: (192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242, 243, 255),
    27: (203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
         253, 254),
    28: (2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
         29, 30, 31, 127, 220, 249),
    30: (10, 13, 22, EOS),
}


def huffman_codes() -> list[tuple[int, int]]:
    """(code, bit length) for symbols 0..256, assigned canonically from HUFFMAN_LENGTHS."""
    codes: list[tuple[int, int] | None] = [None] * (EOS + 1)
    code = 0
    prev_len = 0
    for length in sorted(HUFFMAN_LENGTHS):
        code <<= length - prev_len
        prev_len = length
        for sym in sorted(HUFFMAN_LENGTHS[length]):
            if codes[sym] is not None:
                raise AssertionError(f"symbol {sym} listed twice")
            codes[sym] = (code, length)
            code += 1
    if code != 1 << prev_len:
        raise AssertionError("Huffman code lengths do not fill the code space")
    missing = [i for i, c in enumerate(codes) if c is None]
    if missing:
        raise AssertionError(f"symbols without a code: {missing}")
    return codes  # type: ignore[return-value]
