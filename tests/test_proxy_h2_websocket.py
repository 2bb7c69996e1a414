"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) through the gateway, end to end.

The client is the `h2` state machine on a real socket, driven by hand (`WsClient`) so a
test can stream DATA both ways, hold back WINDOW_UPDATEs (a slow reader) and reset the
stream; it speaks WebSocket frames with the small masked-frame codec below. Backends:
aiohttp's `web.WebSocketResponse` (a real RFC 6455 server, which checks the HTTP/1.1
handshake the gateway builds) and raw sockets where a test needs every byte (half-close,
a backend that stops reading). Listeners are `http2` (h2c prior knowledge) and once TLS
with ALPN h2.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from aiohttp import WSMsgType, web
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from gateway.certs import issue, make_ca
from h2_peers import H2Observations, h2_origin
from harness import free_port, gateway_doc, raw_backend, raw_exchange, route, running_gateway, service

MiB = 1 << 20
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


# ------------------------------------------------------------ WebSocket frames

def ws_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final frame, masked as a client must send it (RFC 6455 5.3)."""
    n = len(payload)
    head = bytearray((0x80 | opcode,))
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    mask = os.urandom(4)
    head += mask
    if not n:
        return bytes(head)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return bytes(head) + masked


def ws_close(code: int = 1000) -> bytes:
    return ws_frame(OP_CLOSE, struct.pack("!H", code))


def take_messages(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete messages at the front of buf (removed from it): (opcode, payload)."""
    out = []
    pos = 0
    parts: list[bytes] = []
    first_op = None
    while True:
        if len(buf) - pos < 2:
            break
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        at = pos + 2
        if n == 126:
            if len(buf) - at < 2:
                break
            n = struct.unpack_from("!H", buf, at)[0]
            at += 2
        elif n == 127:
            if len(buf) - at < 8:
                break
            n = struct.unpack_from("!Q", buf, at)[0]
            at += 8
        mask = None
        if b1 & 0x80:
            if len(buf) - at < 4:
                break
            mask = bytes(buf[at:at + 4])
            at += 4
        if len(buf) - at < n:
            break
        payload = bytes(buf[at:at + n])
        if mask:
            key = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        pos = at + n
        opcode = b0 & 0x0F
        if first_op is None:
            first_op = opcode
        parts.append(payload)
        if b0 & 0x80:
            out.append((first_op, b"".join(parts)))
            parts = []
            first_op = None
            del buf[:pos]
            pos = 0
    return out


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


# ------------------------------------------------------------------ the client

class WsClient:
    """An HTTP/2 connection with one extended CONNECT stream at a time (`open`).

    auto_ack=False stops WINDOW_UPDATEs for received DATA (a reader that fell behind);
    `ack_all()` catches up. `sent` counts DATA bytes the client got out."""

    def __init__(self, reader, writer, conn: h2.connection.H2Connection):
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.sid = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.data = bytearray()
        self.inbox: list[tuple[int, bytes]] = []
        self.received = 0
        self.ended = False
        self.reset_code: int | None = None
        self.closed = False
        self.settings_seen = False
        self.auto_ack = True
        self.unacked = 0
        self.sent = 0
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, *, ca: str | None = None, window: int = 4 * MiB,
                      validate: bool = True) -> WsClient:
        ctx = None
        if ca is not None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window})
        conn.initiate_connection()
        conn.increment_flow_control_window(window)
        client = cls(reader, writer, conn)
        await client.flush()
        await client.until(lambda: client.settings_seen)
        return client

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)
            await self.writer.drain()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.writer.close()

    async def _read(self) -> None:
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                for event in self.conn.receive_data(chunk):
                    self._event(event)
                await self.flush()
        except (ConnectionError, OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed = True

    def _event(self, event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
        if getattr(event, "stream_id", None) != self.sid:
            return
        if isinstance(event, h2.events.ResponseReceived):
            self.headers = {k.decode(): v.decode() for k, v in event.headers}
            self.status = int(self.headers[":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.data += event.data
            self.received += len(event.data)
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, self.sid)
            else:
                self.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.reset_code = int(event.error_code)

    async def until(self, predicate, timeout: float = 4.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    async def open(self, path: str, *, protocol: str | None = "websocket", headers=(),
                   wait: bool = True, head: list | None = None) -> None:
        """Extended CONNECT (or plain CONNECT with protocol=None, or any `head`); waits for
        the answer."""
        self.sid = self.conn.get_next_available_stream_id()
        self.status, self.headers, self.data, self.inbox = None, {}, bytearray(), []
        self.ended, self.reset_code, self.received = False, None, 0
        if head is not None:
            head = list(head)
        elif protocol is None:
            head = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        else:
            head = [(b":method", b"CONNECT"), (b":protocol", protocol.encode()), (b":scheme", b"http"),
                    (b":path", path.encode()), (b":authority", b"ws.example.com"),
                    (b"sec-websocket-version", b"13")]
        head += [(k.encode(), v.encode()) for k, v in headers]
        self.conn.send_headers(self.sid, head)
        await self.flush()
        if wait:
            await self.until(lambda: self.status is not None or self.reset_code is not None or self.closed)

    async def send(self, data: bytes, end: bool = False) -> None:
        """DATA as the stream and connection windows allow."""
        view = memoryview(data)
        while view:
            window = self.conn.local_flow_control_window(self.sid)
            if window <= 0:
                if self.reset_code is not None or self.closed:
                    raise ConnectionError("stream gone")
                await asyncio.sleep(0.005)
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(self.sid, bytes(view[:n]))
            self.sent += n
            view = view[n:]
            await self.flush()
        if end:
            self.conn.end_stream(self.sid)
            await self.flush()

    async def end(self) -> None:
        self.conn.end_stream(self.sid)
        await self.flush()

    async def reset(self) -> None:
        self.conn.reset_stream(self.sid, ErrorCodes.CANCEL)
        await self.flush()

    async def ack_all(self) -> None:
        self.auto_ack = True
        if self.unacked:
            self.conn.acknowledge_received_data(self.unacked, self.sid)
            self.unacked = 0
            await self.flush()

    async def message(self, timeout: float = 4.0) -> tuple[int, bytes]:
        """The next WebSocket message from the backend."""
        inbox = self.inbox

        def ready():
            inbox.extend(take_messages(self.data))
            return bool(inbox) or self.ended or self.reset_code is not None or self.closed
        await self.until(ready, timeout)
        assert inbox, f"no message: ended={self.ended} reset={self.reset_code} closed={self.closed}"
        return inbox.pop(0)


@asynccontextmanager
async def ws_client(port: int, **kwargs):
    client = await WsClient.connect(port, **kwargs)
    try:
        yield client
    finally:
        await client.close()


# ----------------------------------------------------------------- the backends

class Seen:
    """What the aiohttp WebSocket backend saw: handshakes, messages, how sessions ended."""

    def __init__(self):
        self.handshakes: list[tuple[str, str, dict[str, str]]] = []   # (method, path, headers)
        self.messages: list[tuple[WSMsgType, object]] = []
        self.finished = asyncio.Event()
        self.big_sent = asyncio.Event()


def ws_app(seen: Seen) -> web.Application:
    def record(request):
        seen.handshakes.append((request.method, request.path_qs,
                                {k.lower(): v for k, v in request.headers.items()}))

    async def echo(request):
        record(request)
        ws = web.WebSocketResponse(protocols=("chat",), max_msg_size=0)
        await ws.prepare(request)
        try:
            async for msg in ws:
                seen.messages.append((msg.type, msg.data))
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            seen.finished.set()
        return ws

    async def big(request):
        record(request)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        size = int(request.query["size"])
        await ws.send_bytes(pattern(size))
        seen.big_sent.set()
        await ws.receive()
        seen.finished.set()
        return ws

    async def bye(request):
        record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("bye")
        await ws.close(code=1001, message=b"going away")
        seen.finished.set()
        return ws

    async def refuse(request):
        record(request)
        return web.Response(status=403, text="no websockets for you")

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/bye", bye)
    app.router.add_get("/refuse", refuse)
    return app


def pattern(size: int) -> bytes:
    block = bytes(range(251))   # a prime length: a misplaced chunk shows
    return (block * (size // len(block) + 1))[:size]


@asynccontextmanager
async def ws_backend(seen: Seen):
    runner = web.AppRunner(ws_app(seen), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def read_handshake(reader) -> dict[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {b":request-line": lines[0]}
    for line in lines[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            fields[name.strip().lower()] = value.strip()
    return fields


def switching(fields) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(fields[b"sec-websocket-key"]) + b"\r\n\r\n")


# ------------------------------------------------------------------- the gateway

def ws_doc(gport, ws_port, *, h2_port=None, raw_port=None, tls=None, ws_extra=None):
    """An http2 listener: /ws/ to the WebSocket backend (prefix rewritten to /), /raw/ to a raw
    backend, /h2/ to an HTTP/2 virtual service."""
    routes = [route("ws", "/ws/", "ws.local", priority=1)]
    services = [service("ws.local", ws_port, **(ws_extra or {}))]
    if raw_port is not None:
        routes.append(route("raw", "/raw/", "raw.local", priority=2))
        services.append(service("raw.local", raw_port))
    if h2_port is not None:
        routes.append(route("h2", "/h2/", "h2.local", priority=3))
        services.append({**service("h2.local", h2_port), "protocol": "http2"})
    doc = gateway_doc(gport, routes, services)
    listener = doc["virtualGateway"]["spec"]["listeners"][0]
    listener["portMapping"]["protocol"] = "http2"
    for r in routes:
        r["spec"]["http2Route"] = r["spec"].pop("httpRoute")
    if tls is not None:
        listener["tls"] = tls
    return doc


def gateway_held(gw) -> int:
    """Bytes the gateway holds for its HTTP/2 clients: stream backlogs and socket write buffers."""
    total = 0
    for ctx in gw.contexts:
        for conn in list(ctx.connections):
            streams = getattr(conn, "streams", None)
            if streams is None:
                continue
            total += conn.transport.get_write_buffer_size()
            for stream in streams.values():
                total += sum(len(chunk) for chunk in stream.pending or ())
                total += sum(len(chunk) for chunk in stream.tunnel_buffer or ())
                if stream.tunnel is not None and stream.tunnel.transport is not None:
                    total += stream.tunnel.transport.get_write_buffer_size()
    return total


async def stalled(probe, quiet: float = 0.3, timeout: float = 4.0) -> int:
    """Wait until probe() stops changing for `quiet` seconds; return its value."""
    async with asyncio.timeout(timeout):
        last = probe()
        while True:
            await asyncio.sleep(quiet)
            now = probe()
            if now == last:
                return now
            last = now


# ------------------------------------------------------------------------- tests

async def test_settings_advertise_extended_connect_and_plain_connect_is_refused(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        assert c.conn.remote_settings.enable_connect_protocol == 1
        await c.open("/", protocol=None)
        assert c.reset_code == ErrorCodes.PROTOCOL_ERROR
        assert c.status is None
        assert seen.handshakes == []
        # Only that stream was refused: the connection carries a WebSocket next.
        await c.open("/ws/echo")
        assert c.status == 200
        await c.send(ws_frame(OP_TEXT, b"still here"))
        assert await c.message() == (OP_TEXT, b"still here")


@pytest.mark.parametrize("name, head", [
    ("no :path", [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                  (b":authority", b"a")]),
    ("no :scheme", [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":path", b"/ws/echo"),
                    (b":authority", b"a")]),
    (":protocol on GET", [(b":method", b"GET"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                          (b":path", b"/ws/echo"), (b":authority", b"a")]),
])
async def test_malformed_extended_connect_is_a_stream_error(tmp_path, name, head):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport, validate=False) as c:
        await c.open("", head=head)
        assert c.reset_code == ErrorCodes.PROTOCOL_ERROR and c.status is None
        assert seen.handshakes == []


async def test_text_and_binary_messages_echo_through_the_tunnel(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        await c.open("/ws/echo?room=1", headers=[("sec-websocket-protocol", "chat")])
        assert c.status == 200
        assert c.headers.get("sec-websocket-protocol") == "chat"
        assert "sec-websocket-accept" not in c.headers
        assert "upgrade" not in c.headers and "connection" not in c.headers

        method, path, headers = seen.handshakes[0]
        assert (method, path) == ("GET", "/echo?room=1")     # the route's prefix rewrite applied
        assert headers["upgrade"].lower() == "websocket"
        assert "upgrade" in headers["connection"].lower()
        assert headers["sec-websocket-version"] == "13"
        assert len(base64.b64decode(headers["sec-websocket-key"], validate=True)) == 16
        assert headers["sec-websocket-protocol"] == "chat"
        assert headers["host"] == "ws.local"                  # and its hostname rewrite
        assert headers["x-forwarded-for"] == "127.0.0.1"

        await c.send(ws_frame(OP_TEXT, "héllo, wörld".encode()))
        assert await c.message() == (OP_TEXT, "héllo, wörld".encode())
        blob = os.urandom(70000)    # a 64-bit length frame, several DATA frames
        await c.send(ws_frame(OP_BINARY, blob))
        assert await c.message() == (OP_BINARY, blob)
        assert [(t, d) for t, d in seen.messages] == [(WSMsgType.TEXT, "héllo, wörld"),
                                                       (WSMsgType.BINARY, blob)]

        # A clean WebSocket close: the backend answers it and hangs up; the stream ends.
        await c.send(ws_close(1000))
        op, payload = await c.message()
        assert op == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1000
        await c.until(lambda: c.ended or c.reset_code is not None)
        # END_STREAM; the RST(NO_ERROR) that may follow only says "stop sending" (RFC 9113 8.1).
        assert c.ended and c.reset_code in (None, ErrorCodes.NO_ERROR)
        await asyncio.wait_for(seen.finished.wait(), 2)


async def test_large_message_to_a_slow_reader_keeps_gateway_memory_bounded(tmp_path):
    seen = Seen()
    gport = free_port()
    size = 8 * MiB
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)) as gw, \
            ws_client(gport, window=256 * 1024) as c:
        c.auto_ack = False
        await c.open(f"/ws/big?size={size}")
        assert c.status == 200
        # The client grants no window: it gets its first window's worth and no more.
        got = await stalled(lambda: c.received)
        assert 0 < got <= 256 * 1024
        held = gateway_held(gw)
        assert held < 1 * MiB, f"the gateway buffered {held} bytes for a stalled reader"
        # Reading again drains the whole message, intact and in order.
        await c.ack_all()
        op, payload = await c.message(timeout=8.0)
        assert op == OP_BINARY and len(payload) == size
        assert payload == pattern(size)
        await asyncio.wait_for(seen.big_sent.wait(), 2)
        await c.send(ws_close())
        await asyncio.wait_for(seen.finished.wait(), 2)


async def test_large_message_from_the_client_echoes_back(tmp_path):
    seen = Seen()
    gport = free_port()
    size = 3 * MiB
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        await c.open("/ws/echo")
        body = pattern(size)
        await c.send(ws_frame(OP_BINARY, body))
        op, payload = await c.message(timeout=8.0)
        assert op == OP_BINARY and payload == body


async def test_backend_that_stops_reading_stops_the_client(tmp_path):
    """No acknowledgement of the client's DATA while the backend does not read."""
    reading = asyncio.Event()
    got = {"bytes": 0, "eof": False}

    async def backend(reader, writer):
        fields = await read_handshake(reader)
        writer.write(switching(fields))
        await writer.drain()
        await reading.wait()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got["bytes"] += len(chunk)
        got["eof"] = True
        writer.close()

    seen = Seen()
    gport = free_port()
    total = 24 * MiB
    async with ws_backend(seen) as bport, raw_backend(backend) as rport, \
            running_gateway(tmp_path, ws_doc(gport, bport, raw_port=rport)) as gw, ws_client(gport) as c:
        await c.open("/raw/sink")
        assert c.status == 200
        sender = asyncio.get_running_loop().create_task(c.send(b"z" * total, end=True))
        try:
            sent = await stalled(lambda: c.sent)
            assert sent < total // 2, f"the client got {sent} bytes out to a backend that reads nothing"
            assert not sender.done()
            held = gateway_held(gw)
            assert held < 1 * MiB, f"the gateway buffered {held} bytes for a backend that does not read"
            reading.set()
            await asyncio.wait_for(sender, 8)
        finally:
            sender.cancel()
        await c.until(lambda: got["eof"], timeout=8.0)
        assert got["bytes"] == total
        await c.until(lambda: c.ended)


async def test_client_end_stream_half_closes_the_backend(tmp_path):
    """END_STREAM is write_eof upstream; the backend may still answer, then its close ends the stream."""
    got = {}

    async def backend(reader, writer):
        fields = await read_handshake(reader)
        got["request"] = fields
        writer.write(switching(fields) + b"early")
        await writer.drain()
        got["body"] = await reader.read()       # until EOF: the half-close arrived
        writer.write(b"|after-eof:%d" % len(got["body"]))
        await writer.drain()
        writer.close()

    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, raw_backend(backend) as rport, \
            running_gateway(tmp_path, ws_doc(gport, bport, raw_port=rport)), ws_client(gport) as c:
        await c.open("/raw/half")
        assert c.status == 200
        assert got["request"][b":request-line"] == b"GET /half HTTP/1.1"
        await c.send(b"hello backend", end=True)
        await c.until(lambda: c.ended or c.reset_code is not None)
        assert got["body"] == b"hello backend"
        assert bytes(c.data) == b"early|after-eof:13"
        assert c.ended and c.reset_code is None


async def test_client_reset_closes_the_backend_connection(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        await c.open("/ws/echo")
        await c.send(ws_frame(OP_TEXT, b"one"))
        assert await c.message() == (OP_TEXT, b"one")
        await c.reset()
        await asyncio.wait_for(seen.finished.wait(), 3)    # the backend saw its connection end
        # The connection lives on for the next tunnel.
        seen.finished.clear()
        await c.open("/ws/echo")
        assert c.status == 200
        await c.send(ws_frame(OP_TEXT, b"two"))
        assert await c.message() == (OP_TEXT, b"two")


async def test_client_connection_loss_closes_the_backend(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)):
        c = await WsClient.connect(gport)
        await c.open("/ws/echo")
        await c.send(ws_frame(OP_TEXT, b"one"))
        assert await c.message() == (OP_TEXT, b"one")
        c.writer.transport.abort()
        await c.close()
        await asyncio.wait_for(seen.finished.wait(), 3)


async def test_backend_close_ends_the_stream(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        await c.open("/ws/bye")
        assert c.status == 200
        assert await c.message() == (OP_TEXT, b"bye")
        op, payload = await c.message()
        assert op == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1001
        assert payload[2:] == b"going away"
        await c.send(ws_close(1001))
        await c.until(lambda: c.ended or c.reset_code is not None)
        # END_STREAM; the RST(NO_ERROR) that may follow only says "stop sending" (RFC 9113 8.1).
        assert c.ended and c.reset_code in (None, ErrorCodes.NO_ERROR)
        await asyncio.wait_for(seen.finished.wait(), 2)


async def test_idle_tunnel_times_out_and_traffic_keeps_it_open(tmp_path):
    seen = Seen()
    gport = free_port()
    doc = ws_doc(gport, 0, ws_extra={"timeout": {"idle": {"value": 400, "unit": "ms"}}})
    async with ws_backend(seen) as bport:
        doc["virtualServices"][0]["endpoints"] = [f"127.0.0.1:{bport}"]
        async with running_gateway(tmp_path, doc), ws_client(gport) as c:
            await c.open("/ws/echo")
            assert c.status == 200
            for i in range(8):      # 0.8 s of traffic, twice the idle timeout
                await c.send(ws_frame(OP_TEXT, b"ping %d" % i))
                assert await c.message() == (OP_TEXT, b"ping %d" % i)
                await asyncio.sleep(0.1)
            assert c.reset_code is None and not c.ended
            await c.until(lambda: c.reset_code is not None or c.ended, timeout=3.0)
            assert c.reset_code == ErrorCodes.INTERNAL_ERROR
            await asyncio.wait_for(seen.finished.wait(), 2)


async def test_refused_upgrade_reaches_the_client_as_a_response(tmp_path):
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport)), \
            ws_client(gport) as c:
        await c.open("/ws/refuse")
        await c.until(lambda: c.ended or c.reset_code is not None)
        assert c.status == 403
        assert bytes(c.data) == b"no websockets for you"
        assert c.ended
        assert seen.handshakes[0][:2] == ("GET", "/refuse")


async def test_extended_connect_to_an_http2_service_is_501(tmp_path):
    seen = Seen()
    obs = H2Observations()
    gport = free_port()
    async with ws_backend(seen) as bport, h2_origin(obs) as oport, \
            running_gateway(tmp_path, ws_doc(gport, bport, h2_port=oport)), ws_client(gport) as c:
        await c.open("/h2/chat")
        await c.until(lambda: c.ended or c.reset_code is not None)
        assert c.status == 501
        assert b"HTTP/2" in bytes(c.data)
        assert obs.connections == 0
        # The same refusal for an HTTP/1.1 upgrade on an HTTP/2 listener's h1 clients.
        responses, _, closed = await raw_exchange(
            gport, b"GET /h2/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert [r.status for r in responses] == [501] and closed
        assert obs.connections == 0


async def test_websocket_over_tls_with_alpn_h2(tmp_path):
    ca = make_ca("ws test CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    cert, key = issue(ca, "gateway.local", dns=("localhost",), ips=("127.0.0.1",)).write(tmp_path, "server")
    tls = {"mode": "STRICT", "certificate": {"file": {"certificateChain": cert, "privateKey": key}}}
    seen = Seen()
    gport = free_port()
    async with ws_backend(seen) as bport, running_gateway(tmp_path, ws_doc(gport, bport, tls=tls)), \
            ws_client(gport, ca=ca_file) as c:
        assert c.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        assert c.conn.remote_settings.enable_connect_protocol == 1
        await c.open("/ws/echo")
        assert c.status == 200
        await c.send(ws_frame(OP_TEXT, b"over tls"))
        assert await c.message() == (OP_TEXT, b"over tls")
        assert seen.handshakes[0][2]["x-forwarded-proto"] == "https"
