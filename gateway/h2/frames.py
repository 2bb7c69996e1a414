"""HTTP/2 wire vocabulary (RFC 9113 sections 4, 6, 7) and frame builders.

Everything here is a constant or a function returning the bytes of one frame; the
connection state machine lives in connection.py. The builders are for the cold
paths (control frames); the connection packs DATA and HEADERS itself with
`FRAME_HEADER.pack` to avoid a call per frame.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# Error codes (RFC 9113 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

_ERROR_NAMES = {
    NO_ERROR: "NO_ERROR",
    PROTOCOL_ERROR: "PROTOCOL_ERROR",
    INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    SETTINGS_TIMEOUT: "SETTINGS_TIMEOUT",
    STREAM_CLOSED: "STREAM_CLOSED",
    FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    REFUSED_STREAM: "REFUSED_STREAM",
    CANCEL: "CANCEL",
    COMPRESSION_ERROR: "COMPRESSION_ERROR",
    CONNECT_ERROR: "CONNECT_ERROR",
    ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
    INADEQUATE_SECURITY: "INADEQUATE_SECURITY",
    HTTP_1_1_REQUIRED: "HTTP_1_1_REQUIRED",
}


def error_name(code: int) -> str:
    """Name of an error code for logs; unknown codes (legal on the wire) as hex."""
    name = _ERROR_NAMES.get(code)
    return name if name is not None else f"0x{code:x}"


# SETTINGS identifiers (RFC 9113 6.5.2, RFC 8441 3)
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1

# 24-bit length split as 8 + 16 bits so one struct call packs or parses a header:
# (length >> 16, length & 0xFFFF, type, flags, stream id).
FRAME_HEADER = struct.Struct(">BHBBL")
_U32_FRAME = struct.Struct(">BHBBLL")  # a header plus one 32-bit field: RST_STREAM, WINDOW_UPDATE
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">BHBBLLL")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return _U32_FRAME.pack(0, 4, RST_STREAM, 0, stream_id, error_code)


def window_update(stream_id: int, increment: int) -> bytes:
    return _U32_FRAME.pack(0, 4, WINDOW_UPDATE, 0, stream_id, increment)


def settings(pairs: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in pairs))


SETTINGS_ACK = FRAME_HEADER.pack(0, 0, SETTINGS, FLAG_ACK, 0)


def ping(opaque: bytes, ack: bool = False) -> bytes:
    return FRAME_HEADER.pack(0, 8, PING, FLAG_ACK if ack else 0, 0) + opaque


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    n = 8 + len(debug)
    return _GOAWAY.pack(n >> 16, n & 0xFFFF, GOAWAY, 0, 0, last_stream_id, error_code) + debug


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs of a SETTINGS payload whose length is a multiple of 6."""
    return list(_SETTING.iter_unpack(payload))
