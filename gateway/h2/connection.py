"""Sans-I/O HTTP/2 connection (RFC 9113), client or server role.

Bytes in (`receive`), handler callbacks out; calls in (`send_*`), bytes queued out
(`data_to_send`). No I/O, no tasks, no logging on the hot path.

Receiving parses every complete frame of one `receive()` with an index into the
bytes and dispatches through a 256-entry table indexed by frame type. The table
is swapped while a header block is open (only CONTINUATION is legal then) and
before the peer's first SETTINGS, so the per-frame loop carries no state checks.

Flow control. Receiving: we advertise `initial_window_size` per stream and raise
the connection window to `connection_window` at `initiate()`. DATA beyond either
window is FLOW_CONTROL_ERROR. Windows reopen only when the application calls
`ack_data()` (backpressure = not calling it); WINDOW_UPDATEs are batched until half
a window is consumed. Bytes the application never sees (padding, frames on reset
streams, unacknowledged bytes of a stream when it closes) are credited back to the
connection window by the codec itself. Sending: `send_data` writes what the peer's
windows and SETTINGS_MAX_FRAME_SIZE allow and returns the count; the handler's
`on_window_open(sid)` (or `0`: any blocked stream) says when to try again.

Closed streams are remembered (the last `closed_stream_memory` of them) so that
frames the peer sent before it saw our RST_STREAM are ignored rather than treated
as errors (RFC 9113 5.1 "closed").

Protections (H2Settings fields, defaults in brackets):
- `max_concurrent_streams` [100]: a HEADERS that would open one more stream gets
  RST_STREAM(REFUSED_STREAM); the handler hears nothing.
- `max_header_list_size` [65536]: a request head over it reaches the handler as
  `on_headers_too_large(sid)` (it answers 431); over-long trailers or response heads
  reset the stream with ENHANCE_YOUR_CALM. A header block (HEADERS + CONTINUATION)
  larger than twice the limit, or made of more than `max_continuation_frames` [32]
  CONTINUATION frames, is a connection error ENHANCE_YOUR_CALM (CONTINUATION flood).
- Rapid reset (CVE-2023-44487), server role: a peer RST_STREAM on a stream we have
  not answered yet spends a token of a bucket refilled at `rapid_reset_per_second`
  [200] tokens per second (burst the same); when the bucket is empty and such resets
  exceed half of all streams the peer opened, GOAWAY(ENHANCE_YOUR_CALM).
- Control-frame floods: SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA without
  END_STREAM, RST_STREAM or DATA on closed streams, unknown frame types and
  unsolicited ACKs each cost one unit. Allowance: `flood_budget` [1000] units, plus
  `flood_credit_per_useful_frame` [10] units per useful event (a stream opened, a
  DATA frame with payload received, a HEADERS or DATA frame we send), plus time:
  `flood_refill_per_second` [100] units per second, at most `flood_budget` at once.
  Over it: GOAWAY(ENHANCE_YOUR_CALM).
- Frames above our SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR. Window overflow past
  2^31-1: FLOW_CONTROL_ERROR. Every other RFC 9113 error class as the RFC says.

Counters for metrics: `stats_rapid_resets` (premature peer resets seen),
`stats_floods` (connections failed with ENHANCE_YOUR_CALM for any flood),
`stats_refused_streams`, `stats_malformed` (requests/responses refused as malformed),
`stats_headers_too_large`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


from gateway.h2.frames import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME_SIZE_LIMIT,
    MAX_WINDOW,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK,
    SETTINGS_ENABLE_CONNECT_PROTOCOL,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    goaway,
    parse_settings,
    ping,
    rst_stream,
    settings,
    window_update,
)
from gateway.h2.hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

__all__ = ["H2Connection", "H2Settings", "StreamClosedError"]

_pack_header = FRAME_HEADER.pack
_unpack_header = FRAME_HEADER.unpack_from

_HPACK_DEFAULT_TABLE = 4096
_PREFACE_LEN = len(PREFACE)

# Internal HEADERS flag (outside the 8 wire bits): the priority block named the
# stream itself as its dependency, a stream error once the block is decoded.
_SELF_DEPENDENCY = 0x100

# How a remembered stream ended; decides what late frames on it mean (RFC 9113 5.1).
_GONE_RESET_BY_US = 1  # ignore: the peer may not have seen our RST_STREAM yet
_GONE_RESET_BY_PEER = 2  # anything but PRIORITY/RST_STREAM is a STREAM_CLOSED stream error
_GONE_ENDED = 3  # both END_STREAMs: DATA/HEADERS are a STREAM_CLOSED connection error


class StreamClosedError(Exception):
    """The application sent on a stream that is not open for sending (or cannot be opened)."""


class _ConnError(Exception):
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Malformed(Exception):
    pass


def open_windows(streams: dict, sid: int) -> None:
    """An owner's on_window_open: stream `sid` (0: the connection) may send again, so
    its streams holding data beyond the old window get to send it."""
    if sid:
        stream = streams.get(sid)
        if stream is not None:
            stream.window_open()
    else:
        for stream in list(streams.values()):
            if stream.pending:
                stream.window_open()


@dataclass(slots=True)
class H2Settings:
    """Our side of the connection: advertised SETTINGS and protection limits."""

    header_table_size: int = 4096
    enable_push: int = 0
    max_concurrent_streams: int = 100
    initial_window_size: int = 65535 * 4
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    connection_window: int = 1 << 24
    enable_connect_protocol: bool = False
    max_continuation_frames: int = 32
    rapid_reset_per_second: int = 200
    flood_budget: int = 1000
    flood_credit_per_useful_frame: int = 10
    flood_refill_per_second: int = 100
    closed_stream_memory: int = 1024

    def __post_init__(self) -> None:
        if self.enable_push:
            raise ValueError("enable_push must be 0: this codec neither sends nor accepts server push")
        if not 0 <= self.header_table_size <= 1 << 30:
            raise ValueError(f"header_table_size out of range: {self.header_table_size}")
        if not 0 <= self.max_concurrent_streams <= MAX_WINDOW:
            raise ValueError(f"max_concurrent_streams out of range: {self.max_concurrent_streams}")
        if not DEFAULT_WINDOW <= self.initial_window_size <= MAX_WINDOW:
            # Below 65535 would need the not-yet-acknowledged SETTINGS dance; nobody wants it.
            raise ValueError(f"initial_window_size must be in [65535, 2^31-1]: {self.initial_window_size}")
        if not DEFAULT_MAX_FRAME_SIZE <= self.max_frame_size <= MAX_FRAME_SIZE_LIMIT:
            raise ValueError(f"max_frame_size must be in [16384, 2^24-1]: {self.max_frame_size}")
        if self.max_header_list_size < 1:
            raise ValueError("max_header_list_size must be positive")
        if not DEFAULT_WINDOW <= self.connection_window <= MAX_WINDOW:
            raise ValueError(f"connection_window must be in [65535, 2^31-1]: {self.connection_window}")
        for name in ("max_continuation_frames", "rapid_reset_per_second", "flood_budget",
                     "flood_credit_per_useful_frame", "flood_refill_per_second", "closed_stream_memory"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


class _Stream:
    __slots__ = (
        "send_window",  # what the peer lets us send
        "recv_window",  # what we still let the peer send
        "unacked",  # consumed by the application, not yet returned by WINDOW_UPDATE
        "delivered",  # handed to the application, not yet acknowledged by it
        "local_closed",
        "remote_closed",
        "content_length",  # -1: none announced
        "received",  # DATA bytes so far, counted only against content-length
        "final_head",  # a final (non-1xx) head has arrived; server side: always
        "answered",  # we sent a head
        "no_body",  # client side: response to HEAD, content-length is not a promise
    )

    def __init__(self, send_window: int, recv_window: int, final_head: bool) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.delivered = 0
        self.local_closed = False
        self.remote_closed = False
        self.content_length = -1
        self.received = 0
        self.final_head = final_head
        self.answered = False
        self.no_body = False


# ---------------------------------------------------------------------------
# Header validation (RFC 9113 8.2, 8.3). Names are classified once and cached.

_K_PLAIN = 0
_K_TE = 1
_K_CONTENT_LENGTH = 2
_K_FORBIDDEN = 3  # connection-specific (8.2.2)
_K_METHOD = 4
_K_SCHEME = 5
_K_PATH = 6
_K_AUTHORITY = 7
_K_PROTOCOL = 8
_K_STATUS = 9
_K_FIRST_PSEUDO = _K_METHOD

_B_METHOD = 1 << _K_METHOD
_B_SCHEME = 1 << _K_SCHEME
_B_PATH = 1 << _K_PATH
_B_AUTHORITY = 1 << _K_AUTHORITY
_B_PROTOCOL = 1 << _K_PROTOCOL

_NAME_KINDS: dict[bytes, int] = {
    b":method": _K_METHOD,
    b":scheme": _K_SCHEME,
    b":path": _K_PATH,
    b":authority": _K_AUTHORITY,
    b":protocol": _K_PROTOCOL,
    b":status": _K_STATUS,
    b"te": _K_TE,
    b"content-length": _K_CONTENT_LENGTH,
    b"connection": _K_FORBIDDEN,
    b"proxy-connection": _K_FORBIDDEN,
    b"keep-alive": _K_FORBIDDEN,
    b"transfer-encoding": _K_FORBIDDEN,
    b"upgrade": _K_FORBIDDEN,
}
_NAME_CACHE_LIMIT = 4096  # distinct valid names remembered process-wide

# Field names: no controls, SP, colon, upper case or non-ASCII (8.2.1).
_bad_name = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]").search
# Field values: no NUL, CR, LF; no leading/trailing SP or HTAB (8.2.1).
_bad_value = re.compile(rb"[\x00\r\n]").search
_WS = (0x20, 0x09)


def _name_kind(name: bytes) -> int:
    if not name or _bad_name(name) is not None:
        if name[:1] == b":":
            raise _Malformed(f"unknown pseudo-header {name[:40]!r}")
        raise _Malformed(f"invalid field name {name[:40]!r}")
    if len(_NAME_KINDS) < _NAME_CACHE_LIMIT:
        _NAME_KINDS[name] = _K_PLAIN
    return _K_PLAIN


def _content_length(value: bytes, previous: int) -> int:
    if not value.isdigit() or len(value) > 18:
        raise _Malformed("invalid content-length")
    n = int(value)
    if previous >= 0 and n != previous:
        raise _Malformed("conflicting content-length values")
    return n


def _check_request(headers: list[tuple[bytes, bytes]], allow_protocol: bool) -> int:
    """Validate a request head; return its content-length or -1. Raises _Malformed."""
    seen = 0
    regular = False
    method = None
    cl = -1
    kinds = _NAME_KINDS
    for name, value in headers:
        if value and (value[0] in _WS or value[-1] in _WS or _bad_value(value) is not None):
            raise _Malformed(f"invalid value for {name[:40]!r}")
        kind = kinds.get(name)
        if kind is None:
            kind = _name_kind(name)
        if kind >= _K_FIRST_PSEUDO:
            if regular:
                raise _Malformed("pseudo-header after a regular field")
            bit = 1 << kind
            if seen & bit:
                raise _Malformed(f"duplicate {name.decode()}")
            seen |= bit
            if kind == _K_METHOD:
                method = value
            elif kind == _K_PATH:
                if not value:
                    raise _Malformed("empty :path")
            elif kind == _K_STATUS:
                raise _Malformed(":status in a request")
            elif kind == _K_PROTOCOL and not allow_protocol:
                raise _Malformed(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
        elif kind:
            regular = True
            if kind == _K_CONTENT_LENGTH:
                cl = _content_length(value, cl)
            elif kind == _K_TE:
                if value != b"trailers":
                    raise _Malformed("te other than trailers")
            else:
                raise _Malformed(f"connection-specific field {name.decode()}")
        else:
            regular = True
    if method is None:
        raise _Malformed("missing :method")
    if method == b"CONNECT":
        if seen & _B_PROTOCOL:
            if seen & (_B_SCHEME | _B_PATH | _B_AUTHORITY) != (_B_SCHEME | _B_PATH | _B_AUTHORITY):
                raise _Malformed("extended CONNECT without :scheme, :path and :authority")
        elif seen & (_B_SCHEME | _B_PATH) or not seen & _B_AUTHORITY:
            raise _Malformed("CONNECT needs :authority and no :scheme or :path")
    else:
        if seen & (_B_SCHEME | _B_PATH) != (_B_SCHEME | _B_PATH):
            raise _Malformed("missing :scheme or :path")
        if seen & _B_PROTOCOL:
            raise _Malformed(":protocol on a method other than CONNECT")
    return cl


# Validation results of recent request blocks, keyed by the encoded block. A hit is only
# used when the decoded list equals the one validated (the same bytes can decode
# differently as the dynamic table moves); comparing lists of the very tuple objects
# the HPACK decoder memoised is a few pointer compares, far cheaper than validating.
_REQUEST_MEMO: tuple[dict[bytes, tuple[list, int]], dict[bytes, tuple[list, int]]] = ({}, {})
_REQUEST_MEMO_ENTRIES = 1024
_REQUEST_MEMO_MAX_BLOCK = 1024


def _check_request_memo(block: bytes, headers: list[tuple[bytes, bytes]], allow_protocol: bool) -> int:
    memo = _REQUEST_MEMO[allow_protocol]
    hit = memo.get(block)
    if hit is not None and hit[0] == headers:
        return hit[1]
    cl = _check_request(headers, allow_protocol)
    if len(block) <= _REQUEST_MEMO_MAX_BLOCK:
        if len(memo) >= _REQUEST_MEMO_ENTRIES:
            memo.clear()
        memo[block] = (headers[:], cl)
    return cl


def _check_fields(headers: list[tuple[bytes, bytes]], want_status: bool) -> tuple[int, int]:
    """Validate a response head (want_status) or trailers; return (status or 0, content-length)."""
    status = 0
    regular = False
    cl = -1
    kinds = _NAME_KINDS
    for name, value in headers:
        if value and (value[0] in _WS or value[-1] in _WS or _bad_value(value) is not None):
            raise _Malformed(f"invalid value for {name[:40]!r}")
        kind = kinds.get(name)
        if kind is None:
            kind = _name_kind(name)
        if kind >= _K_FIRST_PSEUDO:
            if kind != _K_STATUS or not want_status:
                raise _Malformed(f"pseudo-header {name.decode()} not allowed here")
            if regular:
                raise _Malformed("pseudo-header after a regular field")
            if status:
                raise _Malformed("duplicate :status")
            if len(value) != 3 or not value.isdigit() or value[0] == 0x30:
                raise _Malformed("invalid :status")
            status = int(value)
        else:
            regular = True
            if kind == _K_CONTENT_LENGTH:
                cl = _content_length(value, cl)
            elif kind == _K_TE:
                if value != b"trailers":
                    raise _Malformed("te other than trailers")
            elif kind == _K_FORBIDDEN:
                raise _Malformed(f"connection-specific field {name.decode()}")
    if want_status and not status:
        raise _Malformed("missing :status")
    return status, cl


# The same memo for response heads (want_status) and trailers: a backend repeats the
# same block bytes too (and a malformed block is never memoised: it raises first).
_FIELDS_MEMO: tuple[dict[bytes, tuple[list, tuple[int, int]]], dict[bytes, tuple[list, tuple[int, int]]]] = ({}, {})


def _check_fields_memo(block: bytes, headers: list[tuple[bytes, bytes]], want_status: bool) -> tuple[int, int]:
    memo = _FIELDS_MEMO[want_status]
    hit = memo.get(block)
    if hit is not None and hit[0] == headers:
        return hit[1]
    result = _check_fields(headers, want_status)
    if len(block) <= _REQUEST_MEMO_MAX_BLOCK:
        if len(memo) >= _REQUEST_MEMO_ENTRIES:
            memo.clear()
        memo[block] = (headers[:], result)
    return result


# ---------------------------------------------------------------------------


class H2Connection:
    """One HTTP/2 connection; see the module docstring and the handler protocol below.

    Handler callbacks (called synchronously from `receive`): on_headers, on_trailers,
    on_data, on_reset, on_window_open, on_goaway, on_connection_error,
    on_headers_too_large; optional: on_settings(peer_max_concurrent_streams),
    on_ping_ack(opaque).
    """

    __slots__ = (
        "client",
        "clock",
        "goaway_received",
        "peer_max_concurrent_streams",
        "peer_max_header_list_size",
        "peer_enable_connect_protocol",
        "stats_rapid_resets",
        "stats_floods",
        "stats_refused_streams",
        "stats_malformed",
        "stats_headers_too_large",
        "_settings",
        "_dispatch",
        "_inbuf",
        "_need",
        "_out",
        "_dead",
        "_preface_left",
        "_streams",
        "_gone",
        "_gone_order",
        "_gone_cap",
        "_blocked",
        "_last_sid",
        "_next_sid",
        "_goaway_sent",
        "_goaway_last",
        "_streams_opened",
        "_max_recv_frame",
        "_max_streams",
        "_allow_protocol",
        "_initial_window",
        "_stream_wu_threshold",
        "_conn_recv_window",
        "_conn_unacked",
        "_conn_wu_threshold",
        "_conn_send_window",
        "_peer_initial_window",
        "_peer_max_frame",
        "_settings_unacked",
        "_pings_unacked",
        "_decoder",
        "_encoder",
        "_hb_sid",
        "_hb_flags",
        "_hb_parts",
        "_hb_size",
        "_hb_frames",
        "_hb_limit",
        "_max_continuations",
        "_flood_count",
        "_flood_allow",
        "_flood_time",
        "_flood_credit",
        "_flood_budget",
        "_flood_rate",
        "_rr_tokens",
        "_rr_time",
        "_rr_rate",
        "_cb_headers",
        "_cb_trailers",
        "_cb_data",
        "_cb_reset",
        "_cb_window_open",
        "_cb_goaway",
        "_cb_connection_error",
        "_cb_headers_too_large",
        "_cb_settings",
        "_cb_ping_ack",
    )

    def __init__(self, handler: Any, *, client: bool, settings: H2Settings | None = None) -> None:
        s = settings if settings is not None else H2Settings()
        self.client = client
        self.clock = time.monotonic  # replaceable for tests of the time-based limits
        self.goaway_received = False
        self.peer_max_concurrent_streams = 100  # RFC says unlimited until SETTINGS; be conservative
        self.peer_max_header_list_size = 1 << 31
        self.peer_enable_connect_protocol = False
        self.stats_rapid_resets = 0
        self.stats_floods = 0
        self.stats_refused_streams = 0
        self.stats_malformed = 0
        self.stats_headers_too_large = 0
        self._settings = s
        self._dispatch = _T_FIRST
        self._inbuf = bytearray()
        self._need = 9
        self._out: list[bytes | memoryview] = []
        self._dead = False
        self._preface_left = 0 if client else _PREFACE_LEN
        self._streams: dict[int, _Stream] = {}
        self._gone: dict[int, int] = {}
        self._gone_order: deque[int] = deque()
        self._gone_cap = max(1, s.closed_stream_memory)
        self._blocked: set[int] = set()
        self._last_sid = 0  # highest client-initiated (odd) stream id opened, either role
        self._next_sid = 1
        self._goaway_sent = False
        self._goaway_last = MAX_WINDOW
        self._streams_opened = 0
        self._max_recv_frame = s.max_frame_size
        self._max_streams = s.max_concurrent_streams
        self._allow_protocol = bool(s.enable_connect_protocol) and not client
        self._initial_window = s.initial_window_size
        self._stream_wu_threshold = s.initial_window_size // 2
        self._conn_recv_window = DEFAULT_WINDOW
        self._conn_unacked = 0
        self._conn_wu_threshold = s.connection_window // 2
        self._conn_send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._settings_unacked = 0
        self._pings_unacked = 0
        # Until the peer acknowledges our SETTINGS its encoder may use the default size.
        self._decoder = Decoder(_HPACK_DEFAULT_TABLE, s.max_header_list_size)
        self._decoder.max_allowed_table_size = max(_HPACK_DEFAULT_TABLE, s.header_table_size)
        self._encoder = Encoder()
        self._hb_sid = 0
        self._hb_flags = 0
        self._hb_parts: list[bytes] = []
        self._hb_size = 0
        self._hb_frames = 0
        self._hb_limit = 2 * s.max_header_list_size
        self._max_continuations = s.max_continuation_frames
        self._flood_count = 0
        self._flood_allow = s.flood_budget
        self._flood_time = self.clock()
        self._flood_credit = s.flood_credit_per_useful_frame
        self._flood_budget = s.flood_budget
        self._flood_rate = s.flood_refill_per_second
        self._rr_rate = s.rapid_reset_per_second
        self._rr_tokens = float(s.rapid_reset_per_second)
        self._rr_time = self._flood_time
        self._cb_headers = handler.on_headers
        self._cb_trailers = handler.on_trailers
        self._cb_data = handler.on_data
        self._cb_reset = handler.on_reset
        self._cb_window_open = handler.on_window_open
        self._cb_goaway = handler.on_goaway
        self._cb_connection_error = handler.on_connection_error
        self._cb_headers_too_large = getattr(handler, "on_headers_too_large", None)
        self._cb_settings = getattr(handler, "on_settings", None)
        self._cb_ping_ack = getattr(handler, "on_ping_ack", None)

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """Connection error, or GOAWAY sent/received and no stream left."""
        return self._dead or ((self._goaway_sent or self.goaway_received) and not self._streams)

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    def stream_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        if stream_id == 0:
            return self._conn_send_window
        st = self._streams.get(stream_id)
        if st is None:
            return 0
        return min(st.send_window, self._conn_send_window)

    # ------------------------------------------------------------------ output

    def initiate(self) -> None:
        """Queue the connection preface (client), our SETTINGS and the connection window raise."""
        s = self._settings
        pairs = []
        if s.header_table_size != _HPACK_DEFAULT_TABLE:
            pairs.append((SETTINGS_HEADER_TABLE_SIZE, s.header_table_size))
        if self.client:
            pairs.append((SETTINGS_ENABLE_PUSH, 0))
        pairs.append((SETTINGS_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams))
        if s.initial_window_size != DEFAULT_WINDOW:
            pairs.append((SETTINGS_INITIAL_WINDOW_SIZE, s.initial_window_size))
        if s.max_frame_size != DEFAULT_MAX_FRAME_SIZE:
            pairs.append((SETTINGS_MAX_FRAME_SIZE, s.max_frame_size))
        pairs.append((SETTINGS_MAX_HEADER_LIST_SIZE, s.max_header_list_size))
        if self._allow_protocol:
            pairs.append((SETTINGS_ENABLE_CONNECT_PROTOCOL, 1))
        out = self._out
        if self.client:
            out.append(PREFACE)
        out.append(settings(pairs))
        self._settings_unacked += 1
        raise_by = s.connection_window - self._conn_recv_window
        if raise_by > 0:
            out.append(window_update(0, raise_by))
            self._conn_recv_window += raise_by

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        if len(out) == 1:
            data = out[0]
            out.clear()
            return data if type(data) is bytes else bytes(data)
        data = b"".join(out)
        out.clear()
        return data

    def new_stream_id(self) -> int:
        """Client role: the next odd stream id (opened by the send_headers that uses it)."""
        if not self.client:
            raise ValueError("only the client role opens streams")
        if self._dead or self.goaway_received or self._goaway_sent:
            raise StreamClosedError("the connection is going away")
        sid = self._next_sid
        if sid > MAX_WINDOW:
            raise StreamClosedError("stream ids exhausted")
        self._next_sid = sid + 2
        return sid

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        if self._dead:
            return
        st = self._streams.get(stream_id)
        if st is None:
            st = self._open_local_stream(stream_id, headers)
        elif st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed for sending")
        block = self._encoder.encode(headers)
        n = len(block)
        out = self._out
        if n <= self._peer_max_frame:
            out.append(_pack_header(n >> 16, n & 0xFFFF, HEADERS,
                                    FLAG_END_HEADERS | FLAG_END_STREAM if end_stream else FLAG_END_HEADERS,
                                    stream_id))
            out.append(block)
        else:
            self._split_headers(stream_id, block, end_stream)
        st.answered = True
        self._flood_allow += self._flood_credit
        if end_stream:
            st.local_closed = True
            if st.remote_closed:
                self._close(stream_id, st, _GONE_ENDED)

    def send_trailers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.send_headers(stream_id, headers, True)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False) -> int:
        """Send what the windows allow; return the byte count (see module docstring).

        Bytes are referenced, not copied, until data_to_send(): do not mutate a
        bytearray/memoryview passed here before then.
        """
        if self._dead:
            return 0
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed for sending")
        n = len(data)
        avail = st.send_window
        cw = self._conn_send_window
        if cw < avail:
            avail = cw
        if n <= avail and n <= self._peer_max_frame:
            if n:
                self._out.append(_pack_header(n >> 16, n & 0xFFFF, DATA,
                                              FLAG_END_STREAM if end_stream else 0, stream_id))
                self._out.append(data)
                st.send_window -= n
                self._conn_send_window = cw - n
            elif end_stream:
                self._out.append(_pack_header(0, 0, DATA, FLAG_END_STREAM, stream_id))
            else:
                return 0
            self._flood_allow += self._flood_credit
            if end_stream:
                st.local_closed = True
                if st.remote_closed:
                    self._close(stream_id, st, _GONE_ENDED)
            return n
        if not n:  # an empty END_STREAM needs no window
            if end_stream:
                self._out.append(_pack_header(0, 0, DATA, FLAG_END_STREAM, stream_id))
                st.local_closed = True
                if st.remote_closed:
                    self._close(stream_id, st, _GONE_ENDED)
            return 0
        if avail <= 0:
            self._blocked.add(stream_id)
            return 0
        take = n if n <= avail else avail
        mv = data if type(data) is memoryview else memoryview(data)
        out = self._out
        maxf = self._peer_max_frame
        pos = 0
        frames = 0
        while pos < take:
            chunk = take - pos
            if chunk > maxf:
                chunk = maxf
            last = pos + chunk == n
            out.append(_pack_header(chunk >> 16, chunk & 0xFFFF, DATA,
                                    FLAG_END_STREAM if last and end_stream else 0, stream_id))
            out.append(mv[pos:pos + chunk])
            pos += chunk
            frames += 1
        st.send_window -= take
        self._conn_send_window -= take
        self._flood_allow += self._flood_credit * frames
        if take < n:
            self._blocked.add(stream_id)
        elif end_stream:
            st.local_closed = True
            if st.remote_closed:
                self._close(stream_id, st, _GONE_ENDED)
        return take

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM an open stream; a stream already closed is left alone (RFC 9113 5.1)."""
        if self._dead:
            return
        st = self._streams.get(stream_id)
        if st is None:
            return
        self._out.append(rst_stream(stream_id, error_code))
        self._close(stream_id, st, _GONE_RESET_BY_US)

    def ack_data(self, stream_id: int, n: int) -> None:
        """The application consumed n flow-controlled bytes of the stream (see module docstring)."""
        if n <= 0 or self._dead:
            return
        st = self._streams.get(stream_id)
        if st is None:
            return  # its unacknowledged bytes were credited when it closed
        if n > st.delivered:
            n = st.delivered
            if not n:
                return
        st.delivered -= n
        u = self._conn_unacked + n
        if u >= self._conn_wu_threshold:
            self._out.append(window_update(0, u))
            self._conn_recv_window += u
            u = 0
        self._conn_unacked = u
        if not st.remote_closed:
            u = st.unacked + n
            if u >= self._stream_wu_threshold:
                self._out.append(window_update(stream_id, u))
                st.recv_window += u
                u = 0
            st.unacked = u

    def send_goaway(self, error_code: int = NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY naming the highest peer stream we processed; later peer streams are ignored."""
        if self._dead:
            return
        last = 0 if self.client else min(self._last_sid, self._goaway_last)
        self._out.append(goaway(last, error_code, debug))
        self._goaway_sent = True
        self._goaway_last = last

    def send_ping(self, opaque: bytes = b"\0" * 8) -> None:
        if len(opaque) != 8:
            raise ValueError("PING payload must be 8 bytes")
        if self._dead:
            return
        self._out.append(ping(bytes(opaque)))
        self._pings_unacked += 1

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes) -> None:
        """Process all complete frames in data (plus what earlier calls left incomplete)."""
        if self._dead:
            return
        if type(data) is not bytes:
            data = bytes(data)
        try:
            if self._preface_left:
                data = self._take_preface(data)
                if not data:
                    return
            buf = self._inbuf
            if buf:
                buf += data
                if len(buf) < self._need:
                    return
                data = bytes(buf)
                buf.clear()
            pos = 0
            end = len(data)
            maxf = self._max_recv_frame
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _unpack_header(data, pos)
                length = (hi << 16) | lo
                if length > maxf:
                    raise _ConnError(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
                start = pos + 9
                nxt = start + length
                if nxt > end:
                    self._need = 9 + length
                    break
                pos = nxt
                self._dispatch[ftype](self, flags, sid & 0x7FFFFFFF, data[start:nxt])
            else:
                self._need = 9
            if pos < end:
                self._inbuf += memoryview(data)[pos:]
        except _ConnError as e:
            self._fail(e.code, e.reason)

    def _take_preface(self, data: bytes) -> bytes:
        done = _PREFACE_LEN - self._preface_left
        n = min(self._preface_left, len(data))
        if data[:n] != PREFACE[done:done + n]:
            raise _ConnError(PROTOCOL_ERROR, "invalid connection preface")
        self._preface_left -= n
        return data[n:]

    def _fail(self, code: int, reason: str) -> None:
        self._dead = True
        self._inbuf.clear()
        last = 0 if self.client else min(self._last_sid, self._goaway_last)
        self._out.append(goaway(last, code, reason.encode()[:200]))
        self._cb_connection_error(code, reason)

    # --- bookkeeping

    def _close(self, sid: int, st: _Stream, how: int) -> None:
        del self._streams[sid]
        order = self._gone_order
        if len(order) >= self._gone_cap:
            self._gone.pop(order.popleft(), None)
        order.append(sid)
        self._gone[sid] = how
        if st.delivered:
            self._credit(st.delivered)
        if self._blocked:
            self._blocked.discard(sid)

    def _credit(self, n: int) -> None:
        """Return n connection-window bytes the application will never acknowledge."""
        u = self._conn_unacked + n
        if u >= self._conn_wu_threshold:
            self._out.append(window_update(0, u))
            self._conn_recv_window += u
            u = 0
        self._conn_unacked = u

    def _stream_error(self, sid: int, st: _Stream | None, code: int) -> None:
        self._out.append(rst_stream(sid, code))
        if st is not None:
            self._close(sid, st, _GONE_RESET_BY_US)
            # Streams in the table are the ones the handler knows about.
            self._cb_reset(sid, code, False)
        else:
            self._remember(sid, _GONE_RESET_BY_US)

    def _remember(self, sid: int, how: int) -> None:
        order = self._gone_order
        if len(order) >= self._gone_cap:
            self._gone.pop(order.popleft(), None)
        order.append(sid)
        self._gone[sid] = how

    def _idle(self, sid: int) -> bool:
        # Even streams would be server-pushed: never opened in either role.
        return not sid & 1 or sid > self._last_sid

    def _waste(self) -> None:
        """Account one frame that did no useful work (flood protection)."""
        self._flood_count += 1
        if self._flood_count > self._flood_allow:
            now = self.clock()
            grant = int((now - self._flood_time) * self._flood_rate)
            self._flood_time = now
            self._flood_allow += grant if grant < self._flood_budget else self._flood_budget
            if self._flood_count > self._flood_allow:
                self.stats_floods += 1
                raise _ConnError(ENHANCE_YOUR_CALM, "flood of frames that do no work")

    def _open_local_stream(self, sid: int, headers: list[tuple[bytes, bytes]]) -> _Stream:
        if not self.client:
            raise StreamClosedError(f"stream {sid} is not open")
        if self.goaway_received or self._goaway_sent:
            raise StreamClosedError("the connection is going away")
        if not sid & 1 or sid <= self._last_sid:
            if sid in self._gone:
                raise StreamClosedError(f"stream {sid} is closed")
            raise ValueError(f"stream id {sid}: new streams need odd, increasing ids")
        self._last_sid = sid
        if sid >= self._next_sid:
            self._next_sid = sid + 2
        st = _Stream(self._peer_initial_window, self._initial_window, False)
        for name, value in headers:
            if name == b":method":
                st.no_body = value == b"HEAD"
                break
        self._streams[sid] = st
        return st

    def _split_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        out = self._out
        maxf = self._peer_max_frame
        n = len(block)
        out.append(_pack_header(maxf >> 16, maxf & 0xFFFF, HEADERS, FLAG_END_STREAM if end_stream else 0, sid))
        out.append(block[:maxf])
        pos = maxf
        while pos < n:
            chunk = min(maxf, n - pos)
            flags = FLAG_END_HEADERS if pos + chunk == n else 0
            out.append(_pack_header(chunk >> 16, chunk & 0xFFFF, CONTINUATION, flags, sid))
            out.append(block[pos:pos + chunk])
            pos += chunk

    # --- frame handlers: (self, flags, stream id, payload); the tables are below the class

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        length = len(payload)
        st = self._streams.get(sid)
        if st is None:
            self._data_without_stream(sid, length)
            return
        cw = self._conn_recv_window - length
        if cw < 0:
            raise _ConnError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._conn_recv_window = cw
        if flags & FLAG_PADDED:
            if not length or payload[0] >= length:
                raise _ConnError(PROTOCOL_ERROR, "DATA padding longer than the frame")
            data = payload[1:length - payload[0]]
        else:
            data = payload
        if st.remote_closed:
            self._credit(length)
            self._stream_error(sid, st, STREAM_CLOSED)
            return
        rw = st.recv_window - length
        if rw < 0:
            self._credit(length)
            self._stream_error(sid, st, FLOW_CONTROL_ERROR)
            return
        st.recv_window = rw
        if not st.final_head:
            self._credit(length)
            self.stats_malformed += 1
            self._stream_error(sid, st, PROTOCOL_ERROR)
            return
        n = len(data)
        end = flags & FLAG_END_STREAM
        if st.content_length >= 0:
            got = st.received + n
            if got > st.content_length or (end and got != st.content_length and not st.no_body):
                self._credit(length)
                self.stats_malformed += 1
                self._stream_error(sid, st, PROTOCOL_ERROR)
                return
            st.received = got
        if n:
            self._flood_allow += self._flood_credit
        elif not end:
            self._waste()
        st.delivered += length
        if end:
            st.remote_closed = True
            self._cb_data(sid, data, True, length)
            if st.local_closed and self._streams.get(sid) is st:
                self._close(sid, st, _GONE_ENDED)
        else:
            self._cb_data(sid, data, False, length)

    def _data_without_stream(self, sid: int, length: int) -> None:
        if sid == 0:
            raise _ConnError(PROTOCOL_ERROR, "DATA on stream 0")
        if self._idle(sid):
            raise _ConnError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
        cw = self._conn_recv_window - length
        if cw < 0:
            raise _ConnError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._conn_recv_window = cw
        self._credit(length)
        self._waste()
        how = self._gone.get(sid)
        if how == _GONE_RESET_BY_US:
            return
        if how == _GONE_ENDED:
            raise _ConnError(STREAM_CLOSED, f"DATA on stream {sid} after END_STREAM")
        self._out.append(rst_stream(sid, STREAM_CLOSED))

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & (FLAG_PADDED | FLAG_PRIORITY):
            start = 0
            end = len(payload)
            if flags & FLAG_PADDED:
                if not end:
                    raise _ConnError(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
                start = 1
                end -= payload[0]
            if flags & FLAG_PRIORITY:
                if end - start < 5:
                    raise _ConnError(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
                if int.from_bytes(payload[start:start + 4], "big") & 0x7FFFFFFF == sid:
                    flags |= _SELF_DEPENDENCY
                start += 5
            if end < start:
                raise _ConnError(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
            payload = payload[start:end]
        if flags & FLAG_END_HEADERS:
            self._header_block(sid, flags, payload)
            return
        if len(payload) > self._hb_limit:
            self.stats_floods += 1
            raise _ConnError(ENHANCE_YOUR_CALM, "header block too large")
        self._hb_sid = sid
        self._hb_flags = flags
        self._hb_parts = [payload]
        self._hb_size = len(payload)
        self._hb_frames = 0
        self._dispatch = _T_CONTINUATION

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != self._hb_sid:
            raise _ConnError(PROTOCOL_ERROR, "CONTINUATION on another stream inside a header block")
        self._hb_frames += 1
        self._hb_size += len(payload)
        if self._hb_frames > self._max_continuations or self._hb_size > self._hb_limit:
            self.stats_floods += 1
            raise _ConnError(ENHANCE_YOUR_CALM, "header block too large or in too many CONTINUATION frames")
        parts = self._hb_parts
        parts.append(payload)
        if flags & FLAG_END_HEADERS:
            self._dispatch = _T_OPEN
            self._hb_parts = []
            self._hb_sid = 0
            self._header_block(sid, self._hb_flags, b"".join(parts))

    def _on_interleaved(self, flags: int, sid: int, payload: bytes) -> None:
        raise _ConnError(PROTOCOL_ERROR, "frame other than CONTINUATION inside a header block")

    def _on_stray_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        raise _ConnError(PROTOCOL_ERROR, "CONTINUATION without a header block")

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        # Decode first, whatever happens to the stream: the HPACK table must stay in sync.
        headers: list[tuple[bytes, bytes]] | None
        try:
            headers = self._decoder.decode(block)
        except HeaderListTooLarge:
            headers = None
        except HpackError as e:
            raise _ConnError(COMPRESSION_ERROR, f"header block: {e}") from None
        st = self._streams.get(sid)
        if st is None:
            if self.client:
                self._headers_without_stream(sid)
            else:
                self._open_peer_stream(sid, flags, headers, block)
            return
        end = flags & FLAG_END_STREAM
        if st.remote_closed:
            self._stream_error(sid, st, STREAM_CLOSED)
            return
        if flags & _SELF_DEPENDENCY:
            self._stream_error(sid, st, PROTOCOL_ERROR)
            return
        if headers is None:
            self.stats_headers_too_large += 1
            self._stream_error(sid, st, ENHANCE_YOUR_CALM)
            return
        if not st.final_head:  # client: a response head
            try:
                status, cl = _check_fields_memo(block, headers, True)
                if status < 200:
                    if end or status == 101:
                        raise _Malformed("informational response with END_STREAM, or 101")
                elif end and cl > 0 and not st.no_body and status != 304:
                    raise _Malformed("content-length with no DATA")
            except _Malformed:
                self.stats_malformed += 1
                self._stream_error(sid, st, PROTOCOL_ERROR)
                return
            if status < 200:
                self._cb_headers(sid, headers, False)
                return
            st.final_head = True
            if not st.no_body and status != 304 and status != 204:
                st.content_length = cl
            if end:
                st.remote_closed = True
                self._cb_headers(sid, headers, True)
                if st.local_closed and self._streams.get(sid) is st:
                    self._close(sid, st, _GONE_ENDED)
            else:
                self._cb_headers(sid, headers, False)
            return
        # trailers
        try:
            if not end:
                raise _Malformed("second HEADERS without END_STREAM")
            _check_fields_memo(block, headers, False)
            if st.content_length >= 0 and st.received != st.content_length and not st.no_body:
                raise _Malformed("content-length does not match the DATA")
        except _Malformed:
            self.stats_malformed += 1
            self._stream_error(sid, st, PROTOCOL_ERROR)
            return
        st.remote_closed = True
        self._cb_trailers(sid, headers)
        if st.local_closed and self._streams.get(sid) is st:
            self._close(sid, st, _GONE_ENDED)

    def _headers_without_stream(self, sid: int) -> None:
        """Client role: HEADERS on a stream that is not open."""
        if self._idle(sid):
            raise _ConnError(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which we never opened")
        how = self._gone.get(sid)
        if how == _GONE_RESET_BY_US:
            return
        if how == _GONE_RESET_BY_PEER:
            self._out.append(rst_stream(sid, STREAM_CLOSED))
            return
        raise _ConnError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")

    def _open_peer_stream(self, sid: int, flags: int, headers: list[tuple[bytes, bytes]] | None,
                          block: bytes) -> None:
        """Server role: HEADERS opening a new request stream."""
        if not sid & 1:
            raise _ConnError(PROTOCOL_ERROR, f"client opened even stream {sid}")
        if sid <= self._last_sid:
            how = self._gone.get(sid)
            if how == _GONE_RESET_BY_US:
                return
            if how == _GONE_RESET_BY_PEER:
                self._out.append(rst_stream(sid, STREAM_CLOSED))
                return
            if how == _GONE_ENDED:
                raise _ConnError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            raise _ConnError(PROTOCOL_ERROR, f"stream {sid} is not above the last stream {self._last_sid}")
        self._last_sid = sid
        if sid > self._goaway_last:
            self._remember(sid, _GONE_RESET_BY_US)  # after our GOAWAY: ignored, as announced
            return
        if flags & _SELF_DEPENDENCY:
            self._stream_error(sid, None, PROTOCOL_ERROR)
            return
        if len(self._streams) >= self._max_streams:
            self.stats_refused_streams += 1
            self._stream_error(sid, None, REFUSED_STREAM)
            return
        end = flags & FLAG_END_STREAM
        if headers is None:
            self.stats_headers_too_large += 1
            if self._cb_headers_too_large is None:
                self._stream_error(sid, None, REFUSED_STREAM)
                return
            st = _Stream(self._peer_initial_window, self._initial_window, True)
            st.remote_closed = bool(end)
            self._streams[sid] = st
            self._streams_opened += 1
            self._cb_headers_too_large(sid)
            return
        try:
            cl = _check_request_memo(block, headers, self._allow_protocol)
            if end and cl > 0:
                raise _Malformed("content-length with no DATA")
        except _Malformed:
            self.stats_malformed += 1
            self._stream_error(sid, None, PROTOCOL_ERROR)
            return
        st = _Stream(self._peer_initial_window, self._initial_window, True)
        st.content_length = cl
        self._streams[sid] = st
        self._streams_opened += 1
        self._flood_allow += self._flood_credit
        if end:
            st.remote_closed = True
            self._cb_headers(sid, headers, True)
        else:
            self._cb_headers(sid, headers, False)

    def _on_priority(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._waste()
        if len(payload) != 5:
            self._priority_error(sid, FRAME_SIZE_ERROR)
        elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
            self._priority_error(sid, PROTOCOL_ERROR)

    def _priority_error(self, sid: int, code: int) -> None:
        st = self._streams.get(sid)
        if st is not None:
            self._stream_error(sid, st, code)
        elif self._gone.get(sid) is None:
            self._out.append(rst_stream(sid, code))

    def _on_rst_stream(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if sid == 0:
            raise _ConnError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        st = self._streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _ConnError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            self._waste()
            return
        code = int.from_bytes(payload, "big")
        self._close(sid, st, _GONE_RESET_BY_PEER)
        self._cb_reset(sid, code, True)
        if not st.answered and not self.client:
            self.stats_rapid_resets += 1
            now = self.clock()
            tokens = self._rr_tokens + (now - self._rr_time) * self._rr_rate
            if tokens > self._rr_rate:
                tokens = self._rr_rate
            self._rr_time = now
            self._rr_tokens = tokens - 1
            if tokens < 1 and self.stats_rapid_resets * 2 > self._streams_opened:
                self.stats_floods += 1
                raise _ConnError(ENHANCE_YOUR_CALM, "rapid reset")

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ConnError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
                if not self._settings_unacked:
                    self._decoder.max_allowed_table_size = self._settings.header_table_size
            else:
                self._waste()
            return
        if len(payload) % 6:
            raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        self._waste()
        window_delta = 0
        for ident, value in parse_settings(payload):
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                window_delta += value - self._peer_initial_window
                self._peer_initial_window = value
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._peer_max_frame = value
            elif ident == SETTINGS_HEADER_TABLE_SIZE:
                self._encoder.set_max_table_size(value)
            elif ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
            elif ident == SETTINGS_ENABLE_PUSH:
                if value > 1 or (value == 1 and self.client):
                    raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif ident == SETTINGS_MAX_HEADER_LIST_SIZE:
                self.peer_max_header_list_size = value
            elif ident == SETTINGS_ENABLE_CONNECT_PROTOCOL:
                if value > 1 or (value == 0 and self.peer_enable_connect_protocol):
                    raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_CONNECT_PROTOCOL {value}")
                self.peer_enable_connect_protocol = value == 1
        if window_delta:
            for st in self._streams.values():
                w = st.send_window + window_delta
                if w > MAX_WINDOW:
                    raise _ConnError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window")
                st.send_window = w
        self._out.append(SETTINGS_ACK)
        if self._cb_settings is not None:
            self._cb_settings(self.peer_max_concurrent_streams)
        if window_delta > 0 and self._blocked and self._conn_send_window > 0:
            self._blocked.clear()
            self._cb_window_open(0)

    def _on_first_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if flags & FLAG_ACK:
            self._on_first_other(flags, sid, payload)
        self._dispatch = _T_OPEN
        self._on_settings(flags, sid, payload)

    def _on_first_other(self, flags: int, sid: int, payload: bytes) -> None:
        raise _ConnError(PROTOCOL_ERROR, "the peer's first frame is not SETTINGS")

    def _on_push_promise(self, flags: int, sid: int, payload: bytes) -> None:
        raise _ConnError(PROTOCOL_ERROR, "PUSH_PROMISE received (push is disabled)")

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 8:
            raise _ConnError(FRAME_SIZE_ERROR, "PING length is not 8")
        if sid:
            raise _ConnError(PROTOCOL_ERROR, "PING on a stream")
        if flags & FLAG_ACK:
            if self._pings_unacked:
                self._pings_unacked -= 1
                if self._cb_ping_ack is not None:
                    self._cb_ping_ack(payload)
            else:
                self._waste()
            return
        self._waste()
        self._out.append(ping(payload, True))

    def _on_goaway(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ConnError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnError(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaway_received = True
        self._cb_goaway(last, code, payload[8:])
        if self.client:
            # Streams above last_stream_id were never processed: safe to retry elsewhere.
            for s in [s for s in self._streams if s > last]:
                st = self._streams.get(s)
                if st is not None:
                    self._close(s, st, _GONE_RESET_BY_PEER)
                    self._cb_reset(s, REFUSED_STREAM, True)

    def _on_window_update(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        self._waste()
        if sid == 0:
            if not inc:
                raise _ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            w = self._conn_send_window + inc
            if w > MAX_WINDOW:
                raise _ConnError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._conn_send_window = w
            if self._blocked and w > 0:
                self._blocked.clear()
                self._cb_window_open(0)
            return
        st = self._streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _ConnError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            if self._gone.get(sid) == _GONE_RESET_BY_PEER:
                self._out.append(rst_stream(sid, STREAM_CLOSED))
            return
        if not inc:
            self._stream_error(sid, st, PROTOCOL_ERROR)
            return
        w = st.send_window + inc
        if w > MAX_WINDOW:
            self._stream_error(sid, st, FLOW_CONTROL_ERROR)
            return
        st.send_window = w
        if w > 0 and self._conn_send_window > 0 and sid in self._blocked:
            self._blocked.discard(sid)
            self._cb_window_open(sid)

    def _on_unknown(self, flags: int, sid: int, payload: bytes) -> None:
        self._waste()  # extension frames are ignored (RFC 9113 5.5) but not for free


def _table(default: Any, by_type: dict[int, Any]) -> list[Any]:
    """A dispatch table covering every possible frame type byte."""
    table = [default] * 256
    for ftype, fn in by_type.items():
        table[ftype] = fn
    return table


_C = H2Connection
_T_OPEN = _table(_C._on_unknown, {
    DATA: _C._on_data,
    HEADERS: _C._on_headers,
    PRIORITY: _C._on_priority,
    RST_STREAM: _C._on_rst_stream,
    SETTINGS: _C._on_settings,
    PUSH_PROMISE: _C._on_push_promise,
    PING: _C._on_ping,
    GOAWAY: _C._on_goaway,
    WINDOW_UPDATE: _C._on_window_update,
    CONTINUATION: _C._on_stray_continuation,
})
# Inside a header block only CONTINUATION is legal (RFC 9113 6.2, 6.10).
_T_CONTINUATION = _table(_C._on_interleaved, {CONTINUATION: _C._on_continuation})
# The peer's connection preface must start with SETTINGS (RFC 9113 3.4).
_T_FIRST = _table(_C._on_first_other, {SETTINGS: _C._on_first_settings})
del _C
