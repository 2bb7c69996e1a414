"""HTTP/2 upstream: multiplexed connections to HTTP/2 and gRPC backends.

An `Http2Endpoint` keeps a few connections per backend address and puts each
exchange on the first one with room under the peer's SETTINGS_MAX_CONCURRENT_STREAMS;
when all are full it opens another.  Exchanges that arrive while a connection
is still being set up wait for it (one connection serves up to
`ASSUMED_STREAMS` of them) instead of each opening their own.

The exchange talks to an `Http2UpstreamStream`, which offers the same calls as
an HTTP/1.1 upstream connection (send_head / send_body / send_end / abort /
pause_reading / resume_reading), so `proxy.exchange` does not care which
protocol the backend speaks.  Flow control is the backpressure: response DATA
is acknowledged (WINDOW_UPDATE) only while the client side keeps up, and
request DATA beyond the backend's window waits in the stream, pausing the client.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING

from gateway.h2.connection import H2Connection, H2Settings, open_windows
from gateway.h2 import frames as h2f
from gateway.proxy.headers import HOP_BY_HOP
from gateway.upstream.cluster import CONNECT_TIMEOUT, Endpoint

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway.upstream")

ASSUMED_STREAMS = 100        # streams a connection is expected to take before its SETTINGS arrive
UPSTREAM_SETTINGS = H2Settings()
# Response fields not passed on as they are: :status (the codec lets no other
# pseudo-header through in a response, RFC 9113 8.3.2) and hop-by-hop fields.
_RESPONSE_SKIP = HOP_BY_HOP | {b":status"}


class Http2UpstreamStream:
    """One exchange's stream on an upstream HTTP/2 connection."""
    __slots__ = ("upstream", "sid", "exchange", "reused", "corked", "pending", "pending_end",
                 "pending_trailers", "read_paused", "unacked", "got_bytes", "closed",
                 "response_started")

    def __init__(self, upstream: Http2Upstream, sid: int, ex: Exchange, reused: bool):
        self.upstream = upstream
        self.sid = sid
        self.exchange = ex
        self.reused = reused
        self.corked = None           # request head held back to share a frame batch with the body
        self.pending: deque | None = None   # request body beyond the backend's window
        self.pending_end = False
        self.pending_trailers = None
        self.read_paused = False
        self.unacked = 0
        self.got_bytes = False
        self.closed = False
        self.response_started = False

    # ---------------------------------------------------- the exchange's calls

    def send_head(self, ex: Exchange, headers: list) -> None:
        self.corked = headers

    def send_body(self, chunk: bytes, chunked: bool = False, end: bool = False) -> None:
        """end: the request ends with this chunk (END_STREAM on its last frame); the
        exchange then does not call send_end."""
        if self.closed or not chunk:
            return
        up = self.upstream
        conn = up.conn
        if self.corked is not None:
            conn.send_headers(self.sid, self.corked, False)
            self.corked = None
        if self.pending:
            self.pending.append(chunk)
            if end:
                self.pending_end = True
        else:
            sent = conn.send_data(self.sid, chunk, end)
            if sent < len(chunk):
                self.pending = deque((memoryview(chunk)[sent:],))
                if end:
                    self.pending_end = True
                ex = self.exchange
                if ex is not None:
                    ex.downstream.pause_reading_for(ex)
        up.schedule_flush()

    def send_end(self, chunked: bool = False, trailers=None) -> None:
        if self.closed:
            return
        up = self.upstream
        conn = up.conn
        if self.pending:
            self.pending_end = True
            self.pending_trailers = trailers
            return
        if self.corked is not None:
            conn.send_headers(self.sid, self.corked, not trailers)
            self.corked = None
            if trailers:
                conn.send_trailers(self.sid, list(trailers))
        elif trailers:
            conn.send_trailers(self.sid, list(trailers))
        else:
            conn.send_data(self.sid, b"", True)
        up.schedule_flush()

    def abort(self) -> None:
        """The exchange gives up on the stream (client gone, timeout): cancel it upstream."""
        if self.closed:
            return
        self.exchange = None
        self.upstream.reset(self, h2f.CANCEL)

    def release(self) -> None:
        # An exchange that ended before using the stream (client left while connecting).
        self.abort()

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.unacked and not self.closed:
                self.upstream.conn.ack_data(self.sid, self.unacked)
                self.unacked = 0
                self.upstream.schedule_flush()

    # ------------------------------------------------------------ flow control

    def window_open(self) -> None:
        """The backend's window grew: send what waits, then let the client go on."""
        pending = self.pending
        if not pending or self.closed:
            return
        conn = self.upstream.conn
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
            trailers, self.pending_trailers = self.pending_trailers, None
            if trailers:
                conn.send_trailers(self.sid, list(trailers))
            else:
                conn.send_data(self.sid, b"", True)
        ex = self.exchange
        if ex is not None:
            ex.downstream.resume_reading_for(ex)


class Http2Upstream(asyncio.Protocol):
    """One connection to an HTTP/2 backend, carrying many exchanges' streams."""
    __slots__ = ("endpoint", "transport", "conn", "streams", "closing", "idle_since",
                 "flush_pending", "loop", "stats", "write_paused", "settled", "ready")

    def __init__(self, endpoint: Http2Endpoint):
        self.endpoint = endpoint
        self.transport = None
        self.conn = H2Connection(self, client=True, settings=UPSTREAM_SETTINGS)
        self.streams: dict[int, Http2UpstreamStream] = {}
        self.closing = False
        self.idle_since = 0.0
        self.flush_pending = False
        self.loop = endpoint.loop
        self.stats = endpoint.stats
        self.write_paused = False
        # No stream goes out before the peer's SETTINGS: a stream over its
        # MAX_CONCURRENT_STREAMS would be refused (grpcio: reset ENHANCE_YOUR_CALM).
        self.settled = False
        self.ready = self.loop.create_future()   # True: SETTINGS came; False: lost first

    # ------------------------------------------------------------ connection

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stats.upstream_cx_total += 1
        self.stats.upstream_cx_active += 1
        self.conn.initiate()
        self.flush()

    def connection_lost(self, exc) -> None:
        self.closing = True
        if not self.ready.done():
            self.ready.set_result(False)
        self.stats.upstream_cx_active -= 1
        self.endpoint.forget(self)
        reason = "connection termination" if exc is None else f"connection reset: {exc}"
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._lost(stream, reason)

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data)
        self.flush()

    def pause_writing(self) -> None:
        # The backend reads slower than clients send: stop reading from those clients.
        self.write_paused = True
        for stream in list(self.streams.values()):
            ex = stream.exchange
            if ex is not None:
                ex.downstream.pause_reading_for(ex)

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            ex = stream.exchange
            if ex is not None and not stream.pending:
                ex.downstream.resume_reading_for(ex)

    def flush(self) -> None:
        self.flush_pending = False
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.closing:
            self.transport.write(out)
        if self.conn.closed and not self.streams and not self.closing:
            self.closing = True
            self.transport.close()

    def schedule_flush(self) -> None:
        # Streams of one connection finish in the same loop pass: one write for all.
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    # ------------------------------------------------------------------ pool

    def has_room(self) -> bool:
        conn = self.conn
        return (self.settled and not self.closing and not conn.closed and not conn.goaway_received
                and len(self.streams) < conn.peer_max_concurrent_streams)

    def open_stream(self, ex: Exchange, reused: bool) -> None:
        sid = self.conn.new_stream_id()
        stream = Http2UpstreamStream(self, sid, ex, reused)
        self.streams[sid] = stream
        ex.on_upstream_ready(stream)
        self.schedule_flush()

    def reset(self, stream: Http2UpstreamStream, code: int) -> None:
        if not stream.closed:
            stream.closed = True
            self.streams.pop(stream.sid, None)
            self.conn.reset_stream(stream.sid, code)
            self.schedule_flush()
            self.endpoint.stream_done(self)

    def _finish(self, stream: Http2UpstreamStream) -> None:
        stream.closed = True
        self.streams.pop(stream.sid, None)
        self.endpoint.stream_done(self)

    def _lost(self, stream: Http2UpstreamStream, reason: str, refused: bool = False) -> None:
        stream.closed = True
        ex = stream.exchange
        stream.exchange = None
        if ex is not None:
            # A stream the backend never processed (REFUSED_STREAM, beyond GOAWAY's
            # last id) is safe to send again, like a stale pooled HTTP/1.1 connection,
            # even when it was the first stream of a new connection.
            if refused:
                stream.reused = True
            ex.on_upstream_lost(stream, reason, stream.got_bytes and not refused, refused)

    # ------------------------------------------------------- codec callbacks

    def on_headers(self, sid: int, headers: list, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        ex = stream.exchange
        stream.got_bytes = True
        status = 0
        length = -1
        out = []
        for field in headers:
            name = field[0]
            if name in _RESPONSE_SKIP:
                if name == b":status":
                    status = int(field[1])
                elif name == b"content-length":
                    length = int(field[1])
                continue
            out.append(field)   # the codec's own tuple: no copy
        if ex is None:
            return
        if status < 200:
            if status != 101:
                ex.on_informational(status, b"", out)
            return
        stream.response_started = True
        if end_stream:
            # A trailers-only response (typical of gRPC errors) or an empty body.
            length = 0 if length < 0 and not out else length
            self._finish(stream)
            stream.exchange = None
            ex.on_response_head(status, b"", out, 0 if length < 0 else length)
            ex.on_response_end(None)
            return
        ex.on_response_head(status, b"", out, length)

    def on_data(self, sid: int, data: bytes, end_stream: bool, flow_len: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self.conn.ack_data(sid, flow_len)
            return
        if stream.read_paused:
            stream.unacked += flow_len
        else:
            self.conn.ack_data(sid, flow_len)
        ex = stream.exchange
        if data and ex is not None:
            ex.on_response_body(data)
        if end_stream:
            self._finish(stream)
            stream.exchange = None
            if ex is not None:
                ex.on_response_end(None)

    def on_trailers(self, sid: int, headers: list) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        ex = stream.exchange
        self._finish(stream)
        stream.exchange = None
        if ex is not None:
            # A list of its own already, and pseudo-header free: the codec refuses
            # trailers carrying one (RFC 9113 8.1).
            ex.on_response_end(headers)

    def on_reset(self, sid: int, error_code: int, by_peer: bool) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        self.endpoint.stream_done(self)
        refused = error_code == h2f.REFUSED_STREAM
        if not refused:
            # Any other reset may come after the application saw the request: unlike a
            # stale pooled connection, it is never safe to send again.
            stream.reused = False
        self._lost(stream, f"stream reset: {h2f.error_name(error_code)}", refused=refused)

    def on_window_open(self, sid: int) -> None:
        open_windows(self.streams, sid)

    def on_goaway(self, last_stream_id: int, error_code: int, debug: bytes) -> None:
        # Streams above the last id were never processed: they go again elsewhere.
        for sid in [s for s in self.streams if s > last_stream_id]:
            stream = self.streams.pop(sid)
            self._lost(stream, "connection draining (GOAWAY)", refused=True)
        self.endpoint.stream_done(self)

    def on_connection_error(self, error_code: int, reason: str) -> None:
        log.warning("upstream %s: HTTP/2 connection error %s: %s", self.endpoint.label,
                    h2f.error_name(error_code), reason)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def on_headers_too_large(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.conn.reset_stream(sid, h2f.PROTOCOL_ERROR)
            self.endpoint.stream_done(self)
            ex = stream.exchange
            stream.exchange = None
            stream.closed = True
            if ex is not None:
                ex.on_upstream_protocol_error(stream, "response header list too large")

    def on_settings(self, peer_max_concurrent_streams: int) -> None:
        if not self.settled:
            self.settled = True
            if not self.ready.done():
                self.ready.set_result(True)
            return        # the connect task hands the connection to the pool
        self.endpoint.stream_done(self)   # maybe more room now

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.conn.send_goaway(0)
            self.flush()
            self.closing = True
            self.transport.close()


class Http2Endpoint(Endpoint):
    """A backend address speaking HTTP/2: a few multiplexed connections."""
    __slots__ = ("conns", "connecting", "waiters")

    def __init__(self, cluster, host: str, port: int, dns=None):
        super().__init__(cluster, host, port, dns)
        self.conns: list[Http2Upstream] = []
        self.connecting = 0
        self.waiters: deque = deque()

    def acquire(self, ex: Exchange) -> None:
        for conn in self.conns:
            if conn.has_room():
                conn.open_stream(ex, True)
                return
        self.waiters.append(ex)
        if self.connecting * ASSUMED_STREAMS < len(self.waiters):
            self.connecting += 1
            self.cluster.spawn(self._connect_h2())

    def connect_new(self, ex: Exchange) -> None:
        # A retry after a refused stream: any connection with room will do.
        self.acquire(ex)

    async def _connect_h2(self) -> None:
        try:
            reason, conn = await self._open_h2()
        finally:
            # Only now: until its SETTINGS came, this attempt still stands for the
            # waiters it is meant to carry (see acquire and _connect_failed).
            self.connecting -= 1
        if reason is None and self.draining:
            conn.close()
            reason = "endpoint removed"
        elif reason is None and conn.conn.peer_max_concurrent_streams == 0:
            # A backend that takes no streams at all: another connection would be told
            # the same, and opening one per waiter would storm it until the requests
            # time out.  Fail the requests this connection was for, at once.
            conn.close()
            reason = "connection failure: backend allows no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)"
        if reason is not None:
            return self._connect_failed(reason)
        self.conns.append(conn)
        self.stream_done(conn)

    async def _open_h2(self) -> tuple[str | None, Http2Upstream | None]:
        """Connect, check TLS, wait for the peer's SETTINGS: (failure reason, connection)."""
        tls = self.tls
        factory = lambda: Http2Upstream(self)  # noqa: E731
        try:
            if tls is None:
                connecting = self.loop.create_connection(factory, self.host, self.port)
            else:
                connecting = self.loop.create_connection(
                    factory, self.host, self.port, ssl=tls.context,
                    server_hostname=self.tls_peer.server_hostname or None,
                    ssl_handshake_timeout=CONNECT_TIMEOUT)
            transport, conn = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            return "connect timeout", None
        except (ssl.SSLError, ConnectionResetError) as exc:
            return (tls.handshake_failed(exc) if tls is not None
                    else f"connection failure: {exc}"), None
        except OSError as exc:
            return f"connection failure: {exc.strerror or exc}", None
        if tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            reason = tls.check(ssl_object, self.tls_peer)
            if reason is None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
                reason = f"backend chose {ssl_object.selected_alpn_protocol()} instead of h2"
            if reason is not None:
                transport.abort()
                return reason, None
        try:
            settled = await asyncio.wait_for(conn.ready, CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            transport.abort()
            return "connect timeout: no HTTP/2 SETTINGS from the backend", None
        if not settled:
            return "connection failure: closed before its HTTP/2 SETTINGS", None
        return None, conn

    def _connect_failed(self, reason: str) -> None:
        # The waiters this attempt was meant to carry fail; later ones keep waiting
        # for attempts still under way.
        n = len(self.waiters) - self.connecting * ASSUMED_STREAMS
        while n > 0 and self.waiters:
            n -= 1
            ex = self.waiters.popleft()
            if not ex.done:
                ex.on_upstream_connect_failed(reason)

    def stream_done(self, conn: Http2Upstream) -> None:
        """A stream ended or the peer's limits changed: hand room to waiting exchanges."""
        conn.idle_since = self.cluster.clock.now
        waiters = self.waiters
        while waiters and conn.has_room():
            ex = waiters.popleft()
            if not ex.done:
                conn.open_stream(ex, False)
        if waiters and not self.connecting and not any(c.has_room() for c in self.conns):
            self.connecting += 1
            self.cluster.spawn(self._connect_h2())

    def release(self, conn) -> None:   # HTTP/1.1 pool API; streams end through stream_done
        pass

    def forget(self, conn: Http2Upstream) -> None:
        try:
            self.conns.remove(conn)
        except ValueError:
            pass

    def cancel_wait(self, ex: Exchange) -> None:
        try:
            self.waiters.remove(ex)
        except ValueError:
            pass

    def expire_idle(self, now: float) -> None:
        expiry = self.cluster.pool_idle_timeout
        for conn in list(self.conns):
            if not conn.streams and now - conn.idle_since > expiry:
                self.stats.upstream_cx_idle_expired += 1
                self.conns.remove(conn)
                conn.close()

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.conns):
            if not conn.streams:
                self.conns.remove(conn)
                conn.close()
