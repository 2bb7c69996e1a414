"""HTTP/2 downstream: codec events in, one exchange per stream, frames back.

A connection becomes HTTP/2 in one of two ways, both decided by the HTTP/1.1
protocol that every listener starts with (listener/http1.py): TLS clients that
chose "h2" by ALPN, and plaintext clients whose first bytes are the HTTP/2
connection preface (h2c with prior knowledge).  That protocol then hands its
transport over with `Http2Downstream.take_over()`.

Each stream is an `H2Stream`, which gives the exchange the same calls an
HTTP/1.1 connection does (send_head / send_body / send_end / send_local_reply /
abort / exchange_done and the pause pair), so `proxy.exchange` is shared.
Backpressure is HTTP/2 flow control: request DATA is acknowledged only while
the upstream keeps up, and a response the client's window cannot take waits in
the stream with the upstream paused.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from urllib.parse import quote

from gateway.h2 import frames as h2f
from gateway.h2.connection import H2Connection, H2Settings
from gateway.proxy import local_reply as replies
from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway.listener")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_SETTINGS = H2Settings()
_STATUS = {code: b"%d" % code for code in range(100, 600)}
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout_seconds(value: bytes) -> float:
    """The grpc-timeout header (gRPC over HTTP/2 spec): 1-8 digits and a unit; 0 if malformed."""
    unit = _GRPC_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return 0.0
    return int(digits) * unit


class H2Stream:
    """The downstream side of one exchange on an HTTP/2 connection."""
    __slots__ = ("owner", "conn", "sid", "ctx", "exchange", "client_ip", "forwarded_headers",
                 "client_cert_header", "peername", "sockname", "corked", "pending", "pending_end",
                 "pending_trailers", "read_paused", "unacked", "ended", "upstream_paused",
                 "request_ended")

    def __init__(self, owner: Http2Downstream, sid: int):
        self.owner = owner
        self.conn = owner.conn
        self.sid = sid
        self.ctx = owner.ctx
        self.exchange: Exchange | None = None
        self.client_ip = owner.client_ip
        self.forwarded_headers = owner.forwarded_headers
        self.client_cert_header = owner.client_cert_header
        self.peername = owner.peername
        self.sockname = owner.sockname
        self.corked = None          # response head held back to go out with the first body bytes
        self.pending: deque | None = None   # response body beyond the client's window
        self.pending_end = False
        self.pending_trailers = None
        self.read_paused = False
        self.unacked = 0
        self.ended = False          # our side of the stream is finished (END_STREAM or RST)
        self.upstream_paused = False
        self.request_ended = False

    @property
    def write_paused(self) -> bool:
        return self.owner.write_paused or bool(self.pending)

    # ----------------------------------------------------------- response

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers, length: int,
                  bodyless: bool) -> None:
        head = [(b":status", _STATUS.get(status) or b"%d" % status)]
        head += headers
        if length >= 0 and status != 204 and status != 304:
            head.append((b"content-length", b"%d" % length))
        self.corked = head

    def send_body(self, chunk: bytes) -> None:
        if self.ended or not chunk:
            return
        conn = self.conn
        if self.corked is not None:
            conn.send_headers(self.sid, self.corked, False)
            self.corked = None
        if self.pending:
            self.pending.append(chunk)
        else:
            sent = conn.send_data(self.sid, chunk, False)
            if sent < len(chunk):
                self.pending = deque((memoryview(chunk)[sent:],))
                self._pause_upstream()
        self.owner.schedule_flush()

    def send_end(self, trailers) -> None:
        if self.ended:
            return
        if self.pending:
            self.pending_end = True
            self.pending_trailers = trailers
            return
        self._end(trailers)

    def _end(self, trailers) -> None:
        conn = self.conn
        self.ended = True
        if self.corked is not None:
            conn.send_headers(self.sid, self.corked, not trailers)
            self.corked = None
            if trailers:
                conn.send_trailers(self.sid, list(trailers))
        elif trailers:
            conn.send_trailers(self.sid, list(trailers))
        else:
            conn.send_data(self.sid, b"", True)
        self.owner.schedule_flush()

    def send_continue(self) -> None:
        self.conn.send_headers(self.sid, [(b":status", b"100")], False)
        self.owner.schedule_flush()

    def send_informational(self, status: int, reason: bytes, headers) -> None:
        self.conn.send_headers(self.sid, [(b":status", _STATUS[status])] + list(headers), False)
        self.owner.schedule_flush()

    def send_local_reply(self, ex: Exchange, reply: replies.LocalReply) -> list:
        if ex.grpc:
            # gRPC clients read errors from grpc-status, never from the HTTP status:
            # a trailers-only response, as Envoy answers.
            message = reply.body.decode().strip()
            headers = [(b"content-type", b"application/grpc"),
                       (b"grpc-status", b"%d" % reply.grpc_status),
                       (b"grpc-message", quote(message, safe=" ").encode())]
            ex.grpc_status = reply.grpc_status
            self.conn.send_headers(self.sid, [(b":status", b"200")] + headers, True)
        else:
            headers = [(b"content-type", b"text/plain"),
                       (b"content-length", b"%d" % len(reply.body)),
                       (b"date", self.ctx.date_header)]
            if reply.overloaded:
                headers.append((b"x-envoy-overloaded", b"true"))
            if ex.method == "HEAD":
                self.conn.send_headers(self.sid, [(b":status", _STATUS[reply.status])] + headers, True)
            else:
                self.conn.send_headers(self.sid, [(b":status", _STATUS[reply.status])] + headers, False)
                self.conn.send_data(self.sid, reply.body, True)
        self.ended = True
        self.owner.schedule_flush()
        return headers

    def abort(self) -> None:
        """Too late for a status: reset the stream so the client sees the truncation."""
        if not self.ended:
            self.ended = True
            self.conn.reset_stream(self.sid, h2f.INTERNAL_ERROR)
            self.owner.schedule_flush()

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        self.exchange = None
        if not self.request_ended and self.ended:
            # The response is complete but the client is still sending: tell it to
            # stop (RFC 9113 8.1) without failing the response it already has.
            self.conn.reset_stream(self.sid, h2f.NO_ERROR)
            self.owner.schedule_flush()
        if not self.pending:
            self.owner.stream_done(self)

    # ------------------------------------------------------- flow control

    def _pause_upstream(self) -> None:
        ex = self.exchange
        if ex is not None and ex.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            ex.upstream.pause_reading()

    def _resume_upstream(self) -> None:
        if self.upstream_paused and not self.owner.write_paused:
            self.upstream_paused = False
            ex = self.exchange
            if ex is not None and ex.upstream is not None:
                ex.upstream.resume_reading()

    def window_open(self) -> None:
        pending = self.pending
        if not pending:
            return
        conn = self.conn
        while pending:
            chunk = pending[0]
            sent = conn.send_data(self.sid, chunk, False)
            if sent < len(chunk):
                pending[0] = chunk[sent:]
                return
            pending.popleft()
        self.pending = None
        if self.pending_end:
            self.pending_end = False
            self._end(self.pending_trailers)
            self.pending_trailers = None
        if self.exchange is None:
            self.owner.stream_done(self)
        else:
            self._resume_upstream()

    def pause_reading_for(self, ex: Exchange) -> None:
        self.read_paused = True

    def resume_reading_for(self, ex: Exchange) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.unacked:
                self.conn.ack_data(self.sid, self.unacked)
                self.unacked = 0
                self.owner.schedule_flush()


class Http2Downstream(asyncio.Protocol):
    """One client connection speaking HTTP/2."""
    __slots__ = ("ctx", "loop", "transport", "conn", "streams", "peername", "sockname",
                 "client_ip", "forwarded_headers", "client_cert_header", "closing",
                 "idle_since", "flush_pending", "write_paused")

    def __init__(self, ctx):
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport = None
        self.conn = H2Connection(self, client=False, settings=ctx.h2_settings or DEFAULT_SETTINGS)
        self.streams: dict[int, H2Stream] = {}
        self.peername = None
        self.sockname = None
        self.client_ip = b"unknown"
        self.forwarded_headers = ctx.forwarded_headers
        self.client_cert_header = None
        self.closing = False
        self.idle_since = ctx.now
        self.flush_pending = False
        self.write_paused = False

    @property
    def active(self):
        """An exchange in flight, if any (the drain on shutdown waits for none)."""
        for stream in self.streams.values():
            if stream.exchange is not None:
                return stream.exchange
        return None

    # ------------------------------------------------------------ connection

    def take_over(self, transport, source, data: bytes) -> None:
        """Continue a connection an HTTP/1.1 protocol accepted (and already counted)."""
        self.transport = transport
        self.peername = source.peername
        self.sockname = source.sockname
        self.client_ip = source.client_ip
        self.forwarded_headers = source.forwarded_headers
        self.client_cert_header = source.client_cert_header
        self.ctx.connections.add(self)
        self.ctx.stats.downstream_cx_http2_total += 1
        transport.set_protocol(self)
        self.conn.initiate()
        if data:
            self.conn.receive(data)
        self.flush()

    def connection_lost(self, exc) -> None:
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.busy.discard(self)
        ctx.stats.downstream_cx_active -= 1
        self.closing = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.ended = True
            ex = stream.exchange
            if ex is not None:
                ex.on_downstream_lost()

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data)
        self.flush()

    def eof_received(self):
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream._pause_upstream()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if not stream.pending:
                stream._resume_upstream()

    def flush(self) -> None:
        self.flush_pending = False
        out = self.conn.data_to_send()
        if out and not self.closing:
            self.transport.write(out)
        if self.conn.closed and not self.streams and not self.closing:
            self.closing = True
            self.transport.close()

    def schedule_flush(self) -> None:
        # Responses of many streams finish in one loop pass: one write for all of them.
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.sid, None) is not None and not self.streams:
            self.ctx.busy.discard(self)
            self.idle_since = self.ctx.now
            if self.conn.closed:
                self.schedule_flush()

    # ------------------------------------------------------- codec callbacks

    def on_headers(self, sid: int, headers: list, end_stream: bool) -> None:
        method = path = authority = protocol = None
        host = None
        content_length = None
        grpc = False
        grpc_timeout = 0.0
        regular = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                continue
            if name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                grpc = value.startswith(b"application/grpc")
            elif name == b"grpc-timeout":
                grpc_timeout = grpc_timeout_seconds(value)
            elif name == b"host":
                host = value
                continue        # :authority wins (RFC 9113 8.3.1); Host goes out rebuilt
            regular.append((name, value))
        ctx = self.ctx
        stream = H2Stream(self, sid)
        stream.request_ended = end_stream
        self.streams[sid] = stream
        ctx.stats.downstream_rq_total += 1
        ctx.busy.add(self)
        if content_length == -1:
            ex = Exchange(stream, method or b"GET", path or b"/", regular, authority or host,
                          None, False, None, False, False, True, "2")
            stream.exchange = ex
            return ex._fail(replies.BAD_REQUEST)
        chunked = not end_stream and content_length is None
        upgrade = protocol if method == b"CONNECT" and protocol else None
        ex = Exchange(stream, method, path or b"", regular, authority or host, content_length,
                      chunked, upgrade, False, False, True, "2")
        if end_stream:
            ex.request_complete = True
        ex.grpc = grpc
        ex.grpc_timeout = grpc_timeout
        stream.exchange = ex
        ex.start()

    def on_data(self, sid: int, data: bytes, end_stream: bool, flow_len: int) -> None:
        stream = self.streams.get(sid)
        ex = stream.exchange if stream is not None else None
        if ex is None:
            self.conn.ack_data(sid, flow_len)   # keep the connection window open
            return
        if data:
            ex.on_request_body(data)
        if stream.read_paused:
            stream.unacked += flow_len
        else:
            self.conn.ack_data(sid, flow_len)
        if end_stream:
            stream.request_ended = True
            ex.on_request_end(None)

    def on_trailers(self, sid: int, headers: list) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.request_ended = True
        ex = stream.exchange
        if ex is not None:
            ex.on_request_end([(n, v) for n, v in headers if n[:1] != b":"])

    def on_reset(self, sid: int, error_code: int, by_peer: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.ended = True
        stream.pending = None
        ex = stream.exchange
        if ex is not None:
            # A client cancel: the upstream stream or connection is cancelled too.
            ex.on_downstream_lost()
        self.stream_done(stream)

    def on_window_open(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.window_open()
        else:
            for stream in list(self.streams.values()):
                if stream.pending:
                    stream.window_open()

    def on_goaway(self, last_stream_id: int, error_code: int, debug: bytes) -> None:
        if not self.streams:
            self.schedule_flush()

    def on_connection_error(self, error_code: int, reason: str) -> None:
        self.ctx.stats.downstream_cx_protocol_error += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("HTTP/2 client %s: %s (%s)", self.peername, reason, h2f.error_name(error_code))
        out = self.conn.data_to_send()
        if out and not self.closing:
            self.transport.write(out)
        self.closing = True
        self.transport.close()

    def on_headers_too_large(self, sid: int) -> None:
        self.ctx.stats.downstream_rq_header_too_large += 1
        body = replies.HEADERS_TOO_LARGE.body
        self.conn.send_headers(sid, [(b":status", b"431"), (b"content-type", b"text/plain"),
                                     (b"content-length", b"%d" % len(body))], False)
        self.conn.send_data(sid, body, True)
        self.schedule_flush()

    def on_settings(self, peer_max_concurrent_streams: int) -> None:
        pass

    # -------------------------------------------------------------- timeouts

    def check_idle(self, now: float) -> None:
        """Connection idle timeout (no stream for downstream_idle_timeout): GOAWAY, close."""
        if self.streams or self.closing:
            return
        if now - self.idle_since > self.ctx.limits.downstream_idle_timeout:
            self.ctx.stats.downstream_cx_idle_timeout += 1
            self.close()

    def check_exchange(self, now: float) -> None:
        for stream in list(self.streams.values()):
            ex = stream.exchange
            if ex is None:
                continue
            if ex.deadline and now >= ex.deadline:
                ex.on_timeout()
                continue
            service = ex.service
            if service is not None and service.idle_timeout and now - ex.last_activity > service.idle_timeout:
                ex.on_idle_timeout()

    def close(self) -> None:
        """Graceful close: GOAWAY with the last stream we took, then close when streams end."""
        if self.closing:
            return
        self.conn.send_goaway(h2f.NO_ERROR)
        self.flush()
        if not self.streams and not self.closing:
            self.closing = True
            self.transport.close()
