"""Hostile peers: hand-built frames against gateway.h2.connection.

Every reaction is read back from the bytes we queued (parsed with hyperframe): the
GOAWAY or RST_STREAM error code RFC 9113 asks for, and what the handler heard.
"""

from __future__ import annotations

import hpack
import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame
from test_h2_connection import POST, REQUEST, Recorder, parse_frames

from gateway.h2 import frames as h2f
from gateway.h2.connection import H2Connection, H2Settings

END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def raw(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def setting(ident: int, value: int) -> bytes:
    return ident.to_bytes(2, "big") + value.to_bytes(4, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """Plays the other end with raw frames; `conn` is ours."""

    def __init__(self, settings: H2Settings | None = None, *, client: bool = False, clock: FakeClock | None = None):
        self.rec = Recorder()
        self.conn = H2Connection(self.rec, client=client, settings=settings or H2Settings())
        if clock is not None:
            self.conn.clock = clock
            self.conn._flood_time = self.conn._rr_time = clock.now
        self.conn.initiate()
        self.conn.data_to_send()
        self.enc = hpack.Encoder()
        self.conn.receive((b"" if client else h2f.PREFACE) + raw(4, 0, 0))
        assert [type(f) for f in parse_frames(self.conn.data_to_send())] == [SettingsFrame]
        self.rec.events.clear()

    def send(self, *frames: bytes) -> list:
        self.conn.receive(b"".join(frames))
        return parse_frames(self.conn.data_to_send())

    def block(self, headers) -> bytes:
        return self.enc.encode(headers)

    def headers(self, sid: int, headers, end: bool = True, flags: int = 0) -> bytes:
        return raw(1, END_HEADERS | (END_STREAM if end else 0) | flags, sid, self.block(headers))


def goaway(frames) -> int:
    gs = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(gs) == 1, frames
    return gs[0].error_code


def rsts(frames) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]


def assert_connection_error(p: Peer, frames, code: int) -> None:
    assert goaway(frames) == code
    assert [e[1] for e in p.rec.of("connection_error")] == [code]
    assert p.conn.closed
    # Nothing is processed after the error.
    assert p.send(raw(6, 0, 0, b"8 bytes!")) == []


# ---------------------------------------------------------------- preface and first frame


def test_invalid_preface():
    rec = Recorder()
    conn = H2Connection(rec, client=False, settings=H2Settings())
    conn.initiate()
    conn.data_to_send()
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert goaway(parse_frames(conn.data_to_send())) == h2f.PROTOCOL_ERROR
    assert rec.of("connection_error")[0][1] == h2f.PROTOCOL_ERROR


def test_preface_split_across_reads_then_settings():
    rec = Recorder()
    conn = H2Connection(rec, client=False, settings=H2Settings())
    data = h2f.PREFACE + raw(4, 0, 0) + raw(6, 0, 0, b"abcdefgh")
    for i in range(0, len(data), 5):
        conn.receive(data[i:i + 5])
    frames = parse_frames(conn.data_to_send())
    assert [type(f) for f in frames] == [SettingsFrame, PingFrame]
    assert "ACK" in frames[0].flags and frames[1].opaque_data == b"abcdefgh"


@pytest.mark.parametrize("first", [raw(6, 0, 0, b"12345678"), raw(4, ACK, 0), raw(8, 0, 0, u32(1))])
def test_first_frame_must_be_settings(first):
    rec = Recorder()
    conn = H2Connection(rec, client=False, settings=H2Settings())
    conn.receive(h2f.PREFACE + first)
    assert goaway(parse_frames(conn.data_to_send())) == h2f.PROTOCOL_ERROR


def test_client_role_requires_server_settings_first():
    rec = Recorder()
    conn = H2Connection(rec, client=True, settings=H2Settings())
    conn.initiate()
    conn.data_to_send()
    conn.receive(raw(6, 0, 0, b"12345678"))
    assert goaway(parse_frames(conn.data_to_send())) == h2f.PROTOCOL_ERROR


# ---------------------------------------------------------------- header validation

MALFORMED = {
    "uppercase name": REQUEST + [(b"X-Upper", b"1")],
    "connection": REQUEST + [(b"connection", b"keep-alive")],
    "keep-alive": REQUEST + [(b"keep-alive", b"timeout=5")],
    "proxy-connection": REQUEST + [(b"proxy-connection", b"close")],
    "transfer-encoding": REQUEST + [(b"transfer-encoding", b"chunked")],
    "upgrade": REQUEST + [(b"upgrade", b"websocket")],
    "te gzip": REQUEST + [(b"te", b"gzip")],
    "missing :path": [h for h in REQUEST if h[0] != b":path"],
    "missing :method": [h for h in REQUEST if h[0] != b":method"],
    "missing :scheme": [h for h in REQUEST if h[0] != b":scheme"],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b""), (b":authority", b"a")],
    "pseudo after regular": REQUEST[:2] + [(b"accept", b"*/*")] + REQUEST[2:],
    "unknown pseudo": [(b":foo", b"bar")] + REQUEST,
    "duplicate pseudo": REQUEST + [(b":path", b"/again")],
    ":status in request": REQUEST + [(b":status", b"200")],
    ":protocol not enabled": [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                              (b":path", b"/"), (b":authority", b"a")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    "CONNECT without :authority": [(b":method", b"CONNECT")],
    "CR LF in value": REQUEST + [(b"x-a", b"a\r\nb")],
    "NUL in value": REQUEST + [(b"x-a", b"a\0b")],
    "leading space in value": REQUEST + [(b"x-a", b" a")],
    "trailing tab in value": REQUEST + [(b"x-a", b"a\t")],
    "space in name": REQUEST + [(b"x a", b"1")],
    "colon in name": REQUEST + [(b"x:a", b"1")],
    "empty name": REQUEST + [(b"", b"1")],
    "non-ascii name": REQUEST + [("x-é".encode(), b"1")],
    "bad content-length": POST + [(b"content-length", b"12a")],
    "conflicting content-length": POST + [(b"content-length", b"1"), (b"content-length", b"2")],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_is_refused_with_protocol_error(name):
    p = Peer()
    frames = p.send(p.headers(1, MALFORMED[name]))
    assert rsts(frames) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.events == []  # the handler never heard of the stream
    assert p.conn.stats_malformed == 1
    # The connection, and the HPACK state, carry on.
    assert p.send(p.headers(3, REQUEST)) == []
    assert p.rec.of("headers") == [("headers", 3, REQUEST, True)]
    # Late frames for the refused stream are ignored.
    assert p.send(raw(0, END_STREAM, 1, b"late")) == []
    assert not p.conn.closed


def test_content_length_with_end_stream_on_headers_is_malformed():
    p = Peer()
    frames = p.send(p.headers(1, POST + [(b"content-length", b"3")], end=True))
    assert rsts(frames) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.events == []


def test_valid_edge_requests_are_accepted():
    p = Peer(H2Settings(enable_connect_protocol=True))
    ok = [
        [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
        [(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*"), (b":authority", b"a")],
        POST + [(b"te", b"trailers"), (b"content-length", b"0"), (b"content-length", b"0")],
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/ws"),
         (b":authority", b"a")],
        REQUEST + [(b"x-empty", b""), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-mid", b"a b\tc")],
    ]
    for i, headers in enumerate(ok):
        assert p.send(p.headers(1 + 2 * i, headers, end=False)) == []
    assert [e[2] for e in p.rec.of("headers")] == ok


@pytest.mark.parametrize("case", ["more data", "less data", "trailers early"])
def test_content_length_mismatch_is_a_stream_error(case):
    p = Peer()
    p.send(p.headers(1, POST + [(b"content-length", b"5")], end=False))
    assert p.rec.of("headers")
    if case == "more data":
        frames = p.send(raw(0, 0, 1, b"abc"), raw(0, 0, 1, b"def"))
    elif case == "less data":
        frames = p.send(raw(0, END_STREAM, 1, b"abc"))
    else:
        frames = p.send(raw(0, 0, 1, b"abc"), p.headers(1, [(b"x-t", b"1")], end=True))
    assert rsts(frames) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.of("reset") == [("reset", 1, h2f.PROTOCOL_ERROR, False)]
    assert not p.conn.stream_open(1) and not p.conn.closed


@pytest.mark.parametrize("trailers,end", [([(b"x-t", b"1")], False), ([(b":path", b"/")], True),
                                          ([(b"X-T", b"1")], True)])
def test_malformed_trailers_are_a_stream_error(trailers, end):
    p = Peer()
    p.send(p.headers(1, POST, end=False))
    frames = p.send(p.headers(1, trailers, end=end))
    assert rsts(frames) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.of("reset") == [("reset", 1, h2f.PROTOCOL_ERROR, False)]
    assert p.rec.of("trailers") == []


# ---------------------------------------------------------------- connection errors


def _conn_error_cases():
    big = raw(0xEE, 0, 0, b"x" * 16385)
    return {
        "even stream id": (lambda p: [p.headers(2, REQUEST)], h2f.PROTOCOL_ERROR),
        "DATA on stream 0": (lambda p: [raw(0, 0, 0, b"x")], h2f.PROTOCOL_ERROR),
        "DATA on idle stream": (lambda p: [raw(0, 0, 9, b"x")], h2f.PROTOCOL_ERROR),
        "HEADERS on stream 0": (lambda p: [p.headers(0, REQUEST)], h2f.PROTOCOL_ERROR),
        "stream id going down": (lambda p: [p.headers(5, REQUEST), p.headers(3, REQUEST)], h2f.PROTOCOL_ERROR),
        "frame above max size": (lambda p: [big], h2f.FRAME_SIZE_ERROR),
        "SETTINGS length": (lambda p: [raw(4, 0, 0, b"12345")], h2f.FRAME_SIZE_ERROR),
        "SETTINGS ACK with payload": (lambda p: [raw(4, ACK, 0, setting(3, 1))], h2f.FRAME_SIZE_ERROR),
        "SETTINGS on a stream": (lambda p: [raw(4, 0, 1)], h2f.PROTOCOL_ERROR),
        "SETTINGS window too big": (lambda p: [raw(4, 0, 0, setting(4, 1 << 31))], h2f.FLOW_CONTROL_ERROR),
        "SETTINGS frame size small": (lambda p: [raw(4, 0, 0, setting(5, 100))], h2f.PROTOCOL_ERROR),
        "SETTINGS frame size big": (lambda p: [raw(4, 0, 0, setting(5, 1 << 24))], h2f.PROTOCOL_ERROR),
        "SETTINGS enable push 2": (lambda p: [raw(4, 0, 0, setting(2, 2))], h2f.PROTOCOL_ERROR),
        "SETTINGS connect protocol 2": (lambda p: [raw(4, 0, 0, setting(8, 2))], h2f.PROTOCOL_ERROR),
        "PING length": (lambda p: [raw(6, 0, 0, b"1234567")], h2f.FRAME_SIZE_ERROR),
        "PING on a stream": (lambda p: [raw(6, 0, 1, b"12345678")], h2f.PROTOCOL_ERROR),
        "GOAWAY on a stream": (lambda p: [raw(7, 0, 1, u32(0) + u32(0))], h2f.PROTOCOL_ERROR),
        "GOAWAY short": (lambda p: [raw(7, 0, 0, u32(0))], h2f.FRAME_SIZE_ERROR),
        "WINDOW_UPDATE 0 on connection": (lambda p: [raw(8, 0, 0, u32(0))], h2f.PROTOCOL_ERROR),
        "WINDOW_UPDATE length": (lambda p: [raw(8, 0, 0, b"\0\0\1")], h2f.FRAME_SIZE_ERROR),
        "WINDOW_UPDATE overflow": (lambda p: [raw(8, 0, 0, u32((1 << 31) - 1))], h2f.FLOW_CONTROL_ERROR),
        "WINDOW_UPDATE idle stream": (lambda p: [raw(8, 0, 7, u32(1))], h2f.PROTOCOL_ERROR),
        "RST_STREAM idle stream": (lambda p: [raw(3, 0, 7, u32(8))], h2f.PROTOCOL_ERROR),
        "RST_STREAM stream 0": (lambda p: [raw(3, 0, 0, u32(8))], h2f.PROTOCOL_ERROR),
        "RST_STREAM length": (lambda p: [p.headers(1, REQUEST, end=False), raw(3, 0, 1, b"\0\0\0\0\0")],
                              h2f.FRAME_SIZE_ERROR),
        "PUSH_PROMISE": (lambda p: [raw(5, END_HEADERS, 1, u32(2) + p.block(REQUEST))], h2f.PROTOCOL_ERROR),
        "stray CONTINUATION": (lambda p: [raw(9, END_HEADERS, 1, p.block(REQUEST))], h2f.PROTOCOL_ERROR),
        "frame inside a header block": (
            lambda p: [raw(1, END_STREAM, 1, p.block(REQUEST)), raw(6, 0, 0, b"12345678")], h2f.PROTOCOL_ERROR),
        "CONTINUATION on another stream": (
            lambda p: [raw(1, END_STREAM, 1, p.block(REQUEST)), raw(9, END_HEADERS, 3, b"")], h2f.PROTOCOL_ERROR),
        "HPACK garbage": (lambda p: [raw(1, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff")],
                          h2f.COMPRESSION_ERROR),
        "HPACK index out of range": (lambda p: [raw(1, END_HEADERS | END_STREAM, 1, b"\xfe")],
                                     h2f.COMPRESSION_ERROR),
        "HEADERS padding too long": (lambda p: [raw(1, END_HEADERS | PADDED, 1, bytes((200,)) + p.block(REQUEST))],
                                     h2f.PROTOCOL_ERROR),
        "DATA padding too long": (lambda p: [p.headers(1, POST, end=False), raw(0, PADDED, 1, bytes((4,)) + b"abc")],
                                  h2f.PROTOCOL_ERROR),
        "PRIORITY on stream 0": (lambda p: [raw(2, 0, 0, u32(1) + b"\x10")], h2f.PROTOCOL_ERROR),
        "DATA after stream closed": (
            lambda p: [p.headers(1, REQUEST, end=True), b"RESPOND", raw(0, 0, 1, b"x")], h2f.STREAM_CLOSED),
        "HEADERS after stream closed": (
            lambda p: [p.headers(1, REQUEST, end=True), b"RESPOND", p.headers(1, [(b"x", b"1")])], h2f.STREAM_CLOSED),
    }


CONN_ERRORS = _conn_error_cases()


@pytest.mark.parametrize("name", sorted(CONN_ERRORS))
def test_connection_errors(name):
    build, code = CONN_ERRORS[name]
    p = Peer()
    frames = []
    for chunk in build(p):
        if chunk == b"RESPOND":  # our side ends the stream too: it becomes closed
            p.conn.send_headers(1, [(b":status", b"204")], end_stream=True)
            p.conn.data_to_send()
            continue
        frames += p.send(chunk)
    assert_connection_error(p, frames, code)


def test_goaway_names_last_processed_stream():
    p = Peer()
    p.send(p.headers(1, REQUEST), p.headers(3, REQUEST))
    frames = p.send(raw(0, 0, 0, b"x"))
    g = [f for f in frames if isinstance(f, GoAwayFrame)][0]
    assert (g.last_stream_id, g.error_code) == (3, h2f.PROTOCOL_ERROR)
    assert b"stream 0" in g.additional_data


def test_unknown_frames_and_settings_are_ignored():
    p = Peer()
    frames = p.send(raw(0xFA, 0xFF, 0, b"ext"), raw(0xFB, 0, 1, b""),
                    raw(4, 0, 0, setting(0x99, 7) + setting(3, 5)), p.headers(1, REQUEST))
    assert [type(f) for f in frames] == [SettingsFrame]
    assert p.conn.peer_max_concurrent_streams == 5
    assert p.rec.of("headers")


def test_padded_and_prioritised_headers_and_data():
    p = Peer()
    block = p.block(POST)
    payload = bytes((3,)) + u32(0) + b"\x10" + block + b"\0\0\0"
    frames = p.send(raw(1, END_HEADERS | PADDED | PRIORITY_FLAG, 1, payload),
                    raw(0, PADDED | END_STREAM, 1, bytes((2,)) + b"body" + b"\0\0"))
    assert frames == []
    assert p.rec.of("headers")[0][2] == POST
    assert p.rec.of("data") == [("data", 1, b"body", True, 7)]


# ---------------------------------------------------------------- stream states


def test_data_after_end_stream_on_half_closed_stream_is_stream_closed():
    p = Peer()
    p.send(p.headers(1, POST, end=False), raw(0, END_STREAM, 1, b"a"))
    frames = p.send(raw(0, 0, 1, b"b"))
    assert rsts(frames) == [(1, h2f.STREAM_CLOSED)]
    assert p.rec.of("reset") == [("reset", 1, h2f.STREAM_CLOSED, False)]
    assert not p.conn.closed


def test_frames_after_peer_reset():
    p = Peer()
    p.send(p.headers(1, POST, end=False))
    p.conn.send_headers(1, [(b":status", b"200")])
    p.conn.data_to_send()
    assert p.send(raw(3, 0, 1, u32(h2f.CANCEL))) == []
    assert p.rec.of("reset") == [("reset", 1, h2f.CANCEL, True)]
    assert rsts(p.send(raw(0, 0, 1, b"x"))) == [(1, h2f.STREAM_CLOSED)]
    assert p.send(raw(3, 0, 1, u32(0))) == []  # never RST in reply to RST
    assert p.send(raw(2, 0, 1, u32(0) + b"\x10")) == []  # PRIORITY is always fine
    assert not p.conn.closed


def test_late_frames_after_our_reset_are_ignored_and_credited():
    settings = H2Settings(connection_window=65535 * 2, initial_window_size=65535 * 2)
    p = Peer(settings)
    p.send(p.headers(1, POST, end=False))
    p.conn.reset_stream(1, h2f.CANCEL)
    assert rsts(parse_frames(p.conn.data_to_send())) == [(1, h2f.CANCEL)]
    chunk = b"d" * 16384
    frames = []
    for _ in range(8):
        frames += p.send(raw(0, 0, 1, chunk))
    frames += p.send(p.headers(1, [(b"x-t", b"1")], end=True), raw(8, 0, 1, u32(5)), raw(3, 0, 1, u32(0)))
    # Ignored, but the connection window comes back (batched) so other streams are not
    # starved: 8 x 16384 bytes is more than the whole connection window.
    assert [(type(f), f.stream_id, f.window_increment) for f in frames] == [(WindowUpdateFrame, 0, 65536)] * 2
    assert p.rec.of("reset") == [] and not p.conn.closed
    # The HPACK state followed the ignored trailers.
    p.send(p.headers(3, REQUEST))
    assert p.rec.of("headers")[-1][2] == REQUEST


def test_closed_stream_memory_is_bounded():
    p = Peer(H2Settings(closed_stream_memory=4))
    for sid in range(1, 21, 2):
        p.send(p.headers(sid, POST, end=False))
        p.conn.reset_stream(sid, h2f.CANCEL)
    p.conn.data_to_send()
    assert p.send(raw(0, 0, 19, b"x")) == []  # remembered: ignored
    assert rsts(p.send(raw(0, 0, 1, b"x"))) == [(1, h2f.STREAM_CLOSED)]  # forgotten long ago
    assert len(p.conn._gone) <= 4
    assert not p.conn.closed


# ---------------------------------------------------------------- flow control


def test_data_beyond_stream_window_is_flow_control_stream_error():
    p = Peer(H2Settings(initial_window_size=65535))
    p.send(p.headers(1, POST, end=False))
    frames = []
    for _ in range(4):
        frames += p.send(raw(0, 0, 1, b"f" * 16384))
    assert rsts(frames) == [(1, h2f.FLOW_CONTROL_ERROR)]
    assert p.rec.of("reset") == [("reset", 1, h2f.FLOW_CONTROL_ERROR, False)]
    assert len(p.rec.body(1)) == 3 * 16384
    assert not p.conn.closed


def test_data_beyond_connection_window_is_connection_error():
    p = Peer(H2Settings(connection_window=65535, initial_window_size=1 << 20))
    p.send(p.headers(1, POST, end=False), p.headers(3, POST, end=False))
    frames = []
    for i in range(5):
        frames += p.send(raw(0, 0, 1 + 2 * (i % 2), b"f" * 16384))
    assert_connection_error(p, frames, h2f.FLOW_CONTROL_ERROR)


def test_stream_window_update_errors():
    p = Peer()
    p.send(p.headers(1, POST, end=False), p.headers(3, POST, end=False))
    assert rsts(p.send(raw(8, 0, 1, u32(0)))) == [(1, h2f.PROTOCOL_ERROR)]
    assert rsts(p.send(raw(8, 0, 3, u32((1 << 31) - 1)))) == [(3, h2f.FLOW_CONTROL_ERROR)]
    assert [e[1:] for e in p.rec.of("reset")] == [(1, h2f.PROTOCOL_ERROR, False), (3, h2f.FLOW_CONTROL_ERROR, False)]
    assert not p.conn.closed


def test_initial_window_change_overflowing_a_stream_is_connection_error():
    p = Peer()
    p.send(p.headers(1, POST, end=False))
    p.send(raw(8, 0, 1, u32((1 << 31) - 1 - 65535)))
    frames = p.send(raw(4, 0, 0, setting(4, 65536)))
    assert_connection_error(p, frames, h2f.FLOW_CONTROL_ERROR)


# ---------------------------------------------------------------- PRIORITY


def test_priority_frame_errors_are_stream_errors():
    p = Peer()
    p.send(p.headers(1, POST, end=False))
    assert rsts(p.send(raw(2, 0, 1, b"\0\0\0\0"))) == [(1, h2f.FRAME_SIZE_ERROR)]
    p.send(p.headers(3, POST, end=False))
    assert rsts(p.send(raw(2, 0, 3, u32(3) + b"\x10"))) == [(3, h2f.PROTOCOL_ERROR)]
    assert p.send(raw(2, 0, 11, u32(1) + b"\x10")) == []  # PRIORITY on an idle stream is allowed
    assert not p.conn.closed


def test_headers_depending_on_itself_is_refused():
    p = Peer()
    block = p.block(REQUEST)
    frames = p.send(raw(1, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, u32(1) + b"\x10" + block))
    assert rsts(frames) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.events == []
    p.send(p.headers(3, REQUEST))
    assert p.rec.of("headers")[0][2] == REQUEST


# ---------------------------------------------------------------- protections


def test_concurrent_stream_limit_refuses_with_refused_stream():
    p = Peer(H2Settings(max_concurrent_streams=3))
    frames = p.send(*[p.headers(sid, REQUEST) for sid in (1, 3, 5, 7, 9)])
    assert rsts(frames) == [(7, h2f.REFUSED_STREAM), (9, h2f.REFUSED_STREAM)]
    assert [e[1] for e in p.rec.of("headers")] == [1, 3, 5]
    assert p.conn.stats_refused_streams == 2
    assert p.send(raw(0, END_STREAM, 7, b"")) == []  # refused stream's late DATA: ignored


def test_header_list_too_large_reaches_handler_and_stream_stays_usable():
    p = Peer(H2Settings(max_header_list_size=1000))
    big = REQUEST + [(b"x-big", b"b" * 2000)]
    block = p.block(big)
    frames = p.send(raw(1, END_STREAM, 1, block[:1500]), raw(9, END_HEADERS, 1, block[1500:]))
    assert frames == []
    assert p.rec.events == [("too_large", 1)]
    assert p.conn.stats_headers_too_large == 1
    p.conn.send_headers(1, [(b":status", b"431")], end_stream=True)
    assert isinstance(parse_frames(p.conn.data_to_send())[0], HeadersFrame)
    assert not p.conn.stream_open(1)
    p.send(p.headers(3, REQUEST))  # HPACK state intact
    assert p.rec.of("headers") == [("headers", 3, REQUEST, True)]


def test_continuation_flood_of_small_frames():
    p = Peer()
    frames = p.send(raw(1, END_STREAM, 1, p.block(REQUEST)[:3]))
    for _ in range(40):
        frames += p.send(raw(9, 0, 1, b""))
        if frames:
            break
    assert goaway(frames) == h2f.ENHANCE_YOUR_CALM
    assert p.conn.stats_floods == 1
    assert p.rec.events[-1][:2] == ("connection_error", h2f.ENHANCE_YOUR_CALM)


def test_continuation_flood_of_big_blocks():
    p = Peer(H2Settings(max_header_list_size=20000))
    frames = p.send(raw(1, END_STREAM, 1, b"\0" * 16000))
    frames += p.send(raw(9, 0, 1, b"\0" * 16000))
    assert frames == []
    frames += p.send(raw(9, 0, 1, b"\0" * 16000))
    assert_connection_error(p, frames, h2f.ENHANCE_YOUR_CALM)


def test_rapid_reset_triggers_enhance_your_calm():
    clock = FakeClock()
    p = Peer(H2Settings(max_concurrent_streams=1000), clock=clock)
    frames = []
    sid = 1
    while not frames and sid < 2000:
        frames = p.send(p.headers(sid, REQUEST, end=False), raw(3, 0, sid, u32(h2f.CANCEL)))
        sid += 2
    assert_connection_error(p, frames, h2f.ENHANCE_YOUR_CALM)
    assert p.conn.stats_rapid_resets == 201  # the burst allowance, then one too many
    assert p.conn.stats_floods == 1


def test_resets_at_a_modest_rate_or_after_answers_are_fine():
    clock = FakeClock()
    p = Peer(H2Settings(max_concurrent_streams=1000), clock=clock)
    sid = 1
    for _ in range(1000):  # 100 resets per second, under the 200/s allowance
        clock.now += 0.01
        assert p.send(p.headers(sid, REQUEST, end=False), raw(3, 0, sid, u32(h2f.CANCEL))) == []
        sid += 2
    assert p.conn.stats_rapid_resets == 1000
    # Cancelling streams we already answered is ordinary client behaviour.
    for _ in range(1000):
        p.send(p.headers(sid, REQUEST, end=False))
        p.conn.send_headers(sid, [(b":status", b"200")])
        p.conn.data_to_send()
        assert p.send(raw(3, 0, sid, u32(h2f.CANCEL))) == []
        sid += 2
    assert p.conn.stats_rapid_resets == 1000 and not p.conn.closed


def test_reset_burst_after_much_useful_work_is_tolerated():
    clock = FakeClock()
    p = Peer(H2Settings(max_concurrent_streams=1000), clock=clock)
    sid = 1
    for _ in range(1000):
        p.send(p.headers(sid, REQUEST))
        p.conn.send_headers(sid, [(b":status", b"204")], end_stream=True)
        p.conn.data_to_send()
        sid += 2
    for _ in range(400):  # over the rate, but well under half of the streams opened
        assert p.send(p.headers(sid, REQUEST, end=False), raw(3, 0, sid, u32(h2f.CANCEL))) == []
        sid += 2
    assert not p.conn.closed


FLOODS = {
    "PING": lambda p, i: raw(6, 0, 0, i.to_bytes(8, "big")),
    "SETTINGS": lambda p, i: raw(4, 0, 0, setting(3, 100)),
    "PRIORITY": lambda p, i: raw(2, 0, 1, u32(0) + b"\x10"),
    "WINDOW_UPDATE": lambda p, i: raw(8, 0, 0, u32(1)),
    "empty DATA": lambda p, i: raw(0, 0, 1, b""),
    "unknown frames": lambda p, i: raw(0xEE, 0, 0, b""),
    "RST on closed streams": lambda p, i: raw(3, 0, 1, u32(0)),
    "unsolicited PING ACK": lambda p, i: raw(6, ACK, 0, b"12345678"),
}


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_control_frame_floods(name):
    clock = FakeClock()
    p = Peer(clock=clock)
    p.send(p.headers(1, POST, end=False))
    if name == "RST on closed streams":
        p.conn.reset_stream(1, h2f.CANCEL)
        p.conn.data_to_send()
    frames = []
    for i in range(3000):
        frames = p.send(FLOODS[name](p, i))
        if any(isinstance(f, GoAwayFrame) for f in frames):
            break
    assert i < 1100
    assert_connection_error(p, frames, h2f.ENHANCE_YOUR_CALM)
    assert p.conn.stats_floods == 1


def test_keepalive_pings_and_busy_connections_are_not_floods():
    clock = FakeClock()
    p = Peer(clock=clock)
    for i in range(5000):  # one PING a second for well over an hour
        clock.now += 1.0
        frames = p.send(raw(6, 0, 0, i.to_bytes(8, "big")))
        assert [type(f) for f in frames] == [PingFrame]
    # Window updates while we stream a large body are paid for by the DATA we send.
    p.send(p.headers(1, REQUEST), raw(8, 0, 0, u32(1 << 30)), raw(4, 0, 0, setting(4, 1 << 30)))
    p.conn.send_headers(1, [(b":status", b"200")])
    for _ in range(3000):
        assert p.conn.send_data(1, b"x" * 100) == 100
        p.conn.data_to_send()
        assert p.send(raw(8, 0, 1, u32(100)), raw(8, 0, 0, u32(100))) == []
    assert not p.conn.closed


# ---------------------------------------------------------------- client role


def test_client_rejects_push_promise_and_push_setting():
    p = Peer(client=True)
    p.conn.send_headers(p.conn.new_stream_id(), REQUEST, end_stream=True)
    p.conn.data_to_send()
    assert_connection_error(p, p.send(raw(5, END_HEADERS, 1, u32(2) + p.block(REQUEST))), h2f.PROTOCOL_ERROR)
    p = Peer(client=True)
    assert_connection_error(p, p.send(raw(4, 0, 0, setting(2, 1))), h2f.PROTOCOL_ERROR)


def test_client_rejects_headers_on_even_stream():
    p = Peer(client=True)
    assert_connection_error(p, p.send(p.headers(2, [(b":status", b"200")])), h2f.PROTOCOL_ERROR)


@pytest.mark.parametrize("frames", [
    lambda p: [p.headers(1, [(b":status", b"200"), (b"X-Bad", b"1")])],
    lambda p: [p.headers(1, [(b"x-a", b"1")])],
    lambda p: [p.headers(1, [(b":status", b"101")], end=False)],
    lambda p: [p.headers(1, [(b":status", b"103")], end=True)],
    lambda p: [p.headers(1, [(b":status", b"200"), (b":path", b"/")])],
    lambda p: [p.headers(1, [(b":status", b"20")])],
    lambda p: [raw(0, END_STREAM, 1, b"data before head")],
], ids=["uppercase", "no status", "101", "1xx end", "request pseudo", "short status", "data first"])
def test_client_malformed_response_resets_known_stream(frames):
    p = Peer(client=True)
    sid = p.conn.new_stream_id()
    p.conn.send_headers(sid, REQUEST, end_stream=True)
    p.conn.data_to_send()
    out = p.send(*frames(p))
    assert rsts(out) == [(1, h2f.PROTOCOL_ERROR)]
    assert p.rec.of("reset") == [("reset", 1, h2f.PROTOCOL_ERROR, False)]
    assert p.rec.of("headers") == [] and not p.conn.closed


def test_same_block_bytes_revalidated_when_the_table_changes():
    # Validation results are memoised per block; the memo must not trust bytes alone.
    p = Peer()
    indexed = b"\x82\x86\x84\xbe"  # GET http / + dynamic entry 62
    assert p.send(raw(1, END_HEADERS | END_STREAM, 1, b"\x82\x86\x84\x40\x03x-v\x04good")) == []
    assert p.send(raw(1, END_HEADERS | END_STREAM, 3, indexed)) == []
    assert p.rec.of("headers")[-1][2][-1] == (b"x-v", b"good")
    frames = p.send(raw(1, END_HEADERS | END_STREAM, 5, b"\x82\x86\x84\x40\x0aconnection\x05close"))
    assert rsts(frames) == [(5, h2f.PROTOCOL_ERROR)]
    frames = p.send(raw(1, END_HEADERS | END_STREAM, 7, indexed))  # entry 62 is now "connection"
    assert rsts(frames) == [(7, h2f.PROTOCOL_ERROR)]
    assert [e[1] for e in p.rec.of("headers")] == [1, 3]
