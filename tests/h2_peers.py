"""HTTP/2 test peers built on the `h2` state machine over real asyncio sockets: an origin
server (h2c prior knowledge, or TLS with ALPN h2) and a raw client.

The origin's behaviour is chosen per request by the query string, or by an `x-origin`
header in the same syntax (which wins; gRPC clients can send it as metadata), so one origin
serves a whole test and the gateway forwards the instructions untouched:

  any path            echo: JSON {method, path, authority, scheme, headers, body_length, trailers}
  /source?size=N      N bytes of b"x" (chunk=K bytes a DATA frame, delay=S between chunks)
  /stream-echo        response headers at once, then each request DATA chunk echoed as it arrives

  status=N            response status (default 200)
  sleep=S             wait S seconds before answering (a cancel then shows in the record)
  read_delay=S        consume (and so grant window for) each request DATA chunk S seconds late
  trailers=1          end with trailers x-trailer: done, x-bytes: <body bytes sent>
  rst=before|N        RST_STREAM instead of the response head, or after N body bytes
  goaway=before|N     GOAWAY at that point; code 0 lets this stream finish, then closes
  code=N              error code for rst / goaway (default INTERNAL_ERROR=2 / NO_ERROR=0)
  last=N              GOAWAY last-stream-id (default: this stream)
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Union
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

Headers = list[tuple[str, str]]
Body = Union[bytes, bytearray, memoryview, int, Iterable[bytes], AsyncIterable[bytes], None]

_READ_SIZE = 65536
_DEFAULT_WINDOW = 65535


def _text_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def _settings(client: bool, window: int | None, max_streams: int | None) -> h2.settings.Settings:
    values: dict[SettingCodes, int] = {}
    if window is not None:
        values[SettingCodes.INITIAL_WINDOW_SIZE] = window
    if max_streams is not None:
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = max_streams
    return h2.settings.Settings(client=client, initial_values=values)


def _raise_connection_window(conn: h2.connection.H2Connection, window: int | None) -> None:
    # SETTINGS_INITIAL_WINDOW_SIZE covers streams only; the connection window moves by
    # WINDOW_UPDATE, and a stream window above it would be unusable.
    if window is not None and window > _DEFAULT_WINDOW:
        conn.increment_flow_control_window(window - _DEFAULT_WINDOW)


class _GoawayFilter:
    """Takes GOAWAY frames out of the inbound bytes before h2 sees them.

    h2 shuts its whole state machine on a GOAWAY, but RFC 9113 6.8 lets the streams up to
    the last stream id run to completion, and these peers must show exactly that."""
    __slots__ = ("buf", "preface")

    def __init__(self, preface: int) -> None:
        self.buf = bytearray()
        self.preface = preface  # the client preface is not framed

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """Returns (bytes for h2, [(error_code, last_stream_id)] of the GOAWAYs removed)."""
        out = bytearray()
        if self.preface:
            n = min(self.preface, len(data))
            out += data[:n]
            data = data[n:]
            self.preface -= n
        buf = self.buf
        buf += data
        goaways = []
        pos = 0
        while len(buf) - pos >= 9:
            end = pos + 9 + int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) < end:
                break
            if buf[pos + 3] == 0x7 and end - pos >= 17:
                goaways.append((int.from_bytes(buf[pos + 13:pos + 17], "big"),
                                int.from_bytes(buf[pos + 9:pos + 13], "big") & 0x7FFFFFFF))
            else:
                out += buf[pos:end]
            pos = end
        del buf[:pos]
        return bytes(out), goaways


def _goaway_frame(code: int, last_stream_id: int) -> bytes:
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()


class _Window:
    """Wakes senders blocked on flow control whenever any window may have grown."""
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def changed(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    async def wait(self) -> None:
        await self.event.wait()


async def _send_flow_controlled(conn: h2.connection.H2Connection, stream_id: int, data: bytes,
                                window: _Window, flush: Any, *, chunk: int | None = None) -> None:
    view = memoryview(data)
    while view:
        available = conn.local_flow_control_window(stream_id)
        if available <= 0:
            await window.wait()
            continue
        n = min(available, conn.max_outbound_frame_size, len(view), chunk or len(view))
        conn.send_data(stream_id, bytes(view[:n]))
        view = view[n:]
        await flush()


# ------------------------------------------------------------------ the origin

@dataclass(slots=True, eq=False)
class H2Record:
    """One request stream as the origin saw it; updated live."""
    stream_id: int
    peer: str                         # "127.0.0.1:port" of its connection
    method: str
    path: str                         # :path as received, query included
    authority: str | None
    scheme: str | None
    headers: Headers                  # the whole request head, pseudo-headers first
    body_bytes: int = 0
    body_chunks: int = 0
    trailers: Headers | None = None   # request trailers
    sent_bytes: int = 0               # response body bytes handed to the socket
    # running | ok | reset (by the client) | rst_sent | goaway_sent | refused (over the
    # stream limit, or above a GOAWAY's last id) | connection_lost
    outcome: str = "running"
    reset_code: int | None = None     # RST_STREAM code the client sent
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self, outcome: str) -> None:
        if self.outcome == "running":
            self.outcome = outcome
        if self.ended is None:
            self.ended = time.monotonic()
        self.done.set()


class H2Observations:
    def __init__(self) -> None:
        self.requests: list[H2Record] = []
        self.connections = 0
        self.alpn: list[str | None] = []              # per TLS connection
        self.goaways: list[tuple[int, int]] = []      # (error_code, last_stream_id) received

    def of(self, path_prefix: str) -> list[H2Record]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    def last(self, path_prefix: str = "/") -> H2Record:
        found = self.of(path_prefix)
        if not found:
            raise LookupError(f"no request for {path_prefix}; saw {[r.path for r in self.requests]}")
        return found[-1]

    def peers(self) -> set[str]:
        return {r.peer for r in self.requests}

    async def wait(self, path_prefix: str = "/", *, count: int = 1, timeout: float = 5.0) -> H2Record:
        """The count-th request under path_prefix once the origin is done with it."""
        async with asyncio.timeout(timeout):
            while len(self.of(path_prefix)) < count:
                await asyncio.sleep(0.005)
            record = self.of(path_prefix)[count - 1]
            await record.done.wait()
        return record


class _OriginStream:
    __slots__ = ("record", "body", "task", "acked_late")

    def __init__(self, record: H2Record, acked_late: bool) -> None:
        self.record = record
        self.body: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.acked_late = acked_late


class _BadQuery(Exception):
    pass


class _OriginConnection:
    __slots__ = ("obs", "reader", "writer", "conn", "streams", "window", "peer", "draining",
                 "draining_last", "closed", "inbound", "max_streams")

    def __init__(self, obs: H2Observations, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, window: int | None, max_streams: int | None) -> None:
        self.obs = obs
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.conn.local_settings = _settings(False, window, max_streams)
        self.streams: dict[int, _OriginStream] = {}
        self.window = _Window()
        addr = writer.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        self.draining = False
        self.draining_last = 0
        self.closed = False
        self.inbound = _GoawayFilter(preface=24)
        self.max_streams = max_streams
        self.conn.initiate_connection()
        if max_streams is not None:
            # Advertised above; enforced in _start with REFUSED_STREAM (a stream error, RFC 9113
            # 5.1.2), where h2 would fail the whole connection.
            self.conn.local_settings = _settings(False, window, None)
        _raise_connection_window(self.conn, window)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.writer.write(data)
            await self.writer.drain()

    def flush_nowait(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    async def run(self) -> None:
        try:
            self.flush_nowait()
            while not self.closed:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                data, goaways = self.inbound.feed(data)
                self.obs.goaways.extend(goaways)
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush_nowait()  # h2 has queued the GOAWAY that says why
                    break
                for event in events:
                    self._on_event(event)
                self.flush_nowait()
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
            stream.record.finish("connection_lost")
        self.writer.close()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.record.body_bytes += len(event.data)
            stream.record.body_chunks += 1
            if not stream.acked_late:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream.body.put_nowait((event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body.put_nowait(None)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.record.trailers = _text_headers(event.headers)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.record.reset_code = int(event.error_code)
                stream.record.finish("reset")
                if stream.task is not None:
                    stream.task.cancel()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window.changed()

    def _start(self, event: h2.events.RequestReceived) -> None:
        head = _text_headers(event.headers)
        pseudo = dict(p for p in head if p[0].startswith(":"))
        path = pseudo.get(":path", "")
        record = H2Record(stream_id=event.stream_id, peer=self.peer, method=pseudo.get(":method", ""),
                          path=path, authority=pseudo.get(":authority"),
                          scheme=pseudo.get(":scheme"), headers=head)
        self.obs.requests.append(record)
        if (self.draining and event.stream_id > self.draining_last) or (
                self.max_streams is not None and len(self.streams) >= self.max_streams):
            self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            record.finish("refused")
            return
        query = parse_qs(urlsplit(path).query)
        for name, value in head:
            if name == "x-origin":
                query.update(parse_qs(value))
        stream = _OriginStream(record, acked_late="read_delay" in query)
        self.streams[event.stream_id] = stream
        stream.task = asyncio.get_running_loop().create_task(self._respond(stream, path, query))

    async def _respond(self, stream: _OriginStream, path: str, query: dict[str, list[str]]) -> None:
        record = stream.record
        sid = record.stream_id
        try:
            try:
                plan = _Plan(path, query)
            except _BadQuery as exc:
                await self._drain_body(stream, 0.0)
                await self._answer(sid, 400, b"bad origin instruction: " + str(exc).encode(), "text/plain")
                record.finish("ok")
                return
            if plan.route == "/stream-echo":
                await self._stream_echo(stream, plan)
            else:
                await self._drain_body(stream, plan.read_delay)
                if plan.sleep:
                    await asyncio.sleep(plan.sleep)
                await self._send_response(stream, plan)
            record.finish("ok")
        except asyncio.CancelledError:
            record.finish("cancelled")
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            record.finish("connection_lost")
        finally:
            self.streams.pop(sid, None)
            if self.draining and not self.streams:
                self.close()

    async def _drain_body(self, stream: _OriginStream, read_delay: float) -> None:
        while (item := await stream.body.get()) is not None:
            if read_delay:
                await asyncio.sleep(read_delay)
            if stream.acked_late:
                self.conn.acknowledge_received_data(item[1], stream.record.stream_id)
                await self.flush()

    async def _answer(self, sid: int, status: int, body: bytes, content_type: str) -> None:
        self.conn.send_headers(sid, [(":status", str(status)), ("content-type", content_type),
                                     ("content-length", str(len(body)))])
        await _send_flow_controlled(self.conn, sid, body, self.window, self.flush)
        self.conn.end_stream(sid)
        await self.flush()

    async def _stream_echo(self, stream: _OriginStream, plan: _Plan) -> None:
        sid = stream.record.stream_id
        self.conn.send_headers(sid, [(":status", str(plan.status)),
                                     ("content-type", "application/octet-stream")])
        await self.flush()
        while (item := await stream.body.get()) is not None:
            if plan.read_delay:
                await asyncio.sleep(plan.read_delay)
            await _send_flow_controlled(self.conn, sid, item[0], self.window, self.flush)
            stream.record.sent_bytes += len(item[0])
            if stream.acked_late:
                self.conn.acknowledge_received_data(item[1], sid)
                await self.flush()
        await self._end(stream, plan)

    async def _send_response(self, stream: _OriginStream, plan: _Plan) -> None:
        record = stream.record
        sid = record.stream_id
        if await self._interrupt(stream, plan, "before"):
            return
        if plan.route == "/source":
            body_len, content_type = plan.size, "application/octet-stream"
            body: bytes | None = None
        else:
            body = json.dumps({
                "method": record.method, "path": record.path, "authority": record.authority,
                "scheme": record.scheme, "headers": record.headers,
                "body_length": record.body_bytes, "trailers": record.trailers,
            }).encode()
            body_len, content_type = len(body), "application/json"
        head = [(":status", str(plan.status)), ("content-type", content_type)]
        if not plan.trailers and plan.rst is None and plan.goaway is None:
            head.append(("content-length", str(body_len)))
        self.conn.send_headers(sid, head)
        await self.flush()
        if await self._interrupt(stream, plan, 0):
            return
        block = b"x" * plan.chunk if body is None else b""
        while record.sent_bytes < body_len:
            n = min(plan.chunk, body_len - record.sent_bytes)
            for point in (plan.rst, plan.goaway):
                if isinstance(point, int) and record.sent_bytes < point < record.sent_bytes + n:
                    n = point - record.sent_bytes
            piece = block[:n] if body is None else body[record.sent_bytes:record.sent_bytes + n]
            await _send_flow_controlled(self.conn, sid, piece, self.window, self.flush)
            record.sent_bytes += n
            if await self._interrupt(stream, plan, record.sent_bytes):
                return
            if plan.delay:
                await asyncio.sleep(plan.delay)
        await self._end(stream, plan)

    async def _end(self, stream: _OriginStream, plan: _Plan) -> None:
        sid = stream.record.stream_id
        if plan.trailers:
            self.conn.send_headers(sid, [("x-trailer", "done"),
                                         ("x-bytes", str(stream.record.sent_bytes))], end_stream=True)
        else:
            self.conn.end_stream(sid)
        await self.flush()

    async def _interrupt(self, stream: _OriginStream, plan: _Plan, point: str | int) -> bool:
        """Sends the RST_STREAM or GOAWAY planned for this point; True if the stream is over."""
        record = stream.record
        sid = record.stream_id
        if plan.goaway == point:
            last = plan.last if plan.last is not None else sid
            code = plan.code if plan.code is not None else 0
            # h2 refuses to send anything after its own GOAWAY, but a graceful GOAWAY must let
            # the streams it covers finish, so the frame is written behind its back.
            await self.flush()
            self.writer.write(_goaway_frame(code, last))
            await self.writer.drain()
            self.draining, self.draining_last = True, last
            if code or sid > last:
                record.finish("goaway_sent")
                self.close()
                return True
        if plan.rst == point:
            code = plan.code if plan.code is not None else int(ErrorCodes.INTERNAL_ERROR)
            self.conn.reset_stream(sid, code)
            await self.flush()
            record.finish("rst_sent")
            return True
        return False


class _Plan:
    """The instructions of one request's query string, checked once."""
    __slots__ = ("route", "status", "size", "chunk", "delay", "sleep", "read_delay", "trailers",
                 "rst", "goaway", "code", "last")

    def __init__(self, path: str, query: dict[str, list[str]]) -> None:
        self.route = urlsplit(path).path
        self.status = self._int(query, "status", 200)
        if not 200 <= self.status <= 599:
            raise _BadQuery(f"status={self.status} is not a final status")
        self.size = self._int(query, "size", 0)
        self.chunk = self._int(query, "chunk", 16384)
        if self.size < 0 or self.chunk <= 0:
            raise _BadQuery("size must be >= 0 and chunk > 0")
        self.delay = self._float(query, "delay")
        self.sleep = self._float(query, "sleep")
        self.read_delay = self._float(query, "read_delay")
        self.trailers = query.get("trailers", ["0"])[-1] not in ("0", "")
        self.rst = self._point(query, "rst")
        self.goaway = self._point(query, "goaway")
        self.code = self._int(query, "code", None)
        self.last = self._int(query, "last", None)

    @staticmethod
    def _int(query: dict[str, list[str]], name: str, default: int | None) -> Any:
        if name not in query:
            return default
        try:
            return int(query[name][-1])
        except ValueError:
            raise _BadQuery(f"{name}={query[name][-1]!r} is not an integer") from None

    @staticmethod
    def _float(query: dict[str, list[str]], name: str) -> float:
        try:
            value = float(query.get(name, ["0"])[-1])
        except ValueError:
            raise _BadQuery(f"{name}={query[name][-1]!r} is not a number") from None
        if value < 0:
            raise _BadQuery(f"{name} must not be negative")
        return value

    @classmethod
    def _point(cls, query: dict[str, list[str]], name: str) -> str | int | None:
        if query.get(name, [""])[-1] == "before":
            return "before"
        value = cls._int(query, name, None)
        if value is not None and value < 0:
            raise _BadQuery(f"{name} must be 'before' or a byte count")
        return value


@asynccontextmanager
async def h2_origin(obs: H2Observations | None = None, *, tls: tuple[str, str] | None = None,
                    window: int | None = None,
                    max_concurrent_streams: int | None = None) -> AsyncIterator[int]:
    """An HTTP/2-only origin at 127.0.0.1; yields its port. h2c prior knowledge, or TLS with
    ALPN h2 when tls=(cert_file, key_file). window: its receive window (stream and connection);
    max_concurrent_streams: its SETTINGS_MAX_CONCURRENT_STREAMS."""
    obs = obs if obs is not None else H2Observations()
    connections: set[_OriginConnection] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obs.connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            obs.alpn.append(alpn)
            if alpn != "h2":
                writer.close()  # RFC 9113 3.2: h2 over TLS only after ALPN chose it
                return
        connection = _OriginConnection(obs, reader, writer, window, max_concurrent_streams)
        connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await connection.run()
        except asyncio.CancelledError:
            pass  # asyncio's client_connected_cb callback logs a cancelled task as an error
        finally:
            connections.discard(connection)
            if task is not None:
                tasks.discard(task)

    ctx = None
    if tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls)
        ctx.set_alpn_protocols(["h2"])
    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for connection in list(connections):
            connection.close()
        if tasks:
            _, stuck = await asyncio.wait(list(tasks), timeout=1.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await server.wait_closed()


# ------------------------------------------------------------------ the client

@dataclass(slots=True)
class H2Response:
    stream_id: int
    status: int | None = None
    headers: Headers = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)   # empty when keep=False
    nbytes: int = 0
    trailers: Headers | None = None
    ended: bool = False               # END_STREAM arrived
    reset_code: int | None = None     # RST_STREAM code the peer sent
    cancelled: bool = False           # this client reset the stream (CANCEL)
    goaway: tuple[int, int] | None = None   # (error_code, last_stream_id) seen while open
    connection_lost: bool = False     # the socket closed before the stream ended

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.data)


class _Closed:
    __slots__ = ()


_CLOSED = _Closed()


@dataclass(slots=True)
class Progress:
    """Live count of response body bytes consumed; pass one in to watch a slow read."""
    nbytes: int = 0


class H2Client:
    """One HTTP/2 connection driven by the `h2` state machine; requests multiplex on it.

    `conn` is the raw H2Connection and `flush()` writes what it queued, so a test can
    also send frames no polite client would. `events` keeps every event received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: h2.connection.H2Connection) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.events: list[h2.events.Event] = []
        self.goaway: tuple[int, int] | None = None
        self.closed = asyncio.Event()
        self.window = _Window()
        self.inbound = _GoawayFilter(preface=0)
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, *, host: str = "127.0.0.1", ca: str | None = None,
                      server_name: str | None = None, window: int | None = None,
                      max_concurrent_streams: int | None = None, validate: bool = True) -> H2Client:
        """h2c prior knowledge, or TLS with ALPN h2 when ca is given (server_name: SNI and the
        name checked). window: receive window (stream and connection). validate=False lets
        malformed headers out, for tests of the peer's validation."""
        ctx = None
        if ca is not None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=(server_name or host) if ctx else None)
        if ctx is not None and writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise ConnectionError("the server did not choose h2 by ALPN")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate, validate_inbound_headers=validate))
        conn.local_settings = _settings(True, window, max_concurrent_streams)
        conn.initiate_connection()
        _raise_connection_window(conn, window)
        client = cls(reader, writer, conn)
        await client.flush()
        return client

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
            await self.writer.drain()

    async def close(self) -> None:
        self._reader_task.cancel()
        await asyncio.gather(self._reader_task, return_exceptions=True)
        self.writer.close()

    async def send_goaway(self, code: int = 0, last_stream_id: int = 0) -> None:
        """GOAWAY without closing: responses in flight still arrive (see _GoawayFilter)."""
        await self.flush()
        self.writer.write(_goaway_frame(code, last_stream_id))
        await self.writer.drain()

    async def ping(self, opaque: bytes = b"peerping", *, timeout: float = 5.0) -> float:
        """Round-trip time of one PING."""
        start = time.monotonic()
        seen = len(self.events)
        self.conn.ping(opaque)
        await self.flush()
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[seen:]:
                    if isinstance(event, h2.events.PingAckReceived) and event.ping_data == opaque:
                        return time.monotonic() - start
                seen = len(self.events)
                await asyncio.sleep(0.002)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                data, goaways = self.inbound.feed(data)
                for goaway in goaways:
                    self.goaway = goaway
                    for queue in self._streams.values():
                        queue.put_nowait(goaway)
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self.flush()
                    break
                for event in events:
                    self.events.append(event)
                    sid = getattr(event, "stream_id", None)
                    if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        self.window.changed()
                    elif sid and sid in self._streams:
                        self._streams[sid].put_nowait(event)
                await self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.window.changed()
            for queue in self._streams.values():
                queue.put_nowait(_CLOSED)

    async def request(self, method: str = "GET", path: str = "/", *, authority: str = "localhost",
                      scheme: str = "http", headers: Iterable[tuple[str, str]] = (),
                      body: Body = None, chunk: int = 16384, send_delay: float = 0.0,
                      trailers: Iterable[tuple[str, str]] | None = None, read_delay: float = 0.0,
                      keep: bool = True, progress: Progress | None = None,
                      cancel_after_bytes: int | None = None, cancel_after: float | None = None,
                      timeout: float = 10.0) -> H2Response:
        """One request; returns when the stream ends, is reset (either way), or the connection
        goes. body: bytes, a byte count to generate, or an (async) iterable of chunks, sent as
        flow control allows while the response is read. read_delay: sleep before consuming
        (and so granting window for) each DATA frame. cancel_after_bytes / cancel_after
        (seconds): send RST_STREAM(CANCEL) then."""
        if self.goaway is not None:
            raise ConnectionError(f"the peer sent GOAWAY {self.goaway}; open a new connection")
        if self.closed.is_set():
            raise ConnectionError("the connection is closed")
        sid = self.conn.get_next_available_stream_id()
        response = H2Response(sid)
        progress = progress if progress is not None else Progress()
        head = [(":method", method), (":scheme", scheme), (":authority", authority),
                (":path", path), *headers]
        trailers = list(trailers) if trailers is not None else None
        has_body = body is not None or trailers is not None
        self.conn.send_headers(sid, head, end_stream=not has_body)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[sid] = queue
        await self.flush()
        sender = (asyncio.get_running_loop().create_task(
            self._send_body(sid, body, chunk, send_delay, trailers)) if has_body else None)
        try:
            try:
                async with asyncio.timeout(cancel_after) as budget:
                    await self._receive(sid, queue, response, progress, read_delay, keep,
                                        cancel_after_bytes, timeout)
            except TimeoutError:
                if not budget.expired():
                    raise
                await self._cancel(sid, response)
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            self._streams.pop(sid, None)
        return response

    async def _cancel(self, sid: int, response: H2Response) -> None:
        try:
            self.conn.reset_stream(sid, ErrorCodes.CANCEL)
            await self.flush()
            response.cancelled = True
        except h2.exceptions.StreamClosedError:
            pass

    async def _receive(self, sid: int, queue: asyncio.Queue[Any], response: H2Response,
                       progress: Progress, read_delay: float, keep: bool,
                       cancel_after_bytes: int | None, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                event = await queue.get()
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = _text_headers(event.headers)
                    response.status = int(dict(response.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    if read_delay:
                        await asyncio.sleep(read_delay)
                    if keep:
                        response.data += event.data
                    response.nbytes += len(event.data)
                    progress.nbytes += len(event.data)
                    if not self.closed.is_set():
                        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                        await self.flush()
                    if cancel_after_bytes is not None and response.nbytes >= cancel_after_bytes \
                            and not event.stream_ended:
                        await self._cancel(sid, response)
                        return
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = _text_headers(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    response.ended = True
                    return
                elif isinstance(event, h2.events.StreamReset):
                    response.reset_code = int(event.error_code)
                    return
                elif isinstance(event, tuple):  # GOAWAY: (error_code, last_stream_id)
                    response.goaway = event
                    if sid > event[1]:
                        return  # the peer will not process this stream
                elif event is _CLOSED:
                    response.connection_lost = True
                    return

    async def _send_body(self, sid: int, body: Body, chunk: int, send_delay: float,
                         trailers: Headers | None) -> None:
        try:
            async for piece in _pieces(body, chunk):
                await _send_flow_controlled(self.conn, sid, piece, self.window, self.flush, chunk=chunk)
                if send_delay:
                    await asyncio.sleep(send_delay)
            if trailers is not None:
                self.conn.send_headers(sid, trailers, end_stream=True)
            else:
                self.conn.end_stream(sid)
            await self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass  # the peer reset or closed; the receiving side reports how


async def _pieces(body: Body, chunk: int) -> AsyncIterator[bytes]:
    if body is None:
        return
    if isinstance(body, int):
        block = b"u" * chunk
        left = body
        while left > 0:
            yield block[:min(chunk, left)]
            left -= chunk
    elif isinstance(body, (bytes, bytearray, memoryview)):
        view = memoryview(body)
        for i in range(0, len(view), chunk):
            yield bytes(view[i:i + chunk])
    elif isinstance(body, AsyncIterable):
        async for piece in body:
            yield bytes(piece)
    else:
        for piece in body:
            yield bytes(piece)


@asynccontextmanager
async def h2_client(port: int, **kwargs: Any) -> AsyncIterator[H2Client]:
    """`async with h2_client(port, ca=..., window=...) as c:` -- see H2Client.connect."""
    client = await H2Client.connect(port, **kwargs)
    try:
        yield client
    finally:
        await client.close()


_CONNECT_KEYS = frozenset({"host", "ca", "server_name", "window", "max_concurrent_streams",
                           "validate"})


async def h2_request(port: int, method: str = "GET", path: str = "/", **kwargs: Any) -> H2Response:
    """One request on a fresh connection; connection and request keywords mixed."""
    connect = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONNECT_KEYS}
    async with h2_client(port, **connect) as client:
        return await client.request(method, path, **kwargs)
