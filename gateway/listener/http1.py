"""HTTP/1.1 downstream: httptools callbacks in, exchanges out, response bytes back.

The protocol only decodes and encodes; every decision about the request lives
in `gateway.proxy.exchange`.  Requests on one connection are answered in
order: a pipelined request waits in `queue` (its body buffered, reading paused)
until the exchange before it has finished.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque

import httptools

from gateway.proxy import local_reply as replies
from gateway.proxy.exchange import Exchange
from gateway.proxy.local_reply import reason_phrase

log = logging.getLogger("gateway.listener")

# Reasons reading from the client is paused (a bit each; reading resumes at zero).
PAUSE_PIPELINE = 1      # a response is still in flight for an earlier request
PAUSE_BACKPRESSURE = 2  # the upstream (or the buffer in front of it) is full
PAUSE_TUNNEL = 4        # an upgrade waits for the backend's 101

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # RFC 9113 3.4


class Http1Downstream(asyncio.Protocol):
    __slots__ = (
        "ctx", "transport", "parser", "peername", "sockname", "client_ip",
        "headers", "url", "head_size", "head_bytes", "reading_head", "head_started",
        "head_in_progress", "head_progress",
        "saw_connection_header", "upgrade_value", "host", "content_length", "chunked",
        "expect_continue", "current", "active", "queue", "paused", "starting",
        "closing", "idle_since", "corked", "response_chunked", "response_close_delimited",
        "tunnel", "tunnel_buffer", "tunnel_sent", "tunnel_received", "error_reply",
        "write_paused", "trailers", "forwarded_headers", "client_cert_header", "fresh",
        "grpc_web",
    )

    def __init__(self, ctx):
        self.ctx = ctx
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.peername = None
        self.sockname = None
        self.client_ip = b""
        self.headers = None
        self.url = b""
        self.head_size = 0
        self.head_bytes = 0          # bytes of a header field httptools is still accumulating
        self.reading_head = True     # between messages or inside a head (trailers come after)
        self.head_started = 0.0
        self.head_in_progress = False
        self.head_progress = False   # a head callback ran during the current feed
        self.saw_connection_header = False
        self.upgrade_value = b""
        self.host = None
        self.content_length = None
        self.chunked = False
        self.expect_continue = False
        self.current = None     # exchange whose request is being read
        self.active = None      # exchange whose response is being written
        self.queue = deque()    # pipelined exchanges waiting for `active`
        self.paused = 0
        self.starting = False
        self.closing = False
        self.idle_since = 0.0
        self.corked = None      # response head held back to share a write with the body
        self.response_chunked = False
        self.response_close_delimited = False
        self.tunnel = None
        self.tunnel_buffer = None
        self.tunnel_sent = 0
        self.tunnel_received = 0
        self.error_reply = None
        self.write_paused = False
        self.trailers = None
        self.forwarded_headers = ctx.forwarded_headers   # x-forwarded-proto/-port for this connection
        self.client_cert_header = None                   # XFCC value of a verified client certificate
        self.fresh = True       # nothing read yet (or the bytes of a possible HTTP/2 preface)
        self.grpc_web = None    # content-type of a gRPC-Web request head (proxy/grpc_web.py)

    # ------------------------------------------------------------ connection

    def connection_made(self, transport) -> None:
        self.transport = transport
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        self.peername = peer[:2] if peer else None
        sock = transport.get_extra_info("sockname")
        self.sockname = sock[:2] if sock else None
        self.client_ip = peer[0].encode() if peer else b"unknown"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.forwarded_headers = ctx.forwarded_https
            if ctx.tls is not None:
                self.client_cert_header = ctx.tls.xfcc(ssl_object)
        ctx.connections.add(self)
        stats = ctx.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        self.idle_since = ctx.now
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._become_http2(b"")

    def connection_lost(self, exc) -> None:
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.busy.discard(self)
        ctx.stats.downstream_cx_active -= 1
        self.closing = True
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close_tunnel()
            return
        ex = self.active
        if ex is not None:
            ex.on_downstream_lost()
        for ex in self.queue:
            ex.done = True
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.fresh:
            # h2c with prior knowledge (RFC 9113 3.3).  A first read too short to
            # tell ("P" may start "POST") is held until it can be told apart.
            if self.fresh is not True:
                data = self.fresh + data
            if data[:14] == PREFACE[:14]:
                self._become_http2(data)
                return
            if len(data) < 14 and PREFACE.startswith(data):
                self.fresh = data
                return
            self.fresh = False
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel_received += len(data)
            tunnel.transport.write(data)
            return
        if self.closing:
            return
        if self.tunnel_buffer is not None:
            self.tunnel_buffer.append(data)
            return
        self.head_progress = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as exc:
            reply = self.error_reply
            if reply is None:
                if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
                    log.error("bug while handling a request", exc_info=exc.__context__)
                reply = replies.BAD_REQUEST
            self._reject(reply)
            return
        if self.head_in_progress and not self.head_progress:
            # httptools buffers a header field until it ends and tells us nothing:
            # a read that completed no field of an open head all belongs to one.
            self.head_bytes += len(data)
            if self.head_bytes + self.head_size > self.ctx.limits.max_request_header_bytes:
                self._reject(replies.HEADERS_TOO_LARGE)

    def eof_received(self):
        tunnel = self.tunnel
        if tunnel is not None:
            # Half-close travels through the tunnel; the other direction stays open.
            if tunnel.transport.can_write_eof():
                tunnel.transport.write_eof()
            return True
        # A client half-close with nothing in flight ends the connection; with a
        # request in flight, its response is still delivered.
        return self.active is not None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.transport.pause_reading()
            return
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.transport.resume_reading()
            return
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def _become_http2(self, data: bytes) -> None:
        from gateway.listener.http2 import Http2Downstream
        self.fresh = False
        self.closing = True
        self.ctx.connections.discard(self)
        Http2Downstream(self.ctx).take_over(self.transport, self, data)

    # ----------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.url = b""
        self.head_size = 0
        self.head_bytes = 0
        self.head_in_progress = True
        self.head_progress = True
        self.head_started = self.ctx.now
        self.saw_connection_header = False
        self.host = None
        self.content_length = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade_value = b""
        self.trailers = None
        self.grpc_web = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        self.head_progress = True
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        self.head_progress = True
        self.head_bytes = 0
        limits = self.ctx.limits
        if self.head_size > limits.max_request_header_bytes or len(self.headers) >= limits.max_request_headers:
            self.error_reply = replies.HEADERS_TOO_LARGE
            raise ValueError("header section too large")
        name = name.lower()
        if not self.reading_head:
            # Trailer fields of a chunked request body.
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
            return
        self.headers.append((name, value))
        # Only the few fields the gateway acts on are looked at here.
        if name == b"host":
            if self.host is not None:
                self.error_reply = replies.BAD_REQUEST   # RFC 9112 3.2: exactly one Host
                raise ValueError("duplicate host")
            self.host = value
        elif name == b"content-length":
            if not value.isdigit():
                self.error_reply = replies.BAD_REQUEST
                raise ValueError("bad content-length")
            length = int(value)
            if self.content_length is not None and self.content_length != length:
                self.error_reply = replies.BAD_REQUEST
                raise ValueError("conflicting content-length")
            self.content_length = length
        elif name == b"transfer-encoding":
            self.chunked = True   # llhttp rejects anything but a final "chunked"
        elif name == b"connection":
            self.saw_connection_header = True
        elif name == b"upgrade":
            self.upgrade_value = value
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_continue = True
        elif name == b"content-type":
            if value[:20] == b"application/grpc-web":
                self.grpc_web = value

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_in_progress = False
        self.head_bytes = 0
        parser = self.parser
        if self.chunked and self.content_length is not None:
            # RFC 9112 6.3: a message with both is a smuggling attempt; never forward it.
            self.error_reply = replies.BAD_REQUEST
            raise ValueError("content-length with transfer-encoding")
        upgrade = self.upgrade_value if self.upgrade_value and parser.should_upgrade() else None
        ex = Exchange(self, parser.get_method(), self.url, self.headers, self.host,
                      self.content_length, self.chunked, upgrade, self.saw_connection_header,
                      self.expect_continue, parser.should_keep_alive(), parser.get_http_version())
        ex.grpc_web = self.grpc_web
        self.ctx.stats.downstream_rq_total += 1
        self.current = ex
        if self.active is None and not self.queue:
            self.active = ex
            self.ctx.busy.add(self)
            ex.start()
        else:
            self.queue.append(ex)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.on_request_body(body)

    def on_message_complete(self) -> None:
        self.reading_head = True
        ex = self.current
        self.current = None
        if ex is not None:
            ex.on_request_end(self.trailers)

    # -------------------------------------------------------- response writes

    def send_head(self, ex, status: int, reason: bytes, headers, length: int, bodyless: bool) -> None:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        self.response_chunked = False
        self.response_close_delimited = False
        if status == 101:
            pass
        elif bodyless:
            if length >= 0 and status != 204:
                parts.append(b"content-length: %d\r\n" % length)
        elif length >= 0:
            parts.append(b"content-length: %d\r\n" % length)
        elif ex.protocol == "HTTP/1.1":
            self.response_chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.response_close_delimited = True
            ex.close_after = True
        if ex.close_after or self.closing:
            parts.append(b"connection: close\r\n\r\n")
        elif ex.protocol == "HTTP/1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        self.corked = b"".join(parts)

    def send_body(self, chunk: bytes) -> None:
        if self.response_chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        corked = self.corked
        if corked is not None:
            self.corked = None
            chunk = corked + chunk
        self.transport.write(chunk)

    def send_end(self, trailers) -> None:
        if self.response_chunked:
            tail = b"0\r\n"
            if trailers:
                tail += b"".join(b"%s: %s\r\n" % t for t in trailers)
            tail += b"\r\n"
        else:
            tail = b""
        corked = self.corked
        if corked is not None:
            self.corked = None
            tail = corked + tail
        if tail:
            self.transport.write(tail)

    def send_continue(self) -> None:
        self.transport.write(CONTINUE)

    def send_informational(self, status: int, reason: bytes, headers) -> None:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def send_local_reply(self, ex, reply: replies.LocalReply) -> list:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(reply.body)),
                   (b"date", self.ctx.date_header)]
        if reply.overloaded:
            headers.append((b"x-envoy-overloaded", b"true"))
        if reply.headers:
            headers += reply.headers
        if ex.close_after or self.closing:
            headers.append((b"connection", b"close"))
        head = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reason_phrase(reply.status))]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if ex.method != "HEAD":
            head.append(reply.body)
        self.transport.write(b"".join(head))
        return headers

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------- exchange lifecycle

    def exchange_done(self, ex, close: bool) -> None:
        if ex is not self.active:
            return
        self.active = None
        self.ctx.busy.discard(self)
        if close or self.closing:
            self.closing = True
            self.queue.clear()
            self.transport.close()
            return
        if self.starting:
            return   # the loop below picks up the next exchange
        self.starting = True
        try:
            while self.active is None and self.queue:
                nxt = self.queue.popleft()
                self.active = nxt
                self.ctx.busy.add(self)
                nxt.start()
        finally:
            self.starting = False
        if self.active is None:
            self.idle_since = self.ctx.now
            if self.paused & (PAUSE_PIPELINE | PAUSE_BACKPRESSURE):
                # Backpressure belonged to the finished exchange's upstream, which
                # will not resume us any more.
                self._resume(PAUSE_PIPELINE | PAUSE_BACKPRESSURE)

    def _reject(self, reply: replies.LocalReply) -> None:
        """Malformed request: answer (if nothing is in flight) and close."""
        stats = self.ctx.stats
        if reply is replies.HEADERS_TOO_LARGE:
            stats.downstream_rq_header_too_large += 1
        else:
            stats.downstream_cx_protocol_error += 1
        self.closing = True
        self.queue.clear()
        if self.active is None or not self.active.head_sent:
            body = reply.body
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (reply.status, reason_phrase(reply.status), len(body), body))
        if self.active is not None:
            self.active.on_downstream_lost()
        self.transport.close()

    # ----------------------------------------------------------- flow control

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        was = self.paused
        self.paused &= ~reason
        if was and not self.paused and not self.closing:
            self.transport.resume_reading()

    def pause_reading_for(self, ex) -> None:
        self._pause(PAUSE_BACKPRESSURE)

    def resume_reading_for(self, ex) -> None:
        if self.paused & PAUSE_BACKPRESSURE:
            self._resume(PAUSE_BACKPRESSURE)

    # ------------------------------------------------------------------ tunnel

    def _on_upgrade(self, leftover: bytes) -> None:
        """The request asked to switch protocols; hold its bytes until the 101."""
        ex = self.active
        if ex is None or not ex.upgrade or ex.done:
            # Upgrade refused before routing (e.g. no route): nothing to tunnel to.
            self.closing = True
            if ex is None:
                self.transport.close()
            return
        self.tunnel_buffer = [leftover] if leftover else []
        self._pause(PAUSE_TUNNEL)

    def start_tunnel(self, ex, conn, leftover: bytes) -> None:
        parts = [b"HTTP/1.1 101 %s\r\n" % (b"Switching Protocols",)]
        for name, value in ex.response_headers or ():
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        if leftover:
            parts.append(leftover)
            self.tunnel_sent += len(leftover)
        self.corked = None
        self.transport.write(b"".join(parts))
        self.tunnel = conn
        conn.join_tunnel(self, ex)
        buffered, self.tunnel_buffer = self.tunnel_buffer or [], None
        for chunk in buffered:
            self.tunnel_received += len(chunk)
            conn.transport.write(chunk)
        self._resume(PAUSE_TUNNEL)

    def close_tunnel(self) -> None:
        """The backend side of the tunnel ended."""
        self.tunnel = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -------------------------------------------------------------- timeouts

    def check_idle(self, now: float) -> None:
        """Keep-alive idle and header timeouts; called once a second by the tick."""
        if self.active is not None or self.tunnel is not None or self.closing:
            return
        if self.current is None and self.reading_head:
            limits = self.ctx.limits
            if self.head_in_progress:
                if now - self.head_started > limits.request_header_timeout:
                    self._reject(replies.REQUEST_TIMEOUT)
            elif now - self.idle_since > limits.downstream_idle_timeout:
                self.ctx.stats.downstream_cx_idle_timeout += 1
                self.closing = True
                self.transport.close()

    def check_exchange(self, now: float) -> None:
        """Request deadline and stream idle timeout of the exchange in flight."""
        ex = self.active
        if ex is None or self.tunnel is not None:
            return
        if ex.deadline and now >= ex.deadline:
            ex.on_timeout()
            return
        service = ex.service
        if service is not None and service.idle_timeout and now - ex.last_activity > service.idle_timeout:
            ex.on_idle_timeout()
