"""HTTP/1.1 upstream connection: one exchange at a time, kept alive in its endpoint's pool.

A connection is reusable only when the response ended cleanly, the backend did
not ask to close, and the whole request went out.  httptools' should_keep_alive()
is read inside on_message_complete: once feed_data has returned it reports
False, and a pool reading it there would silently reconnect for every request.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from gateway.proxy.headers import HOP_BY_HOP, PLAIN_CONNECTION_VALUES, connection_tokens

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange
    from gateway.upstream.cluster import Endpoint


class Http1Upstream(asyncio.Protocol):
    __slots__ = (
        "endpoint", "transport", "parser", "exchange", "reused", "got_bytes", "closing",
        "in_pool", "idle_since", "headers", "reason", "length", "chunked", "in_head",
        "informational", "head_only_done", "dirty", "trailers", "response_started",
        "tunnel", "tunnel_ex", "reading_paused", "connection_tokens", "upgrade_header",
    )

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.reused = False
        self.got_bytes = False
        self.closing = False
        self.in_pool = False
        self.idle_since = 0.0
        self.headers = None
        self.reason = b""
        self.length = -1
        self.chunked = False
        self.in_head = True
        self.informational = False
        self.head_only_done = False
        self.dirty = False
        self.trailers = None
        self.response_started = False
        self.tunnel = None
        self.tunnel_ex = None
        self.reading_paused = False
        self.connection_tokens = None   # extra hop-by-hop fields named in Connection
        self.upgrade_header = None

    # ------------------------------------------------------------ connection

    def connection_made(self, transport) -> None:
        self.transport = transport
        stats = self.endpoint.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.endpoint.stats.upstream_cx_active -= 1
        self.endpoint.forget(self)
        if self.tunnel is not None:
            ds, ex = self.tunnel, self.tunnel_ex
            self.tunnel = self.tunnel_ex = None
            ds.close_tunnel()
            ex.on_tunnel_closed(ds.tunnel_sent, ds.tunnel_received)
            return
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        if (exc is None and self.response_started and not self.in_head
                and self.length < 0 and not self.chunked):
            # A response without length or chunking ends when the backend closes
            # cleanly; a reset instead is a truncation.
            ex.on_response_end(None)
            return
        reason = "connection termination" if exc is None else f"connection reset: {exc}"
        ex.on_upstream_lost(self, reason, self.got_bytes)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.tunnel_sent += len(data)
            tunnel.transport.write(data)
            return
        if self.exchange is None:
            # Bytes from a backend that owes us nothing: the stream is out of step.
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._open_tunnel(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as exc:
            ex = self.exchange
            self.exchange = None
            self.abort()
            if ex is not None:
                ex.on_upstream_protocol_error(self, f"invalid response: {exc}")
            return
        if self.head_only_done:
            # The response to HEAD had no body although its head announced one:
            # llhttp cannot be told, so the parser is replaced for the next message.
            self.head_only_done = False
            self.parser = httptools.HttpResponseParser(self)
            if self.dirty:
                self.abort()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.pause_reading()
            return
        ex = self.exchange
        if ex is not None:
            ex.downstream.pause_reading_for(ex)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.resume_reading()
            return
        ex = self.exchange
        if ex is not None:
            ex.downstream.resume_reading_for(ex)

    # -------------------------------------------------------- request writes

    def send_head(self, ex: Exchange, head: bytes) -> None:
        self.exchange = ex
        self.got_bytes = False
        self.response_started = False
        self.transport.write(head)

    def send_body(self, chunk: bytes, chunked: bool) -> None:
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.transport.write(chunk)

    def send_end(self, chunked: bool, trailers) -> None:
        if chunked:
            if trailers:
                self.transport.write(b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n")
            else:
                self.transport.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection; whatever it carried is not reusable."""
        self.closing = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        self.exchange = None
        self.endpoint.release(self)

    def pause_reading(self) -> None:
        """The client is slower than the backend: stop reading until it drains."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.closing:
                self.transport.resume_reading()

    # ----------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.length = -1
        self.chunked = False
        self.in_head = True
        self.trailers = None
        self.connection_tokens = None
        self.response_started = True

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if not self.in_head:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
            return
        if name in HOP_BY_HOP:
            # Framing and connection fields stop here; the client side re-frames.
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = True
            elif name == b"connection" and value not in PLAIN_CONNECTION_VALUES:
                self.connection_tokens = connection_tokens([(name, value)])
            elif name == b"upgrade":
                self.upgrade_header = value
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        ex = self.exchange
        if status < 200:
            # 1xx heads end their own message; 101 then hands the bytes to the tunnel.
            self.informational = True
            if status != 101:
                ex.on_informational(status, self.reason, self.headers)
            return
        if self.chunked:
            self.length = -1
        elif status in (204, 304):
            self.length = 0
        headers = self.headers
        tokens = self.connection_tokens
        if tokens:
            headers = [h for h in headers if h[0] not in tokens]
        ex.on_response_head(status, self.reason, headers, self.length)
        if ex.method == "HEAD":
            self.head_only_done = True
            self._complete(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.head_only_done:
            self.dirty = True
            return
        ex = self.exchange
        if ex is not None:
            ex.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.head_only_done:
            return
        self._complete(self.parser.should_keep_alive())

    def _complete(self, keep_alive: bool) -> None:
        ex = self.exchange
        self.exchange = None
        self.response_started = False
        if ex is None:
            return
        # Hand the connection back before the exchange finishes, so the next
        # pipelined request on the client connection can take it at once.
        if keep_alive and ex.upstream_request_done and not self.closing:
            self.endpoint.release(self)
        else:
            self.closing = True
            self.transport.close()
        ex.on_response_end(self.trailers)

    # ------------------------------------------------------------------ tunnel

    def _open_tunnel(self, leftover: bytes) -> None:
        ex = self.exchange
        self.exchange = None
        if ex is None or self.parser.get_status_code() != 101 or not ex.upgrade:
            self.abort()
            if ex is not None:
                ex.on_upstream_protocol_error(self, "unexpected protocol switch")
            return
        headers = list(self.headers)
        headers += ((b"connection", b"upgrade"), (b"upgrade", self.upgrade_header or b""))
        ex.on_tunnel_open(self, self.reason, headers, leftover)

    def join_tunnel(self, downstream, ex) -> None:
        self.tunnel = downstream
        self.tunnel_ex = ex

    def close_tunnel(self) -> None:
        """The client side of the tunnel ended."""
        ds, ex = self.tunnel, self.tunnel_ex
        self.tunnel = self.tunnel_ex = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if ex is not None:
            ex.on_tunnel_closed(ds.tunnel_sent, ds.tunnel_received)
