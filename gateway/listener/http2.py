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

WebSocket over HTTP/2 (RFC 8441): an extended CONNECT goes upstream as an
HTTP/1.1 GET upgrade; the backend's 101 becomes a 200 and the stream a tunnel
(`H2Stream.start_tunnel`), under the same flow control.  Plain CONNECT is refused.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections import deque
from urllib.parse import quote

from gateway.h2 import frames as h2f
from gateway.h2.connection import H2Connection, H2Settings, open_windows
from gateway.proxy import local_reply as replies
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import grpc_timeout_seconds

log = logging.getLogger("gateway.listener")
KEEPALIVE_PING = b"gw-alive"   # the opaque data of our keepalive PINGs

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Listeners accept RFC 8441 extended CONNECT (WebSocket over HTTP/2) unless told otherwise.
DEFAULT_SETTINGS = H2Settings(enable_connect_protocol=True)
_STATUS = {code: b"%d" % code for code in range(100, 600)}
# Whole :status fields: the encoder's field cache then finds the very key object.
_STATUS_FIELD = {code: (b":status", value) for code, value in _STATUS.items()}
# The 101's connection fields and the handshake proof have no meaning to an HTTP/2
# client (RFC 8441 5): its tunnel opens with a plain 200.
_TUNNEL_DROP = frozenset((b"connection", b"upgrade", b"sec-websocket-accept"))
# The request fields on_headers looks at, by name: one dict lookup per field. The codec
# has refused any pseudo-header not listed here (RFC 9113 8.3), so every other name is
# a regular field.
_F_METHOD, _F_PATH, _F_AUTHORITY, _F_PROTOCOL, _F_SCHEME = 1, 2, 3, 4, 5
_F_REGULAR = 6          # kinds from here on are regular fields
_F_CONTENT_LENGTH, _F_CONTENT_TYPE, _F_GRPC_TIMEOUT, _F_HOST = 6, 7, 8, 9
_REQUEST_FIELDS = {b":method": _F_METHOD, b":path": _F_PATH, b":authority": _F_AUTHORITY,
                   b":protocol": _F_PROTOCOL, b":scheme": _F_SCHEME,
                   b"content-length": _F_CONTENT_LENGTH, b"content-type": _F_CONTENT_TYPE,
                   b"grpc-timeout": _F_GRPC_TIMEOUT, b"host": _F_HOST}



def _websocket_handshake(headers: list) -> list:
    """The HTTP/1.1 handshake fields an RFC 8441 client does not send (RFC 8441 5):
    a fresh Sec-WebSocket-Key, and a version if it left that out."""
    out = [h for h in headers if h[0] != b"sec-websocket-key"]
    if not any(h[0] == b"sec-websocket-version" for h in out):
        out.append((b"sec-websocket-version", b"13"))
    out.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
    return out


class H2Stream:
    """The downstream side of one exchange on an HTTP/2 connection."""
    __slots__ = ("owner", "conn", "sid", "ctx", "exchange", "client_ip", "forwarded_headers",
                 "client_cert_header", "peername", "sockname", "corked", "pending", "pending_end",
                 "pending_trailers", "read_paused", "unacked", "ended", "upstream_paused",
                 "request_ended", "tunnel", "transport", "tunnel_buffer", "tunnel_sent",
                 "tunnel_received")

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
        self.tunnel = None          # the HTTP/1.1 upstream an extended CONNECT was joined to
        self.transport = None       # what that upstream writes to and pauses (_TunnelPort)
        self.tunnel_buffer = None   # client DATA that came before the backend's 101
        self.tunnel_sent = 0
        self.tunnel_received = 0

    @property
    def write_paused(self) -> bool:
        return self.owner.write_paused or bool(self.pending)

    # ----------------------------------------------------------- response

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers, length: int,
                  bodyless: bool) -> None:
        head = [_STATUS_FIELD.get(status) or (b":status", b"%d" % status)]
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
            if reply.headers:
                headers += reply.headers
            ex.grpc_status = str(reply.grpc_status)
            self.conn.send_headers(self.sid, [(b":status", b"200")] + headers, True)
        else:
            headers = [(b"content-type", b"text/plain"),
                       (b"content-length", b"%d" % len(reply.body)),
                       (b"date", self.ctx.date_header)]
            if reply.overloaded:
                headers.append((b"x-envoy-overloaded", b"true"))
            if reply.headers:
                headers += reply.headers
            if ex.method == "HEAD":
                self.conn.send_headers(self.sid, [(b":status", _STATUS[reply.status])] + headers, True)
            else:
                # Through the flow-controlled path: a client with a small window
                # still gets the whole body, later.
                self.corked = [(b":status", _STATUS[reply.status])] + headers
                self.send_body(reply.body)
                self.send_end(None)
                return headers
        self.ended = True
        self.owner.schedule_flush()
        return headers

    def abort(self) -> None:
        """Too late for a status: reset the stream so the client sees the truncation."""
        if not self.ended:
            self.ended = True
            self.conn.reset_stream(self.sid, h2f.INTERNAL_ERROR)
            self.owner.schedule_flush()
        if self.tunnel is not None:
            self.drop_tunnel()

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
        upstream = self.tunnel
        if upstream is None:
            ex = self.exchange
            upstream = ex.upstream if ex is not None else None
        if upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            upstream.pause_reading()

    def _resume_upstream(self) -> None:
        if self.upstream_paused and not self.owner.write_paused:
            self.upstream_paused = False
            upstream = self.tunnel
            if upstream is None:
                ex = self.exchange
                upstream = ex.upstream if ex is not None else None
            if upstream is not None:
                upstream.resume_reading()

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

    # ------------------------------------------------ extended CONNECT tunnel
    #
    # RFC 8441: after our 200 the stream's DATA frames are the tunnel's bytes. The
    # backend is an HTTP/1.1 connection that answered 101 (upstream/http1.py); it
    # writes to and pauses `self.transport` as it would a client socket, and flow
    # control does the rest: its bytes go out only as the client's window allows
    # (reading from it pauses otherwise), and client DATA is acknowledged only
    # while its socket takes the bytes.

    def start_tunnel(self, ex: Exchange, conn, leftover: bytes) -> None:
        head = [(b":status", b"200")]
        head += [h for h in ex.response_headers or () if h[0] not in _TUNNEL_DROP]
        ex.status = 200     # what the client got; the backend's 101 stays upstream
        self.corked = None
        self.conn.send_headers(self.sid, head, False)
        self.tunnel = conn
        self.transport = _TunnelPort(self)
        conn.join_tunnel(self, ex)
        if leftover:
            self.tunnel_sent += len(leftover)
            self.send_body(leftover)
        buffered, self.tunnel_buffer = self.tunnel_buffer, None
        if buffered:
            write = conn.transport.write
            for chunk in buffered:
                self.tunnel_received += len(chunk)
                write(chunk)
        if self.request_ended:
            self._tunnel_eof(conn)
        if self.unacked and not self.read_paused:
            self.conn.ack_data(self.sid, self.unacked)
            self.unacked = 0
        self.owner.schedule_flush()

    def tunnel_data(self, data: bytes, end_stream: bool, flow_len: int) -> None:
        """Client DATA on an extended CONNECT stream."""
        tunnel = self.tunnel
        if tunnel is None:
            # The 101 has not come yet (or never will): hold the bytes without
            # acknowledging them, so the client's window is the bound.
            if data:
                if self.tunnel_buffer is None:
                    self.tunnel_buffer = [data]
                else:
                    self.tunnel_buffer.append(data)
            self.unacked += flow_len
            if end_stream:
                self.request_ended = True
            return
        if data:
            self.tunnel_received += len(data)
            self.exchange.last_activity = self.ctx.now
            tunnel.transport.write(data)
        if self.read_paused:
            self.unacked += flow_len
        else:
            self.conn.ack_data(self.sid, flow_len)
        if end_stream:
            self.request_ended = True
            self._tunnel_eof(tunnel)

    @staticmethod
    def _tunnel_eof(tunnel) -> None:
        # END_STREAM is a half-close: the backend may still answer (RFC 8441 4 / RFC 9113 8.5).
        transport = tunnel.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close_tunnel(self) -> None:
        """The backend side of the tunnel ended: END_STREAM once its bytes are out."""
        self.tunnel = None
        self.send_end(None)

    def drop_tunnel(self) -> None:
        """The client reset the stream or went away: the backend connection is cut."""
        tunnel = self.tunnel
        self.tunnel = None
        if tunnel.transport is not None:
            tunnel.transport.abort()
        tunnel.close_tunnel()     # ends the exchange


class _TunnelPort:
    """The client end of a tunnel as the HTTP/1.1 upstream sees it: a transport to
    write backend bytes to and to pause (its own write buffer is full) or resume."""
    __slots__ = ("stream",)

    def __init__(self, stream: H2Stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        stream = self.stream
        ex = stream.exchange
        if ex is not None:
            ex.last_activity = stream.ctx.now
        stream.send_body(data)

    def pause_reading(self) -> None:
        self.stream.read_paused = True

    def resume_reading(self) -> None:
        self.stream.resume_reading_for(None)


class Http2Downstream(asyncio.Protocol):
    """One client connection speaking HTTP/2."""
    __slots__ = ("ctx", "loop", "transport", "conn", "streams", "peername", "sockname",
                 "client_ip", "forwarded_headers", "client_cert_header", "closing",
                 "idle_since", "flush_pending", "write_paused", "last_read", "ping_sent")

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
        self.last_read = ctx.now
        self.ping_sent = 0.0        # when the keepalive PING in flight went out

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
            if stream.tunnel is not None:
                stream.drop_tunnel()
            ex = stream.exchange
            if ex is not None:
                ex.on_downstream_lost()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.ctx.now
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
        grpc_web = None
        grpc_timeout = 0.0
        regular = []
        append = regular.append
        kinds = _REQUEST_FIELDS
        for field in headers:
            kind = kinds.get(field[0])
            if kind is None:
                append(field)   # the codec's own tuple: no copy
                continue
            value = field[1]
            if kind < _F_REGULAR:
                if kind == _F_METHOD:
                    method = value
                elif kind == _F_PATH:
                    path = value
                elif kind == _F_AUTHORITY:
                    authority = value
                elif kind == _F_PROTOCOL:
                    protocol = value
                continue
            if kind == _F_CONTENT_LENGTH:
                content_length = int(value) if value.isdigit() else -1
            elif kind == _F_CONTENT_TYPE:
                grpc = value.startswith(b"application/grpc")
                if grpc and value[16:20] == b"-web":
                    grpc_web = value    # translated by the exchange (proxy/grpc_web.py)
            elif kind == _F_GRPC_TIMEOUT:
                grpc_timeout = grpc_timeout_seconds(value)
            else:
                host = value
                continue        # :authority wins (RFC 9113 8.3.1); Host goes out rebuilt
            append(field)
        ctx = self.ctx
        if len(regular) > ctx.limits.max_request_headers:
            # The HTTP/1.1 count limit (maxRequestHeaders) holds here too; the byte
            # budget is the codec's max_header_list_size.
            return self.on_headers_too_large(sid)
        if method == b"CONNECT" and not protocol:
            # Plain CONNECT asks for a TCP tunnel to any host: we are not a forward proxy.
            self.conn.reset_stream(sid, h2f.PROTOCOL_ERROR)
            self.schedule_flush()
            return
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
        upgrade = None
        if method == b"CONNECT":
            # Extended CONNECT (RFC 8441) goes upstream as the HTTP/1.1 upgrade it stands for:
            # routed as a GET, its stream's DATA the tunnel's bytes once the backend agrees.
            upgrade = protocol
            method = b"GET"
            content_length = None
            if protocol.lower() == b"websocket":
                regular = _websocket_handshake(regular)
        chunked = not end_stream and content_length is None and upgrade is None
        ex = Exchange(stream, method, path or b"", regular, authority or host, content_length,
                      chunked, upgrade, False, False, True, "2")
        if end_stream:
            ex.request_complete = True
        ex.grpc = grpc
        ex.grpc_timeout = grpc_timeout
        ex.grpc_web = grpc_web
        stream.exchange = ex
        ex.start()

    def on_data(self, sid: int, data: bytes, end_stream: bool, flow_len: int) -> None:
        stream = self.streams.get(sid)
        ex = stream.exchange if stream is not None else None
        if ex is None:
            self.conn.ack_data(sid, flow_len)   # keep the connection window open
            return
        if ex.upgrade is not None:
            stream.tunnel_data(data, end_stream, flow_len)
            return
        if data:
            ex.on_request_body(data, end_stream)
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
        if stream.tunnel is not None:
            stream.drop_tunnel()
        ex = stream.exchange
        if ex is not None:
            # A client cancel: the upstream stream or connection is cancelled too.
            ex.on_downstream_lost()
        self.stream_done(stream)

    def on_window_open(self, sid: int) -> None:
        open_windows(self.streams, sid)

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
        """Connection idle timeout (no stream for downstream_idle_timeout): GOAWAY, close.
        Keepalive on every connection, streams or not: see `_keepalive`."""
        if self.closing:
            return
        limits = self.ctx.limits
        if not self.streams and now - self.idle_since > limits.downstream_idle_timeout:
            self.ctx.stats.downstream_cx_idle_timeout += 1
            self.close()
            return
        if limits.http2_keepalive_interval:
            self._keepalive(now, limits.http2_keepalive_interval, limits.http2_keepalive_timeout)

    def _keepalive(self, now: float, interval: float, timeout: float) -> None:
        """A PING once the client has been silent for `interval`; the connection is dropped
        when nothing at all arrives within `timeout` of it (a client gone without a FIN,
        a NAT that forgot us), so its streams and their upstreams are freed."""
        sent = self.ping_sent
        if sent:
            if self.last_read > sent:
                # Any frame proves the client alive, even with the ACK queued behind a
                # large upload (head-of-line blocking must not look like death).
                self.ping_sent = 0.0
            elif now - sent >= timeout:
                self._keepalive_failed()
                return
            else:
                return
        if now - self.last_read >= interval:
            self.ping_sent = now
            self.conn.send_ping(KEEPALIVE_PING)
            self.flush()

    def on_ping_ack(self, opaque: bytes) -> None:
        self.ping_sent = 0.0

    def _keepalive_failed(self) -> None:
        self.ctx.stats.downstream_cx_keepalive_timeout += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("HTTP/2 client %s: no answer to a keepalive PING; closing", self.peername)
        self.conn.send_goaway(h2f.NO_ERROR, b"keepalive timeout")
        out = self.conn.data_to_send()
        self.closing = True
        transport = self.transport
        if out:
            transport.write(out)
        # A client that stopped answering may have stopped reading: what it has not taken
        # would hold the connection open for ever.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

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
