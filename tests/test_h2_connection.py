"""gateway.h2.connection against real peers: the `h2` library in the other role.

Both sides are sans-I/O, so the tests move bytes between them in memory. Our
output is also checked frame by frame with `hyperframe` where sizes, flags and
batching matter. The helpers here are shared with test_h2_protections.py.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from gateway.h2 import frames as h2f
from gateway.h2.connection import H2Connection, H2Settings, StreamClosedError

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/x"), (b":authority", b"example.com")]
POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/up"), (b":authority", b"example.com")]


class Recorder:
    """A handler that records every callback as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_headers(self, sid, headers, end_stream):
        self.events.append(("headers", sid, headers, end_stream))

    def on_trailers(self, sid, headers):
        self.events.append(("trailers", sid, headers))

    def on_data(self, sid, data, end_stream, flow_len):
        self.events.append(("data", sid, data, end_stream, flow_len))

    def on_reset(self, sid, code, by_peer):
        self.events.append(("reset", sid, code, by_peer))

    def on_window_open(self, sid):
        self.events.append(("window_open", sid))

    def on_goaway(self, last, code, debug):
        self.events.append(("goaway", last, code, debug))

    def on_connection_error(self, code, reason):
        self.events.append(("connection_error", code, reason))

    def on_headers_too_large(self, sid):
        self.events.append(("too_large", sid))

    def on_settings(self, max_streams):
        self.events.append(("settings", max_streams))

    def on_ping_ack(self, opaque):
        self.events.append(("ping_ack", opaque))

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]

    def body(self, sid: int) -> bytes:
        return b"".join(e[2] for e in self.events if e[0] == "data" and e[1] == sid)


def parse_frames(data: bytes) -> list[Frame]:
    frames = []
    pos = 0
    while pos < len(data):
        f, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
        f.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
        frames.append(f)
        pos += 9 + length
    assert pos == len(data)
    return frames


def h2_peer(client_side: bool, **local_settings) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    if local_settings:
        codes = {getattr(h2.settings.SettingCodes, k.upper()): v for k, v in local_settings.items()}
        peer.local_settings = h2.settings.Settings(client=client_side, initial_values=codes)
    peer.initiate_connection()
    return peer


def pump(ours: H2Connection, peer: h2.connection.H2Connection, events: list | None = None) -> list:
    """Move bytes both ways until neither side has anything to say; return h2's events."""
    events = [] if events is None else events
    for _ in range(1000):
        out = ours.data_to_send()
        if out:
            events.extend(peer.receive_data(out))
        back = peer.data_to_send()
        if back:
            ours.receive(back)
        if not out and not back:
            return events
    raise AssertionError("peers never went quiet")


def server_pair(settings: H2Settings | None = None, **client_settings):
    rec = Recorder()
    ours = H2Connection(rec, client=False, settings=settings or H2Settings())
    ours.initiate()
    peer = h2_peer(True, **client_settings)
    pump(ours, peer)
    return ours, rec, peer


def client_pair(settings: H2Settings | None = None, **server_settings):
    rec = Recorder()
    ours = H2Connection(rec, client=True, settings=settings or H2Settings())
    ours.initiate()
    peer = h2_peer(False, **server_settings)
    pump(ours, peer)
    return ours, rec, peer


def send_body(peer: h2.connection.H2Connection, sid: int, data: bytes, end_stream: bool = False) -> None:
    """h2 does not split DATA by frame size itself."""
    for i in range(0, len(data), 16384):
        peer.send_data(sid, data[i:i + 16384], end_stream=end_stream and i + 16384 >= len(data))


def of(events: list, cls) -> list:
    return [e for e in events if isinstance(e, cls)]


# ---------------------------------------------------------------- server role


def test_initiate_advertises_settings_and_connection_window():
    ours = H2Connection(Recorder(), client=False, settings=H2Settings(max_concurrent_streams=7))
    ours.initiate()
    frames = parse_frames(ours.data_to_send())
    assert isinstance(frames[0], SettingsFrame)
    assert frames[0].settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 7
    assert frames[0].settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 65535 * 4
    assert isinstance(frames[1], WindowUpdateFrame) and frames[1].stream_id == 0
    assert frames[1].window_increment == (1 << 24) - 65535
    client = H2Connection(Recorder(), client=True, settings=H2Settings())
    client.initiate()
    data = client.data_to_send()
    assert data.startswith(h2f.PREFACE)
    settings = parse_frames(data[len(h2f.PREFACE):])[0]
    assert settings.settings[SettingsFrame.ENABLE_PUSH] == 0


def test_get_request_and_response():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST + [(b"user-agent", b"t/1")], end_stream=True)
    pump(ours, peer)
    assert rec.of("headers") == [("headers", sid, REQUEST + [(b"user-agent", b"t/1")], True)]
    assert ours.stream_open(sid) and ours.open_stream_count == 1
    ours.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
    assert ours.send_data(sid, b"hello", end_stream=True) == 5
    events = pump(ours, peer)
    resp = of(events, h2.events.ResponseReceived)
    assert resp[0].headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert of(events, h2.events.DataReceived)[0].data == b"hello"
    assert of(events, h2.events.StreamEnded)[0].stream_id == sid
    assert not ours.stream_open(sid) and ours.open_stream_count == 0
    with pytest.raises(StreamClosedError):
        ours.send_data(sid, b"late")


def test_many_streams_in_one_receive_call():
    ours, rec, peer = server_pair()
    sids = []
    for _ in range(20):
        sid = peer.get_next_available_stream_id()
        peer.send_headers(sid, REQUEST, end_stream=True)
        sids.append(sid)
    ours.receive(peer.data_to_send())
    assert [e[1] for e in rec.of("headers")] == sids
    for sid in sids:
        ours.send_headers(sid, [(b":status", b"204")], end_stream=True)
    events = pump(ours, peer)
    assert sorted(e.stream_id for e in of(events, h2.events.StreamEnded)) == sids
    assert ours.open_stream_count == 0


def test_byte_at_a_time_delivery_is_equivalent():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, POST + [(b"content-length", b"6")])
    peer.send_data(sid, b"abc", pad_length=5)
    peer.send_data(sid, b"def", end_stream=True)
    data = peer.data_to_send()
    for i in range(len(data)):
        ours.receive(data[i:i + 1])
    assert rec.of("headers")[0][1:] == (sid, POST + [(b"content-length", b"6")], False)
    assert rec.body(sid) == b"abcdef"
    flow = [e[4] for e in rec.of("data")]
    assert flow == [3 + 1 + 5, 3]  # padding and its length byte are flow controlled
    assert rec.of("data")[-1][3] is True


def test_request_body_trailers_and_response_trailers():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, POST + [(b"te", b"trailers"), (b"content-type", b"application/grpc")])
    peer.send_data(sid, b"\0\0\0\0\x02hi")
    peer.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
    pump(ours, peer)
    assert rec.body(sid) == b"\0\0\0\0\x02hi"
    assert rec.of("trailers") == [("trailers", sid, [(b"x-checksum", b"abc")])]
    ours.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    ours.send_data(sid, b"\0\0\0\0\x01k")
    ours.send_trailers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    events = pump(ours, peer)
    trailers = of(events, h2.events.TrailersReceived)
    assert trailers[0].headers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert of(events, h2.events.StreamEnded)
    assert not ours.stream_open(sid)


def test_large_response_stops_at_window_and_resumes_after_ack():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST, end_stream=True)
    pump(ours, peer)
    body = bytes(range(256)) * 1200  # 307200 bytes, client windows are 65535
    ours.send_headers(sid, [(b":status", b"200")])
    sent = ours.send_data(sid, body, end_stream=True)
    assert sent == 65535
    assert ours.send_window(sid) == 0
    out = ours.data_to_send()
    data_frames = [f for f in parse_frames(out) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data_frames] == [16384, 16384, 16384, 16383]
    assert not any("END_STREAM" in f.flags for f in data_frames)
    events = peer.receive_data(out)
    received = b"".join(e.data for e in of(events, h2.events.DataReceived))
    # The client has not consumed anything: no window update, nothing more to send.
    pump(ours, peer)
    assert rec.of("window_open") == []
    while sent < len(body):
        for e in of(events, h2.events.DataReceived):
            peer.acknowledge_received_data(e.flow_controlled_length, sid)
        events = []
        rec.events.clear()
        ours.receive(peer.data_to_send())
        assert rec.of("window_open"), "a window update must wake the sender"
        n = ours.send_data(sid, memoryview(body)[sent:], end_stream=True)
        assert n > 0
        sent += n
        events = peer.receive_data(ours.data_to_send())
        received += b"".join(e.data for e in of(events, h2.events.DataReceived))
    assert received == body
    assert of(events, h2.events.StreamEnded)
    assert not ours.stream_open(sid)


def test_request_body_backpressure_and_batched_window_updates():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, POST)
    pump(ours, peer)
    window = 65535 * 4
    assert peer.local_flow_control_window(sid) == window
    body = b"z" * (3 * window)
    # The client sends what our advertised window allows, then stalls.
    send_body(peer, sid, body[:window])
    ours.receive(peer.data_to_send())
    assert len(rec.body(sid)) == window
    assert peer.local_flow_control_window(sid) == 0
    assert ours.data_to_send() == b""
    # Acknowledging less than half the window sends no update (batching) ...
    ours.ack_data(sid, window // 2 - 1)
    assert ours.data_to_send() == b""
    # ... crossing half of it sends one, for everything consumed so far.
    ours.ack_data(sid, 1)
    frames = parse_frames(ours.data_to_send())
    assert [(type(f), f.stream_id, f.window_increment) for f in frames] == [(WindowUpdateFrame, sid, window // 2)]
    peer.receive_data(b"".join(f.serialize() for f in frames))
    assert peer.local_flow_control_window(sid) == window // 2
    # The rest streams through while the application keeps acknowledging.
    sent = window
    while sent < len(body):
        n = min(peer.local_flow_control_window(sid), len(body) - sent, 16384)
        assert n > 0
        peer.send_data(sid, body[sent:sent + n], end_stream=sent + n == len(body))
        sent += n
        before = len(rec.of("data"))
        ours.receive(peer.data_to_send())
        for e in rec.of("data")[before:]:
            ours.ack_data(sid, e[4])
        out = ours.data_to_send()
        if out:
            for f in parse_frames(out):
                assert isinstance(f, WindowUpdateFrame) and f.window_increment >= window // 2
            peer.receive_data(out)
    assert rec.body(sid) == body
    assert rec.of("data")[-1][3] is True


def test_ack_after_stream_closed_is_ignored_and_connection_window_credited():
    settings = H2Settings(connection_window=65535 * 2, initial_window_size=65535 * 2)
    ours, rec, peer = server_pair(settings)
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, POST)
    send_body(peer, sid, b"q" * 65535)
    pump(ours, peer)
    # Never acknowledged by the application, but the stream is reset: the codec returns
    # the connection window itself, so other streams are not starved.
    ours.reset_stream(sid, h2f.CANCEL)
    frames = parse_frames(ours.data_to_send())
    assert isinstance(frames[0], RstStreamFrame) and frames[0].error_code == h2f.CANCEL
    assert [(f.stream_id, f.window_increment) for f in frames[1:]] == [(0, 65535)]
    ours.ack_data(sid, 65535)
    assert ours.data_to_send() == b""


def test_peer_settings_change_mid_stream():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST, end_stream=True)
    pump(ours, peer)
    peer.increment_flow_control_window(1 << 20)  # connection window is not what we test here
    pump(ours, peer)
    ours.send_headers(sid, [(b":status", b"200")])
    assert ours.send_data(sid, b"a" * 65535) == 65535
    pump(ours, peer)
    assert ours.send_window(sid) == 0
    rec.events.clear()
    # Shrinking INITIAL_WINDOW_SIZE makes the open stream's window negative (RFC 9113 6.9.2).
    peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pump(ours, peer)
    assert ours.send_window(sid) == 1000 - 65535
    assert ours.send_data(sid, b"b") == 0
    # Growing it reopens the window and wakes the sender.
    peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 200000,
                          h2.settings.SettingCodes.MAX_FRAME_SIZE: 32768})
    pump(ours, peer)
    assert ("window_open", 0) in rec.events
    assert ours.send_window(sid) == 200000 - 65535
    assert ours.send_data(sid, b"c" * 40000, end_stream=True) == 40000
    frames = [f for f in parse_frames(ours.data_to_send()) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in frames] == [32768, 40000 - 32768]
    # A header table size below the default makes our encoder signal it.
    peer2_ours, _, peer2 = server_pair()
    peer2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    pump(peer2_ours, peer2)
    s2 = peer2.get_next_available_stream_id()
    peer2.send_headers(s2, REQUEST, end_stream=True)
    pump(peer2_ours, peer2)
    peer2_ours.send_headers(s2, [(b":status", b"200"), (b"x-long", b"v" * 100)], end_stream=True)
    events = pump(peer2_ours, peer2)
    assert of(events, h2.events.ResponseReceived)[0].headers[1] == (b"x-long", b"v" * 100)


def test_large_header_block_is_split_into_continuations():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST, end_stream=True)
    pump(ours, peer)
    big = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 1000) for i in range(40)]
    ours.send_headers(sid, big, end_stream=True)
    out = ours.data_to_send()
    frames = parse_frames(out)
    assert isinstance(frames[0], HeadersFrame) and "END_HEADERS" not in frames[0].flags
    assert "END_STREAM" in frames[0].flags
    assert all(isinstance(f, ContinuationFrame) for f in frames[1:])
    assert "END_HEADERS" in frames[-1].flags
    events = peer.receive_data(out)
    assert of(events, h2.events.ResponseReceived)[0].headers == big


def test_client_sends_large_header_block_in_continuations():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    headers = REQUEST + [(b"x-h%d" % i, b"w" * 1000) for i in range(30)]
    peer.send_headers(sid, headers, end_stream=True)
    data = peer.data_to_send()
    assert any(isinstance(f, ContinuationFrame) for f in parse_frames(data))
    ours.receive(data)
    assert rec.of("headers")[0][2] == headers


def test_goaway_from_client():
    ours, rec, peer = server_pair()
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST, end_stream=True)
    peer.close_connection(error_code=0, additional_data=b"bye", last_stream_id=0)
    pump(ours, peer)
    assert rec.of("goaway") == [("goaway", 0, 0, b"bye")]
    assert ours.goaway_received
    assert not ours.closed  # a stream is still being answered
    ours.send_headers(sid, [(b":status", b"200")], end_stream=True)
    assert ours.closed


def test_graceful_goaway_from_server_names_last_stream():
    ours, rec, peer = server_pair()
    for _ in range(3):
        peer.send_headers(peer.get_next_available_stream_id(), REQUEST, end_stream=True)
    pump(ours, peer)
    ours.send_goaway(h2f.NO_ERROR, b"draining")
    events = pump(ours, peer)
    term = of(events, h2.events.ConnectionTerminated)[0]
    assert (term.error_code, term.last_stream_id, term.additional_data) == (0, 5, b"draining")
    assert not ours.closed
    for sid in (1, 3, 5):
        ours.send_headers(sid, [(b":status", b"200")], end_stream=True)
    assert ours.closed
    frames = parse_frames(ours.data_to_send())
    assert [(type(f), f.stream_id) for f in frames] == [(HeadersFrame, 1), (HeadersFrame, 3), (HeadersFrame, 5)]
    # A stream the client opened after our GOAWAY is ignored, as announced.
    raw = hpack.Encoder()
    block = raw.encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")])
    late = len(block).to_bytes(3, "big") + bytes((1, 5)) + (7).to_bytes(4, "big") + block
    rec.events.clear()
    ours.receive(late)
    assert rec.events == [] and ours.data_to_send() == b""


def test_reset_by_client_and_by_server():
    ours, rec, peer = server_pair()
    s1 = peer.get_next_available_stream_id()
    peer.send_headers(s1, POST)
    pump(ours, peer)
    ours.send_headers(s1, [(b":status", b"200")])
    pump(ours, peer)
    peer.reset_stream(s1, error_code=h2f.CANCEL)
    pump(ours, peer)
    assert rec.of("reset") == [("reset", s1, h2f.CANCEL, True)]
    assert not ours.stream_open(s1)
    assert ours.stats_rapid_resets == 0  # we had answered
    with pytest.raises(StreamClosedError):
        ours.send_data(s1, b"x")
    s2 = peer.get_next_available_stream_id()
    peer.send_headers(s2, POST)
    pump(ours, peer)
    ours.reset_stream(s2, h2f.INTERNAL_ERROR)
    events = pump(ours, peer)
    reset = of(events, h2.events.StreamReset)[0]
    assert (reset.stream_id, reset.error_code) == (s2, h2f.INTERNAL_ERROR)
    ours.reset_stream(s2, h2f.INTERNAL_ERROR)  # already closed: nothing more on the wire
    assert ours.data_to_send() == b""
    # Frames the client sent before it saw our reset are ignored, not errors.
    rec.events.clear()
    raw_data = (3).to_bytes(3, "big") + bytes((0, 0)) + s2.to_bytes(4, "big") + b"abc"
    ours.receive(raw_data)
    assert rec.events == [] and not ours.closed


def test_ping_both_ways():
    ours, rec, peer = server_pair()
    peer.ping(b"12345678")
    events = pump(ours, peer)
    assert of(events, h2.events.PingAckReceived)[0].ping_data == b"12345678"
    ours.send_ping(b"abcdefgh")
    pump(ours, peer)
    assert rec.of("ping_ack") == [("ping_ack", b"abcdefgh")]
    with pytest.raises(ValueError):
        ours.send_ping(b"short")


def test_extended_connect_when_enabled():
    ours, rec, peer = server_pair(H2Settings(enable_connect_protocol=True))
    assert peer.remote_settings.enable_connect_protocol == 1
    sid = peer.get_next_available_stream_id()
    ws = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
          (b":path", b"/chat"), (b":authority", b"example.com"), (b"sec-websocket-version", b"13")]
    peer.send_headers(sid, ws)
    pump(ours, peer)
    assert rec.of("headers") == [("headers", sid, ws, False)]
    ours.send_headers(sid, [(b":status", b"200")])
    ours.send_data(sid, b"frame")
    events = pump(ours, peer)
    assert of(events, h2.events.DataReceived)[0].data == b"frame"


def test_concurrency_limit_refuses_extra_streams():
    ours, rec, peer = server_pair(H2Settings(max_concurrent_streams=2))
    # h2 enforces our limit on its side; sidestep it to play a client that ignores it.
    peer.remote_settings = h2.settings.Settings(client=False, initial_values={})
    for _ in range(3):
        peer.send_headers(peer.get_next_available_stream_id(), REQUEST, end_stream=True)
    events = pump(ours, peer)
    assert [e[1] for e in rec.of("headers")] == [1, 3]
    reset = of(events, h2.events.StreamReset)
    assert [(r.stream_id, r.error_code) for r in reset] == [(5, h2f.REFUSED_STREAM)]
    assert ours.stats_refused_streams == 1
    # Once a stream finishes there is room again.
    ours.send_headers(1, [(b":status", b"204")], end_stream=True)
    peer.send_headers(peer.get_next_available_stream_id(), REQUEST, end_stream=True)
    pump(ours, peer)
    assert [e[1] for e in rec.of("headers")] == [1, 3, 7]


# ---------------------------------------------------------------- client role


def test_client_request_response_with_informational_and_trailers():
    ours, rec, peer = client_pair()
    sid = ours.new_stream_id()
    assert sid == 1 and ours.new_stream_id() == 3
    ours.send_headers(sid, POST + [(b"content-length", b"4")])
    ours.send_data(sid, b"ping", end_stream=True)
    events = pump(ours, peer)
    req = of(events, h2.events.RequestReceived)[0]
    assert req.headers == POST + [(b"content-length", b"4")]
    assert of(events, h2.events.DataReceived)[0].data == b"ping"
    peer.send_headers(sid, [(b":status", b"100")])
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"4")])
    peer.send_data(sid, b"pong")
    peer.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    pump(ours, peer)
    heads = rec.of("headers")
    assert heads == [("headers", sid, [(b":status", b"100")], False),
                     ("headers", sid, [(b":status", b"200"), (b"content-length", b"4")], False)]
    assert rec.body(sid) == b"pong"
    assert rec.of("trailers") == [("trailers", sid, [(b"grpc-status", b"0")])]
    assert not ours.stream_open(sid)


def test_client_head_response_with_content_length_and_no_body():
    ours, rec, peer = client_pair()
    sid = ours.new_stream_id()
    ours.send_headers(sid, [(b":method", b"HEAD")] + REQUEST[1:], end_stream=True)
    pump(ours, peer)
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"1234")], end_stream=True)
    pump(ours, peer)
    assert rec.of("headers")[0][3] is True
    assert rec.of("reset") == []


def test_client_response_content_length_mismatch_resets_stream():
    ours, rec, peer = client_pair()
    sid = ours.new_stream_id()
    ours.send_headers(sid, REQUEST, end_stream=True)
    pump(ours, peer)
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"10")])
    peer.send_data(sid, b"short", end_stream=True)
    ours.receive(peer.data_to_send())
    assert rec.of("reset") == [("reset", sid, h2f.PROTOCOL_ERROR, False)]
    frames = parse_frames(ours.data_to_send())
    assert [(type(f), f.stream_id, f.error_code) for f in frames] == [(RstStreamFrame, sid, h2f.PROTOCOL_ERROR)]


def test_client_large_upload_follows_server_windows():
    ours, rec, peer = client_pair()
    sid = ours.new_stream_id()
    ours.send_headers(sid, POST)
    body = b"u" * 200_000
    sent = ours.send_data(sid, body, end_stream=True)
    assert sent == 65535
    got = b""
    ended = False
    for _ in range(50):
        events = pump(ours, peer)
        for e in of(events, h2.events.DataReceived):
            got += e.data
            peer.acknowledge_received_data(e.flow_controlled_length, sid)
        ended = ended or bool(of(events, h2.events.StreamEnded))
        pump(ours, peer)
        if rec.of("window_open"):
            rec.events.clear()
            sent += ours.send_data(sid, memoryview(body)[sent:], end_stream=True)
        if ended:
            break
    assert got == body and ended


def test_client_goaway_refuses_streams_above_last():
    ours, rec, peer = client_pair()
    s1, s3 = ours.new_stream_id(), ours.new_stream_id()
    ours.send_headers(s1, REQUEST, end_stream=True)
    ours.send_headers(s3, REQUEST, end_stream=True)
    pump(ours, peer)
    peer.close_connection(error_code=0, last_stream_id=1)
    pump(ours, peer)
    assert rec.of("goaway") == [("goaway", 1, 0, b"")]
    assert rec.of("reset") == [("reset", s3, h2f.REFUSED_STREAM, True)]
    assert ours.stream_open(s1) and not ours.stream_open(s3)
    with pytest.raises(StreamClosedError):
        ours.new_stream_id()
    # The server (now closed for new work) still answers stream 1.
    block = hpack.Encoder().encode([(b":status", b"204")])
    ours.receive(len(block).to_bytes(3, "big") + bytes((1, 5)) + s1.to_bytes(4, "big") + block)
    assert rec.of("headers") == [("headers", s1, [(b":status", b"204")], True)]
    assert ours.closed


def test_client_stream_ids_must_increase():
    ours, rec, peer = client_pair()
    a, b = ours.new_stream_id(), ours.new_stream_id()
    ours.send_headers(b, REQUEST, end_stream=True)
    with pytest.raises(ValueError):
        ours.send_headers(a, REQUEST, end_stream=True)
    with pytest.raises(ValueError):
        ours.send_headers(4, REQUEST, end_stream=True)


def test_client_sees_server_settings():
    ours, rec, peer = client_pair(max_concurrent_streams=7)
    assert ours.peer_max_concurrent_streams == 7
    assert ("settings", 7) in rec.events


def test_client_memoised_validation_follows_what_the_block_decodes_to():
    # The same block bytes decode differently once the dynamic table moves: a head or
    # trailers accepted before must be checked again, not waved through by bytes.
    ours, rec, peer = client_pair()
    sids = [ours.new_stream_id() for _ in range(5)]
    for sid in sids:
        ours.send_headers(sid, POST)
    pump(ours, peer)

    def headers(sid, block, end_stream=False):
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(sid, data=block, flags=flags).serialize()

    insert_a = b"\x40\x03x-a\x011"                     # x-a: 1, added to the table
    insert_bad = b"\x40\x0aconnection\x05close"         # connection: close, added
    ours.receive(headers(sids[0], b"\x88" + insert_a) + headers(sids[0], b"\xbe", True)
                 + headers(sids[1], b"\x88\xbe") + headers(sids[1], b"\xbe", True))
    assert rec.of("trailers") == [("trailers", sids[0], [(b"x-a", b"1")]),
                                  ("trailers", sids[1], [(b"x-a", b"1")])]
    assert rec.of("reset") == []
    # Entry 62 becomes connection: close (its own block is refused, the table moves).
    ours.receive(headers(sids[2], b"\x88" + insert_bad))
    assert rec.of("reset") == [("reset", sids[2], h2f.PROTOCOL_ERROR, False)]
    ours.receive(headers(sids[3], b"\x88\xbe"))
    ours.receive(headers(sids[4], b"\x88") + headers(sids[4], b"\xbe", True))
    assert rec.of("reset")[1:] == [("reset", sids[3], h2f.PROTOCOL_ERROR, False),
                                   ("reset", sids[4], h2f.PROTOCOL_ERROR, False)]
    assert len(rec.of("trailers")) == 2
    assert ours.stats_malformed == 3
