"""HTTP/2 through the running gateway, end to end on real sockets.

Clients: curl (h2c prior knowledge, h2 over TLS by ALPN), the h2 client of h2_peers,
raw HTTP/1.1 sockets, and `RawH2` below, a hand-driven client that writes frames built
with the gateway's own HPACK encoder (for what no polite client sends). Backends: the
h2_peers origin (HTTP/2, it records every stream it saw) and the harness echo backend
(HTTP/1.1). Every test checks what the client got and what the backend saw.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
from contextlib import AsyncExitStack, asynccontextmanager

import h2.events
import pytest
import yaml
from aiohttp import web

import gateway.runtime
from gateway.certs import issue, make_ca
from gateway.config.errors import ConfigError
from gateway.config.load import load_config
from gateway.h2 import frames as h2f
from gateway.h2.hpack import Decoder, Encoder
from h2_peers import H2Observations, Progress, h2_client, h2_origin, h2_request
from harness import (ResponseReader, echo_backend, echo_handler, free_port, gateway_doc, route, running_gateway,
                     service)

MiB = 1 << 20
H1_PREFIX = "/h1/"          # routed to the HTTP/1.1 echo backend; everything else to the h2 origin


# ------------------------------------------------------------------ configs

def h2_doc(gport, echo_port, origin_port, *, protocol="http", limits=None, tls=None):
    """One listener (`http` or `http2`): /h1/ to the HTTP/1.1 echo backend, the rest to the
    HTTP/2 origin (a virtual service with protocol http2)."""
    routes = [route("to-h1", H1_PREFIX, "h1.local", priority=1), route("to-h2", "/", "h2.local", priority=2)]
    services = [service("h1.local", echo_port), {**service("h2.local", origin_port), "protocol": "http2"}]
    doc = gateway_doc(gport, routes, services, limits=limits)
    listener = doc["virtualGateway"]["spec"]["listeners"][0]
    listener["portMapping"]["protocol"] = protocol
    if protocol == "http2":
        for r in routes:
            r["spec"]["http2Route"] = r["spec"].pop("httpRoute")
    if tls is not None:
        listener["tls"] = tls
    return doc


class Env:
    """A running gateway with both backends: `port`, `obs` (the origin's record), `echo_seen`
    (paths the echo backend answered), `gw`."""

    def __init__(self):
        self.port = 0
        self.obs = H2Observations()
        self.echo_seen: list[str] = []
        self.gw = None


async def _big_handler(request: web.Request) -> web.StreamResponse:
    """/h1/big?size=N: N bytes in 64 KiB writes, no content-length (chunked)."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    await response.prepare(request)
    block = b"y" * 65536
    while size > 0:
        await response.write(block[:min(size, len(block))])
        size -= len(block)
    await response.write_eof()
    return response


async def _count_handler(request: web.Request) -> web.StreamResponse:
    """/h1/count: reads the body as a stream (no size cap) and reports its length and framing."""
    total = 0
    first = b""
    async for chunk in request.content.iter_any():
        first = first or chunk[:16]
        total += len(chunk)
    return web.json_response({"body_length": total, "first": first.decode("latin-1"),
                              "transfer-encoding": request.headers.get("Transfer-Encoding"),
                              "content-length": request.headers.get("Content-Length")})


@asynccontextmanager
async def gateway_env(tmp_path, *, protocol="http", limits=None, tls=None, origin_kwargs=None):
    env = Env()

    def recorded(handler):
        async def record(request):
            env.echo_seen.append(request.path_qs)
            return await handler(request)
        return record

    async with AsyncExitStack() as stack:
        echo_port = await stack.enter_async_context(echo_backend(
            "h1", handler=recorded(echo_handler), routes=[("GET", "/big", recorded(_big_handler)), ("*", "/count", recorded(_count_handler))]))
        origin_port = await stack.enter_async_context(h2_origin(env.obs, **(origin_kwargs or {})))
        env.port = free_port()
        doc = h2_doc(env.port, echo_port, origin_port, protocol=protocol, limits=limits, tls=tls)
        env.gw = await stack.enter_async_context(running_gateway(tmp_path, doc, admin=False))
        yield env


# ------------------------------------------------------------------ a raw HTTP/2 client

_FRAME = struct.Struct(">BHBBL")


class RawH2:
    """HTTP/2 by hand on a plain socket. Frames received are kept in `frames` as
    (type, flags, stream id, payload); SETTINGS are acknowledged; PINGs are answered only
    when `answer_pings`; WINDOW_UPDATE is never sent unless the test sends it."""

    def __init__(self, reader, writer, answer_pings):
        self.reader = reader
        self.writer = writer
        self.answer_pings = answer_pings
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.heads: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.decoder = Decoder()
        self.encoder = Encoder()
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port, *, settings=(), answer_pings=True):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, answer_pings)
        client.send(h2f.PREFACE + h2f.settings(list(settings)))
        return client

    async def close(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.writer.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # --- out

    def send(self, *frames: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))

    def block(self, headers) -> bytes:
        return self.encoder.encode([(n.encode() if isinstance(n, str) else n,
                                     v.encode() if isinstance(v, str) else v) for n, v in headers])

    def headers(self, sid, headers, *, end_stream=True, end_headers=True) -> bytes:
        flags = (h2f.FLAG_END_STREAM if end_stream else 0) | (h2f.FLAG_END_HEADERS if end_headers else 0)
        return h2f.frame(h2f.HEADERS, flags, sid, self.block(headers))

    def request(self, sid, path="/", *, method="GET", extra=(), end_stream=True) -> bytes:
        return self.headers(sid, [(":method", method), (":scheme", "http"), (":authority", "gw.test"),
                                  (":path", path), *extra], end_stream=end_stream)

    # --- in

    async def _read(self):
        buf = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    hi, lo, ftype, flags, sid = _FRAME.unpack_from(buf)
                    end = 9 + (hi << 16 | lo)
                    if len(buf) < end:
                        break
                    payload, buf = buf[9:end], buf[end:]
                    self._on_frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def _on_frame(self, ftype, flags, sid, payload):
        self.frames.append((ftype, flags, sid, payload))
        if ftype == h2f.SETTINGS and not flags & h2f.FLAG_ACK:
            self.send(h2f.SETTINGS_ACK)
        elif ftype == h2f.PING and not flags & h2f.FLAG_ACK and self.answer_pings:
            self.send(h2f.ping(payload, ack=True))
        elif ftype == h2f.HEADERS:
            self.heads.setdefault(sid, []).append(self.decoder.decode(payload))
        elif ftype == h2f.DATA:
            self.bodies.setdefault(sid, bytearray()).extend(payload)

    async def wait(self, predicate, timeout=3.0):
        """Until predicate() is true (returns its value); TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self.closed.is_set():
                    value = predicate()
                    if value:
                        return value
                    raise ConnectionError(f"closed; frames: {self.summary()}")
                self.changed.clear()
                await self.changed.wait()

    def of(self, ftype, sid=None):
        return [f for f in self.frames if f[0] == ftype and (sid is None or f[2] == sid)]

    def goaway(self):
        """(last_stream_id, error_code) of the first GOAWAY, or None."""
        found = self.of(h2f.GOAWAY)
        if not found:
            return None
        payload = found[0][3]
        return int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")

    def rst(self, sid):
        found = self.of(h2f.RST_STREAM, sid)
        return int.from_bytes(found[0][3], "big") if found else None

    def status(self, sid):
        heads = self.heads.get(sid)
        return int(dict(heads[0])[b":status"]) if heads else None

    def ended(self, sid):
        return any(f[1] & h2f.FLAG_END_STREAM for f in self.frames
                   if f[2] == sid and f[0] in (h2f.DATA, h2f.HEADERS))

    def summary(self):
        return [(t, fl, s, len(p)) for t, fl, s, p in self.frames][-20:]


def _need_curl():
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")


async def curl(*args):
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out, err.decode()


async def raw_http1(port, data: bytes, *, timeout=10.0):
    """One request on a raw socket; the parsed response (read until it completes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        parsed = ResponseReader()
        async with asyncio.timeout(timeout):
            while not (parsed.responses and parsed.responses[-1].complete):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                parsed.feed(chunk)
        return parsed.responses[-1] if parsed.responses else None
    finally:
        writer.close()


# =================================================================== 1. curl

@pytest.mark.parametrize("protocol", ["http", "http2"])
async def test_curl_prior_knowledge(tmp_path, protocol):
    _need_curl()
    async with gateway_env(tmp_path, protocol=protocol) as env:
        rc, out, err = await curl("--http2-prior-knowledge", "-D", "-", "-H", "x-probe: curl",
                                  f"http://127.0.0.1:{env.port}/h1/hello?x=1")
        assert rc == 0, err
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/2 200")
        seen = json.loads(body)
        assert seen["name"] == "h1" and seen["method"] == "GET" and seen["path"] == "/hello?x=1"
        headers = dict(seen["headers"])
        assert headers["x-probe"] == "curl" and headers["x-forwarded-proto"] == "http"

        rc, out, err = await curl("--http2-prior-knowledge", "-d", "abc",
                                  f"http://127.0.0.1:{env.port}/origin/post")
        assert rc == 0, err
        seen = json.loads(out)
        assert (seen["method"], seen["path"], seen["body_length"]) == ("POST", "/origin/post", 3)
        record = await env.obs.wait("/origin/post")
        assert record.scheme == "http" and record.authority == "h2.local" and record.outcome == "ok"
    assert env.echo_seen == ["/hello?x=1"]


@pytest.fixture
def pki(tmp_path):
    ca = make_ca("h2 test CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    cert, key = issue(ca, "gateway.local", dns=("localhost",), ips=("127.0.0.1",)).write(tmp_path, "server")
    return {"ca_file": ca_file, "server": (cert, key)}


def strict_tls(pki):
    return {"mode": "STRICT", "certificate": {"file": {"certificateChain": pki["server"][0],
                                                       "privateKey": pki["server"][1]}}}


async def test_curl_http2_over_tls_by_alpn(tmp_path, pki):
    _need_curl()
    async with gateway_env(tmp_path, protocol="http2", tls=strict_tls(pki)) as env:
        rc, out, err = await curl("--http2", "--cacert", pki["ca_file"], "-w", "\n%{http_version}",
                                  f"https://localhost:{env.port}/h1/secure")
        assert rc == 0, err
        body, _, version = out.rpartition(b"\n")
        assert version == b"2"
        seen = json.loads(body)
        assert seen["path"] == "/secure" and dict(seen["headers"])["x-forwarded-proto"] == "https"

        rc, out, err = await curl("--http2", "--cacert", pki["ca_file"],
                                  f"https://localhost:{env.port}/source?size=200000")
        assert rc == 0, err
        assert out == b"x" * 200000
        record = await env.obs.wait("/source")
        assert record.sent_bytes == 200000 and record.outcome == "ok"
        assert dict(record.headers)["x-forwarded-proto"] == "https"
    assert env.echo_seen == ["/secure"]


# =================================================================== 2. translation

def _chunked(body: bytes, size: int) -> bytes:
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return bytes(out + b"0\r\n\r\n")


async def test_http1_client_to_h2_origin_streams_bodies_both_ways(tmp_path):
    async with gateway_env(tmp_path) as env:
        body = bytes(range(256)) * (3 * MiB // 256)
        head = b"POST /up/chunked HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        r = await raw_http1(env.port, head + _chunked(body, 100_000))
        assert r.status == 200 and r.json()["body_length"] == len(body)
        record = await env.obs.wait("/up/chunked")
        assert record.body_bytes == len(body) and record.method == "POST"
        # No content-length invented for a chunked request; no hop-by-hop field forwarded.
        names = [n for n, _ in record.headers]
        assert "content-length" not in names and "transfer-encoding" not in names

        head = b"PUT /up/sized HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
        r = await raw_http1(env.port, head + body)
        assert r.status == 200 and r.json()["body_length"] == len(body)
        record = await env.obs.wait("/up/sized")
        assert record.body_bytes == len(body) and dict(record.headers)["content-length"] == str(len(body))

        r = await raw_http1(env.port, b"GET /source?size=%d&chunk=10000 HTTP/1.1\r\nHost: gw\r\n\r\n" % (4 * MiB))
        assert r.status == 200 and r.complete and len(r.body) == 4 * MiB
        assert r.header("content-length") == str(4 * MiB)
        assert (await env.obs.wait("/source")).sent_bytes == 4 * MiB


async def test_http1_client_gets_trailers_of_the_h2_origin(tmp_path):
    async with gateway_env(tmp_path) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        writer.write(b"GET /source?size=300000&trailers=1 HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\n\r\n")
        raw = b""
        async with asyncio.timeout(5):
            while not raw.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in raw:
                chunk = await reader.read(65536)
                assert chunk, raw[-200:]
                raw += chunk
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
        parsed = ResponseReader()
        parsed.feed(raw)
        assert parsed.responses[0].complete and len(parsed.responses[0].body) == 300000
        tail = rest[rest.rindex(b"\r\n0\r\n") + 5:].lower()
        assert b"x-trailer: done\r\n" in tail and b"x-bytes: 300000\r\n" in tail
        record = await env.obs.wait("/source")
        assert ("te", "trailers") in record.headers


async def test_h2_client_to_http1_backend(tmp_path):
    async def pieces():
        for _ in range(40):
            yield b"z" * 50_000
            await asyncio.sleep(0)

    async with gateway_env(tmp_path) as env, h2_client(env.port) as c:
        # No content-length: the gateway frames it as chunked towards the HTTP/1.1 backend.
        r = await c.request("POST", "/h1/count", body=pieces())
        assert r.status == 200 and r.ended
        seen = r.json()
        assert seen["body_length"] == 2_000_000 and seen["first"] == "z" * 16
        assert seen["transfer-encoding"] == "chunked" and seen["content-length"] is None

        r = await c.request("PUT", "/h1/count", body=b"q" * 3 * MiB,
                            headers=[("content-length", str(3 * MiB))])
        seen = r.json()
        assert r.status == 200 and seen["body_length"] == 3 * MiB
        assert seen["content-length"] == str(3 * MiB) and seen["transfer-encoding"] is None

        r = await c.request("POST", "/h1/echo", body=b"small")
        seen = r.json()
        assert r.status == 200 and seen["body"] == "small" and seen["method"] == "POST"

        r = await c.request("GET", f"/h1/big?size={3 * MiB}")
        assert r.status == 200 and r.ended and r.nbytes == 3 * MiB and set(r.data) == {ord("y")}
        assert r.header("transfer-encoding") is None and r.header("connection") is None
    assert env.echo_seen == ["/count", "/count", "/echo", f"/big?size={3 * MiB}"]


# =================================================================== 3. request validation

_GOOD = [(":method", "GET"), (":scheme", "http"), (":authority", "gw.test")]
INVALID_HEADS = {
    "no-method": [(":scheme", "http"), (":authority", "gw.test"), (":path", "/bad")],
    "no-path": _GOOD,
    "no-scheme": [(":method", "GET"), (":authority", "gw.test"), (":path", "/bad")],
    "uppercase-name": _GOOD + [(":path", "/bad"), ("X-Upper", "1")],
    "connection": _GOOD + [(":path", "/bad"), ("connection", "close")],
    "keep-alive": _GOOD + [(":path", "/bad"), ("keep-alive", "timeout=5")],
    "transfer-encoding": _GOOD + [(":path", "/bad"), ("transfer-encoding", "chunked")],
    "proxy-connection": _GOOD + [(":path", "/bad"), ("proxy-connection", "keep-alive")],
    "upgrade": _GOOD + [(":path", "/bad"), ("upgrade", "websocket")],
    "te-gzip": _GOOD + [(":path", "/bad"), ("te", "gzip")],
    "pseudo-after-regular": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/bad")],
    "unknown-pseudo": _GOOD + [(":path", "/bad"), (":foo", "bar")],
    "duplicate-path": _GOOD + [(":path", "/bad"), (":path", "/bad2")],
    "empty-path": _GOOD + [(":path", "")],
    "status-in-request": _GOOD + [(":path", "/bad"), (":status", "200")],
    "value-with-newline": _GOOD + [(":path", "/bad"), ("x-a", "1\nx-b: 2")],
    "name-with-space": _GOOD + [(":path", "/bad"), ("x a", "1")],
    "content-length-not-a-number": _GOOD + [(":path", "/bad"), ("content-length", "12a")],
}


@pytest.mark.parametrize("case", list(INVALID_HEADS))
async def test_invalid_request_head_is_refused_and_never_forwarded(tmp_path, case):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        c.send(c.headers(1, INVALID_HEADS[case]), c.request(3, "/good"))
        await c.wait(lambda: c.ended(3))
        assert c.status(3) == 200 and json.loads(c.bodies[3])["path"] == "/good"
        # A stream error, answered on the stream; never a connection error.
        assert c.rst(1) == h2f.PROTOCOL_ERROR or c.status(1) == 400, c.summary()
        assert c.goaway() is None and not c.closed.is_set()
        c.send(c.request(5, "/again"))
        await c.wait(lambda: c.ended(5))
        assert c.status(5) == 200
    assert [r.path for r in env.obs.requests] == ["/good", "/again"]
    assert env.echo_seen == []


async def test_valid_te_trailers_passes(tmp_path):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        c.send(c.request(1, "/te", extra=[("te", "trailers")]))
        await c.wait(lambda: c.ended(1))
        assert c.status(1) == 200
    assert ("te", "trailers") in env.obs.last("/te").headers


# =================================================================== 4. RST_STREAM and GOAWAY

async def test_client_reset_cancels_the_upstream_stream(tmp_path):
    async with gateway_env(tmp_path) as env, h2_client(env.port) as c:
        r = await c.request("GET", "/slow?sleep=3", cancel_after=0.3)
        assert r.cancelled and r.status is None
        record = await env.obs.wait("/slow")
        assert record.outcome == "reset" and record.reset_code == h2f.CANCEL
        # The connection goes on serving.
        r = await c.request("GET", "/after")
        assert r.status == 200 and r.ended
        # A cancel in the middle of a response body, too.
        r = await c.request("GET", f"/source?size={8 * MiB}&delay=0.01", cancel_after_bytes=100_000)
        assert r.cancelled
        record = await env.obs.wait("/source")
        assert record.outcome == "reset" and record.sent_bytes < 8 * MiB


async def test_http1_client_leaving_cancels_the_upstream_stream(tmp_path):
    async with gateway_env(tmp_path) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        writer.write(b"GET /slow?sleep=3 HTTP/1.1\r\nHost: gw\r\n\r\n")
        async with asyncio.timeout(2):
            while not env.obs.of("/slow"):
                await asyncio.sleep(0.01)
        # A reset, not a FIN: a half-closed HTTP/1.1 client still gets its response.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()
        record = await env.obs.wait("/slow")
        assert record.outcome == "reset" and record.reset_code == h2f.CANCEL


@pytest.mark.parametrize("query", ["rst=before", "rst=before&code=8", "goaway=before&code=2"])
async def test_origin_reset_before_the_head_is_a_502(tmp_path, query):
    async with gateway_env(tmp_path) as env:
        r = await h2_request(env.port, "GET", f"/x?{query}")
        assert r.status == 502 and r.ended and b"reset before headers" in r.data
        # A stream reset says so; a GOAWAY that drops the stream is the connection's end.
        assert (b"reset reason: remote reset" in r.data) == query.startswith("rst")
        h1 = await raw_http1(env.port, b"GET /y?%s HTTP/1.1\r\nHost: gw\r\n\r\n" % query.encode())
        assert h1.status == 502 and h1.complete
    assert {r.outcome for r in env.obs.requests} <= {"rst_sent", "goaway_sent"}


async def test_origin_reset_on_a_reused_connection_is_not_retried(tmp_path):
    """Only REFUSED_STREAM promises the backend did nothing; an INTERNAL_ERROR reset of a
    GET on a warm upstream connection is answered 502, never sent twice."""
    async with gateway_env(tmp_path) as env:
        async with h2_client(env.port) as c:
            assert (await c.request("GET", "/warm")).status == 200
            r = await c.request("GET", "/once?rst=before&code=2")
            assert r.status == 502
        assert len(env.obs.of("/once")) == 1
        assert len({r.peer for r in env.obs.requests}) == 1     # the same upstream connection


async def test_origin_reset_mid_body_resets_or_cuts_the_client(tmp_path):
    async with gateway_env(tmp_path) as env:
        r = await h2_request(env.port, "GET", f"/source?size={MiB}&rst=100000")
        assert r.status == 200 and not r.ended and r.reset_code is not None
        assert r.nbytes <= 100_000
        # HTTP/1.1 has no stream reset: the connection is cut, the body visibly short.
        h1 = await raw_http1(env.port, b"GET /source?size=%d&rst=100000 HTTP/1.1\r\nHost: gw\r\n\r\n" % MiB)
        assert h1.status == 200 and not h1.complete and len(h1.body) <= 100_000
    assert [r.outcome for r in env.obs.requests] == ["rst_sent", "rst_sent"]


async def test_origin_refused_stream_is_retried_once(tmp_path):
    async with gateway_env(tmp_path) as env, h2_client(env.port) as c:
        # REFUSED_STREAM and streams above a GOAWAY's last id were never processed (RFC 9113
        # 8.7): sent again once, the first stream of a fresh connection included.
        for n, query in enumerate(["rst=before&code=7", "rst=before&code=7", "goaway=before&last=0"]):
            r = await c.request("GET", f"/r{n}?{query}")
            assert r.status == 502 and r.ended
            assert len(env.obs.of(f"/r{n}")) == 2, [(x.path, x.outcome) for x in env.obs.requests]
        # Any other reset before the head is not a refusal: a POST is never sent twice.
        r = await c.request("POST", "/p?rst=before", body=b"once")
        assert r.status == 502 and len(env.obs.of("/p")) == 1


async def test_origin_goaway_lets_streams_finish_and_new_requests_use_a_new_connection(tmp_path):
    async with gateway_env(tmp_path) as env, h2_client(env.port) as c:
        slow = asyncio.create_task(c.request("GET", "/slow?sleep=0.6"))
        async with asyncio.timeout(2):
            while not env.obs.of("/slow"):
                await asyncio.sleep(0.01)
        # GOAWAY right after this stream's head (last id: this stream), then 2 MiB slowly.
        progress = Progress()
        draining = asyncio.create_task(c.request(
            "GET", f"/source?size={2 * MiB}&goaway=0&chunk=65536&delay=0.02", progress=progress))
        async with asyncio.timeout(2):
            while not progress.nbytes:
                await asyncio.sleep(0.01)
        after = await c.request("GET", "/after")
        assert after.status == 200 and after.ended
        slow, draining = await slow, await draining
        assert slow.status == 200 and slow.ended
        assert draining.status == 200 and draining.ended and draining.nbytes == 2 * MiB
    first, second = env.obs.last("/slow").peer, env.obs.last("/source").peer
    assert first == second, "both streams were meant to share the first connection"
    assert env.obs.last("/after").peer != first
    assert env.obs.connections == 2
    assert [r.outcome for r in env.obs.requests] == ["ok", "ok", "ok"]


async def test_gateway_shutdown_sends_goaway_and_finishes_streams(tmp_path):
    async with gateway_env(tmp_path) as env, await RawH2.connect(env.port) as c:
        c.send(c.request(1, "/first"))
        await c.wait(lambda: c.ended(1))
        c.send(c.request(3, "/slow?sleep=0.4"))
        async with asyncio.timeout(2):
            while not env.obs.of("/slow"):
                await asyncio.sleep(0.01)
        stopping = asyncio.create_task(env.gw.stop(timeout=3))
        await c.wait(c.goaway)
        assert c.goaway() == (3, h2f.NO_ERROR)
        assert not c.ended(3), "GOAWAY must come before the in-flight response ends"
        await c.wait(lambda: c.ended(3))
        assert c.status(3) == 200 and json.loads(c.bodies[3])["path"] == "/slow?sleep=0.4"
        await stopping
        await c.wait(c.closed.is_set)
    assert env.obs.last("/slow").outcome == "ok"


# =================================================================== 5. hostile clients

def peer_setting(c: RawH2, ident: int) -> int | None:
    for ftype, flags, _, payload in c.frames:
        if ftype == h2f.SETTINGS and not flags & h2f.FLAG_ACK:
            for key, value in h2f.parse_settings(payload):
                if key == ident:
                    return value
    return None


async def assert_still_serving(env, path="/bystander"):
    """A polite client on its own connection is served while (and after) another misbehaves."""
    r = await h2_request(env.port, "GET", path, timeout=3)
    assert r.status == 200 and r.ended and r.json()["path"] == path


async def test_streams_over_the_concurrency_limit_are_refused(tmp_path):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        limit = await c.wait(lambda: peer_setting(c, h2f.SETTINGS_MAX_CONCURRENT_STREAMS))
        assert 0 < limit < 1000
        # Requests whose bodies never come keep their streams open.
        c.send(*(c.request(1 + 2 * i, f"/hold{i}", method="POST", end_stream=False) for i in range(limit)))
        over = 1 + 2 * limit
        c.send(c.request(over, "/over"))
        await c.wait(lambda: c.rst(over) is not None)
        assert c.rst(over) == h2f.REFUSED_STREAM and c.goaway() is None
        await assert_still_serving(env)
        # A stream that ends makes room for the next one.
        c.send(h2f.frame(h2f.DATA, h2f.FLAG_END_STREAM, 1, b"body"))
        await c.wait(lambda: c.ended(1))
        assert c.status(1) == 200 and json.loads(c.bodies[1])["body_length"] == 4
        c.send(c.request(over + 2, "/room"))
        await c.wait(lambda: c.ended(over + 2))
        assert c.status(over + 2) == 200
    assert not env.obs.of("/over")


@pytest.mark.parametrize("gap", [0.0, 0.005], ids=["reset-in-the-same-write", "reset-after-forwarding"])
async def test_rapid_reset_gets_goaway_and_a_bounded_backend_load(tmp_path, gap):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        sid, sent = 1, 0
        while sent < 20_000 and c.goaway() is None and not c.closed.is_set():
            opened = list(range(sid, sid + 100, 2))
            sid += 100
            sent += len(opened)
            heads = [c.request(s, "/rr?sleep=1") for s in opened]
            resets = [h2f.rst_stream(s, h2f.CANCEL) for s in opened]
            if gap:
                c.send(*heads)
                await asyncio.sleep(gap)     # long enough for the gateway to forward them
                c.send(*resets)
            else:
                c.send(*[f for pair in zip(heads, resets) for f in pair])
            await asyncio.sleep(0.001)
        await c.wait(c.goaway)
        assert c.goaway()[1] == h2f.ENHANCE_YOUR_CALM
        await c.wait(c.closed.is_set)
        await assert_still_serving(env)
    reached = env.obs.of("/rr")
    # The attack was cut off after a few hundred streams (of the 20 000 it would send).
    assert sent <= 600 and len(reached) <= sent, (len(reached), sent)
    if gap:
        assert reached, "the resets were meant to follow forwarded streams"
    # Every stream that reached the origin was cancelled there, none left running.
    for record in reached:
        await asyncio.wait_for(record.done.wait(), 2)
        assert record.outcome in ("reset", "connection_lost"), record.outcome


@pytest.mark.parametrize("frame_size", [100, 16384])
async def test_continuation_flood_gets_goaway(tmp_path, frame_size):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        first = c.headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/flood"),
                              (":authority", "gw.test")], end_headers=False)
        pad = h2f.frame(h2f.CONTINUATION, 0, 1, b"\x00" * frame_size)
        # Our SETTINGS ACK must not land inside the header block (that is a PROTOCOL_ERROR).
        await c.wait(lambda: c.of(h2f.SETTINGS))
        c.send(first)
        for _ in range(50):     # up to 50 x 20 frames; the gateway gives up long before
            if c.closed.is_set():
                break
            c.send(*[pad] * 20)
            try:
                await c.writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.001)
        await c.wait(c.goaway)
        assert c.goaway() == (0, h2f.ENHANCE_YOUR_CALM)
        await c.wait(c.closed.is_set)
        await assert_still_serving(env)
    assert not env.obs.of("/flood")
    assert all(not conn.streams for ctx in env.gw.contexts for conn in ctx.connections)


async def test_oversized_header_list_gets_431_and_never_reaches_the_backend(tmp_path):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        limit = await c.wait(lambda: peer_setting(c, h2f.SETTINGS_MAX_HEADER_LIST_SIZE))
        block = c.block([(":method", "GET"), (":scheme", "http"), (":authority", "gw.test"),
                         (":path", "/huge"), ("x-big", "b" * (limit + 1000))])
        # HEADERS + CONTINUATION within the gateway's SETTINGS_MAX_FRAME_SIZE (16384).
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        frames = [h2f.frame(h2f.HEADERS, h2f.FLAG_END_STREAM, 1, pieces[0])]
        for n, piece in enumerate(pieces[1:], 2):
            frames.append(h2f.frame(h2f.CONTINUATION, h2f.FLAG_END_HEADERS if n == len(pieces) else 0, 1, piece))
        c.send(*frames, c.request(3, "/fine"))
        await c.wait(lambda: c.ended(3) and (c.ended(1) or c.rst(1) is not None))
        assert c.status(1) == 431 and c.ended(1)
        assert c.status(3) == 200 and c.goaway() is None
    assert [r.path for r in env.obs.requests] == ["/fine"]


async def test_http1_header_limits_hold_for_http2_clients(tmp_path):
    """maxRequestHeaderBytes is the advertised header-list size; maxRequestHeaders counts fields."""
    limits = {"maxRequestHeaderBytes": 8192, "maxRequestHeaders": 20}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env:
        async with await RawH2.connect(env.port) as c:
            assert await c.wait(lambda: peer_setting(c, h2f.SETTINGS_MAX_HEADER_LIST_SIZE)) == 8192
        async with h2_client(env.port) as client:
            many = [(f"x-h{i}", "v") for i in range(21)]
            assert (await client.request("GET", "/many", headers=many)).status == 431
            assert (await client.request("GET", "/twenty", headers=many[:20])).status == 200
            big = [("x-big", "b" * 9000)]
            r = await client.request("GET", "/big", headers=big)
            assert r.status == 431 or r.reset_code is not None
            assert (await client.request("GET", "/after")).status == 200
    assert [r.path for r in env.obs.requests] == ["/twenty", "/after"]


@pytest.mark.parametrize("kind", ["settings", "ping", "window-update", "empty-data", "priority"])
async def test_control_frame_flood_gets_goaway(tmp_path, kind):
    async with gateway_env(tmp_path, protocol="http2") as env, await RawH2.connect(env.port) as c:
        if kind in ("empty-data", "window-update"):
            c.send(c.request(1, "/hold", method="POST", end_stream=False))
        flood = {"settings": h2f.settings([]),
                 "ping": h2f.ping(b"12345678"),
                 "window-update": h2f.window_update(0, 1),
                 "empty-data": h2f.frame(h2f.DATA, 0, 1, b""),
                 "priority": h2f.frame(h2f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10")}[kind]
        for _ in range(100):
            if c.closed.is_set() or c.goaway():
                break
            c.send(flood * 100)
            await asyncio.sleep(0.001)
        await c.wait(c.goaway)
        assert c.goaway()[1] == h2f.ENHANCE_YOUR_CALM
        await c.wait(c.closed.is_set)
        await assert_still_serving(env)


async def test_zero_window_client_pauses_the_upstream(tmp_path):
    size = 8 * MiB
    async with gateway_env(tmp_path, protocol="http2") as env, \
            await RawH2.connect(env.port, settings=[(h2f.SETTINGS_INITIAL_WINDOW_SIZE, 0)]) as c:
        c.send(c.request(1, f"/source?size={size}"))
        await c.wait(lambda: c.status(1))
        await asyncio.sleep(0.5)
        record = env.obs.last("/source")
        # The gateway holds what its own window to the origin let through, no more.
        assert record.sent_bytes < MiB, record.sent_bytes
        assert not c.bodies.get(1)
        await assert_still_serving(env)
        held = record.sent_bytes
        await asyncio.sleep(0.3)
        assert record.sent_bytes == held, "the origin kept sending to a paused gateway"
        # Windows opened: the rest flows.
        c.send(h2f.window_update(1, size), h2f.window_update(0, size))
        await c.wait(lambda: c.ended(1), timeout=5)
        assert len(c.bodies[1]) == size
    assert record.outcome == "ok" and record.sent_bytes == size


# =================================================================== 6, 7. idle timeout, keepalive

@pytest.fixture
def fast_sweep(monkeypatch):
    """Idle and keepalive checks on every 100 ms tick instead of once a second."""
    monkeypatch.setattr(gateway.runtime, "IDLE_CHECK_EVERY", 1)


async def test_idle_connection_gets_goaway_then_is_closed(tmp_path, fast_sweep):
    limits = {"downstreamIdleTimeoutSeconds": 0.3}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, \
            await RawH2.connect(env.port) as c:
        c.send(c.request(1, "/one"))
        await c.wait(lambda: c.ended(1))
        assert c.goaway() is None
        await c.wait(c.goaway)
        assert c.goaway() == (1, h2f.NO_ERROR)
        await c.wait(c.closed.is_set)
    assert env.gw.stats.listener(env.port).downstream_cx_idle_timeout == 1


async def test_a_stream_in_flight_is_not_idle(tmp_path, fast_sweep):
    limits = {"downstreamIdleTimeoutSeconds": 0.2}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, h2_client(env.port) as c:
        r = await c.request("GET", "/slow?sleep=0.6")
        assert r.status == 200 and r.ended and r.goaway is None


async def test_keepalive_pings_a_silent_client_that_answers(tmp_path, fast_sweep):
    limits = {"http2KeepaliveIntervalSeconds": 0.2, "http2KeepaliveTimeoutSeconds": 0.3}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, h2_client(env.port) as c:
        await asyncio.sleep(1.5)        # several intervals, each longer than the timeout
        pings = [e for e in c.events if isinstance(e, h2.events.PingReceived)]
        assert len(pings) >= 3 and all(p.ping_data == b"gw-alive" for p in pings)
        assert c.goaway is None and not c.closed.is_set()
        r = await c.request("GET", "/still-here")
        assert r.status == 200 and r.ended


async def test_keepalive_closes_a_client_that_never_answers(tmp_path, fast_sweep):
    limits = {"http2KeepaliveIntervalSeconds": 0.2, "http2KeepaliveTimeoutSeconds": 0.3}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, \
            await RawH2.connect(env.port, answer_pings=False) as c:
        # A long request in flight: keepalive applies with streams open, and frees them.
        c.send(c.request(1, "/slow?sleep=5"))
        await c.wait(lambda: c.of(h2f.PING))
        await c.wait(c.closed.is_set, timeout=3)
        assert c.goaway() == (1, h2f.NO_ERROR)
        assert c.of(h2f.GOAWAY)[0][3][8:] == b"keepalive timeout"
        assert not c.ended(1)
        record = await env.obs.wait("/slow")
        assert record.outcome == "reset" and record.reset_code == h2f.CANCEL
        await assert_still_serving(env)
        assert env.gw.stats.listener(env.port).downstream_cx_keepalive_timeout == 1


async def test_keepalive_counts_any_frame_as_an_answer(tmp_path, fast_sweep):
    limits = {"http2KeepaliveIntervalSeconds": 0.2, "http2KeepaliveTimeoutSeconds": 0.3}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, \
            await RawH2.connect(env.port, answer_pings=False) as c:
        # Never an ACK, but a steady upload: alive (its ACK could be stuck behind the data).
        c.send(c.request(1, "/up", method="POST", end_stream=False))
        for _ in range(12):
            c.send(h2f.frame(h2f.DATA, 0, 1, b"d" * 100))
            await asyncio.sleep(0.1)
        assert not c.closed.is_set() and c.goaway() is None
        c.send(h2f.frame(h2f.DATA, h2f.FLAG_END_STREAM, 1, b""))
        await c.wait(lambda: c.ended(1))
        assert c.status(1) == 200 and json.loads(c.bodies[1])["body_length"] == 1200


async def test_keepalive_off(tmp_path, fast_sweep):
    limits = {"http2KeepaliveIntervalSeconds": 0}
    async with gateway_env(tmp_path, protocol="http2", limits=limits) as env, \
            await RawH2.connect(env.port, answer_pings=False) as c:
        await asyncio.sleep(0.5)
        assert not c.of(h2f.PING) and not c.closed.is_set()


@pytest.mark.parametrize("limits, message", [
    ({"http2KeepaliveIntervalSeconds": -1}, "gateway.limits.http2KeepaliveIntervalSeconds"),
    ({"http2KeepaliveIntervalSeconds": "60"}, "gateway.limits.http2KeepaliveIntervalSeconds"),
    ({"http2KeepaliveTimeoutSeconds": 0}, "gateway.limits.http2KeepaliveTimeoutSeconds"),
    ({"http2KeepaliveTimeoutSeconds": 90000}, "gateway.limits.http2KeepaliveTimeoutSeconds"),
])
def test_keepalive_settings_are_validated(tmp_path, limits, message):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(h2_doc(free_port(), 1, 2, limits=limits)))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert any(message in str(issue) for issue in err.value.issues), err.value.issues


def test_keepalive_settings_defaults_and_values(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(h2_doc(free_port(), 1, 2)))
    limits = load_config(str(path))[0].settings.limits
    assert (limits.http2_keepalive_interval, limits.http2_keepalive_timeout) == (60.0, 20.0)
    path.write_text(yaml.safe_dump(h2_doc(free_port(), 1, 2, limits={
        "http2KeepaliveIntervalSeconds": 30, "http2KeepaliveTimeoutSeconds": 2.5})))
    limits = load_config(str(path))[0].settings.limits
    assert (limits.http2_keepalive_interval, limits.http2_keepalive_timeout) == (30.0, 2.5)
