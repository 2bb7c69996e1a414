"""gRPC-Web through the gateway: browsers' framing in, real gRPC servers behind.

The clients here speak gRPC-Web by hand (a raw HTTP/1.1 socket, or the h2 client
of h2_peers), so every byte of the translation is visible: the trailer frame,
the base64 of the -text variants, the content-types.  The backends are the real
grpclib / grpcio Echo servers of grpc_peers.
"""
from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httptools
import pytest

from gateway.proxy.grpc_web import Base64Decoder, FrameTracker, trailer_frame
from grpc_peers import (LIBRARIES, Observations, fail_request, grpc_server, path_of,
                              sleep_request, stream_request)
from h2_peers import h2_client
from harness import free_port, raw_backend, running_gateway


WEB = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


# ------------------------------------------------------------------ configs

def web_gateway_doc(ports: dict[str, int], backend: int, *, per_request_ms: int = 3000,
                    http_backend: int | None = None) -> dict:
    """Listeners http, http2 and grpc, each routing /test.Echo/ to the gRPC backend."""
    target = {"virtualService": {"virtualServiceName": "echo"}}
    # App Mesh rewrites a matched prefix to "/" unless told not to.
    keep_path = {"rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}
    routes = [
        {"gatewayRouteName": "web-http", "spec": {"httpRoute": {
            "match": {"prefix": "/test.Echo/"}, "action": {"target": target, **keep_path}}}},
        {"gatewayRouteName": "web-http2", "spec": {"http2Route": {
            "match": {"prefix": "/test.Echo/"}, "action": {"target": target, **keep_path}}}},
        {"gatewayRouteName": "web-grpc", "spec": {"grpcRoute": {
            "match": {"serviceName": "test.Echo"}, "action": {"target": target}}}},
    ]
    services = [{"virtualServiceName": "echo", "protocol": "grpc",
                 "endpoints": [f"127.0.0.1:{backend}"],
                 "timeout": {"perRequest": {"value": per_request_ms, "unit": "ms"}}}]
    if http_backend is not None:
        routes.append({"gatewayRouteName": "plain", "spec": {"httpRoute": {
            "match": {"prefix": "/plain.Svc/"},
            "action": {"target": {"virtualService": {"virtualServiceName": "plain"}}, **keep_path}}}})
        services.append({"virtualServiceName": "plain", "protocol": "http",
                         "endpoints": [f"127.0.0.1:{http_backend}"]})
    listeners = [{"portMapping": {"port": port, "protocol": proto}} for proto, port in ports.items()]
    return {"virtualGateway": {"virtualGatewayName": "web-gw", "spec": {"listeners": listeners}},
            "gatewayRoutes": routes, "virtualServices": services,
            "gateway": {"admin": {"address": "127.0.0.1", "port": 0}, "listenAddress": "127.0.0.1"}}


@asynccontextmanager
async def web_setup(tmp_path, library: str = "grpclib", **kwargs):
    obs = Observations()
    async with grpc_server(library, obs) as backend:
        ports = {"http": free_port(), "http2": free_port(), "grpc": free_port()}
        async with running_gateway(tmp_path, web_gateway_doc(ports, backend, **kwargs), admin=False):
            yield ports, obs


# ------------------------------------------------------------- the protocol

def frame(message: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(message).to_bytes(4, "big") + message


def b64_groups(text: bytes) -> bytes:
    """Decodes base64 group by group, so padding may fall anywhere (as the spec allows)."""
    assert len(text) % 4 == 0, f"base64 body of {len(text)} bytes is not whole groups"
    return b"".join(base64.b64decode(text[i:i + 4], validate=True) for i in range(0, len(text), 4))


@dataclass
class WebResult:
    status: int
    headers: dict[str, str]
    body: bytes                          # as on the wire (base64 for -text)
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] | None = None   # from the trailer frame
    http_trailers: list | None = None    # real HTTP trailers (must never appear)
    rest: bytes = b""                    # bytes after the trailer frame (must be none)


def parse_web_body(body: bytes, text: bool) -> tuple[list[bytes], dict[str, str] | None, bytes]:
    data = b64_groups(body) if text else body
    messages: list[bytes] = []
    trailers = None
    i = 0
    while i + 5 <= len(data) and trailers is None:
        flag, length = data[i], int.from_bytes(data[i + 1:i + 5], "big")
        payload = data[i + 5:i + 5 + length]
        assert len(payload) == length, "truncated frame in the response"
        i += 5 + length
        if flag & 0x80:
            trailers = {}
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers, data[i:]


def finish(result: WebResult) -> WebResult:
    text = result.headers.get("content-type", "").startswith(TEXT)
    result.messages, result.trailers, result.rest = parse_web_body(result.body, text)
    return result


class H1Reader:
    """The response side of an HTTP/1.1 connection, body bytes as they arrive."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.trailers: list = []
        self.in_trailers = False
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            self.trailers.append((name.decode().lower(), value.decode()))
        else:
            self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.in_trailers = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class H1WebCall:
    """One gRPC-Web call over a raw HTTP/1.1 socket."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.response = H1Reader()
        self.closed = False

    @classmethod
    async def open(cls, port: int, path: str, *, content_type: str = WEB,
                   headers: dict[str, str] | None = None, chunks: list[bytes] | None = None,
                   body: bytes | None = None) -> H1WebCall:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        call = cls(reader, writer)
        head = [f"POST {path} HTTP/1.1", "host: web.example", f"content-type: {content_type}",
                "x-grpc-web: 1", "x-user-agent: grpc-web-javascript/0.1"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if chunks is not None:
            head.append("transfer-encoding: chunked")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        else:
            body = body or b""
            head.append(f"content-length: {len(body)}")
            payload = body
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return call

    async def read_until(self, done, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done(self.response):
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    return
                self.response.parser.feed_data(data)

    async def result(self, timeout: float = 5.0) -> WebResult:
        try:
            await self.read_until(lambda r: r.complete, timeout)
        finally:
            self.writer.close()
        r = self.response
        assert r.complete, f"response incomplete (closed={self.closed}): {bytes(r.body)!r}"
        return finish(WebResult(r.status, r.headers, bytes(r.body), http_trailers=r.trailers))


async def h1_call(port: int, method: str, message: bytes | None = None, *, text: bool = False,
                  content_type: str | None = None, **kwargs) -> WebResult:
    body = kwargs.pop("body", None)
    if body is None and message is not None:
        body = frame(message)
        if text:
            body = base64.b64encode(body)
    call = await H1WebCall.open(port, path_of(method), body=body,
                                content_type=content_type or (TEXT if text else WEB), **kwargs)
    return await call.result()


async def h2_call(port: int, method: str, message: bytes | None = None, *, text: bool = False,
                  content_type: str | None = None, body: bytes | None = None,
                  headers: dict[str, str] | None = None, **kwargs) -> WebResult:
    if body is None and message is not None:
        body = frame(message)
        if text:
            body = base64.b64encode(body)
    head = [("content-type", content_type or (TEXT if text else WEB)), ("x-grpc-web", "1"),
            ("x-user-agent", "grpc-web-javascript/0.1"), *(headers or {}).items()]
    async with h2_client(port) as client:
        response = await client.request("POST", path_of(method), authority="web.example",
                                        headers=head, body=body, timeout=5.0, **kwargs)
    assert response.ended, f"stream did not end: reset={response.reset_code}"
    headers_d = {k: v for k, v in response.headers if not k.startswith(":")}
    return finish(WebResult(response.status, headers_d, bytes(response.data),
                            http_trailers=response.trailers))


CLIENTS = {"h1": h1_call, "h2": h2_call}
# (listener protocol, client): HTTP/1.1 and HTTP/2 clients reach every listener kind.
PATHS = [("http", "h1"), ("http", "h2"), ("http2", "h2"), ("grpc", "h1"), ("grpc", "h2")]


def ok(result: WebResult) -> None:
    assert result.status == 200
    assert result.trailers is not None, f"no trailer frame in {result.body!r}"
    assert result.trailers.get("grpc-status") == "0", result.trailers
    assert not result.http_trailers
    assert result.rest == b""


# ------------------------------------------------------------- unit pieces

def test_base64_decoder_takes_padded_chunks_split_anywhere():
    raw = frame(b"hello") + frame(b"gRPC-Web!")
    # Each frame encoded on its own: padding in the middle of the stream.
    wire = base64.b64encode(frame(b"hello")) + base64.b64encode(frame(b"gRPC-Web!"))
    assert b"=" in wire[:-2]
    for cut in range(1, len(wire)):
        decoder = Base64Decoder()
        out = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert out == raw and decoder.clean


def test_base64_decoder_rejects_garbage_and_leftovers():
    with pytest.raises(ValueError):
        Base64Decoder().feed(b"QQ=A")
    with pytest.raises(ValueError):
        Base64Decoder().feed(b"!!!!")
    decoder = Base64Decoder()
    decoder.feed(b"QUJDRA")
    assert not decoder.clean


def test_frame_tracker_spots_a_cut_message():
    tracker = FrameTracker()
    data = frame(b"x" * 10) + frame(b"yy")
    for i in range(len(data)):   # byte by byte: headers split too
        tracker.feed(data[i:i + 1])
    assert tracker.complete
    tracker.feed(frame(b"z" * 10)[:8])
    assert not tracker.complete


def test_trailer_frame_layout():
    got = trailer_frame([(b"grpc-status", b"0"), (b"grpc-message", b"fine")])
    block = b"grpc-status: 0\r\ngrpc-message: fine\r\n"
    assert got == b"\x80" + len(block).to_bytes(4, "big") + block


# ------------------------------------------------------------ through the gateway

@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("listener,client", PATHS)
async def test_unary_binary(tmp_path, library, listener, client):
    async with web_setup(tmp_path, library) as (ports, obs):
        result = await CLIENTS[client](ports[listener], "Unary", b"ping \x00\xff")
    ok(result)
    assert result.messages == [b"ping \x00\xff"]
    assert result.headers["content-type"] == WEB
    assert "content-length" not in result.headers   # framed anew: chunked, or DATA frames
    assert obs.last("Unary").outcome == "ok"


@pytest.mark.parametrize("listener,client", PATHS)
async def test_unary_text(tmp_path, listener, client):
    async with web_setup(tmp_path) as (ports, obs):
        result = await CLIENTS[client](ports[listener], "Unary", b"text mode", text=True)
    assert result.headers["content-type"] == TEXT
    ok(result)
    assert result.messages == [b"text mode"]
    # The wire body is base64 alone: nothing binary leaks through.
    assert set(result.body) <= set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


async def test_text_request_in_separately_padded_chunks(tmp_path):
    # A browser may flush base64 in pieces, each padded; the pieces arrive as separate
    # HTTP/1.1 chunks and the last one is cut mid-group to exercise the carry.
    message = b"several pieces of base64, each padded"
    raw = frame(message)
    pieces = [base64.b64encode(raw[:4]), base64.b64encode(raw[4:9]), base64.b64encode(raw[9:])]
    assert all(p.endswith(b"=") for p in pieces[:2])
    tail = pieces.pop()
    chunks = pieces + [tail[:3], tail[3:]]
    async with web_setup(tmp_path) as (ports, obs):
        call = await H1WebCall.open(ports["http"], path_of("Unary"), content_type=TEXT, chunks=chunks)
        result = await call.result()
    ok(result)
    assert result.messages == [message]
    assert obs.last("Unary").received_bytes == len(message)


async def test_binary_request_asks_for_text_response_by_accept(tmp_path):
    async with web_setup(tmp_path) as (ports, obs):
        result = await h1_call(ports["http"], "Unary", b"accept", headers={"accept": TEXT})
    assert result.headers["content-type"].startswith(TEXT)
    ok(result)
    assert result.messages == [b"accept"]


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("text", [False, True])
async def test_server_stream(tmp_path, library, client, text):
    async with web_setup(tmp_path, library) as (ports, obs):
        result = await CLIENTS[client](ports["grpc"], "ServerStream", stream_request(4, 100), text=text)
    ok(result)
    assert [int.from_bytes(m[:4], "big") for m in result.messages] == [0, 1, 2, 3]
    assert all(len(m) == 100 for m in result.messages)


async def test_backend_sees_plain_grpc(tmp_path):
    async with web_setup(tmp_path) as (ports, obs):
        result = await h1_call(ports["http"], "Metadata", b"", text=True,
                               headers={"grpc-timeout": "2S", "x-custom": "kept"})
    ok(result)
    seen = json.loads(result.messages[0])
    head = dict(seen["headers"])
    assert head["content-type"] == "application/grpc"
    assert head["te"] == "trailers"
    assert head["grpc-accept-encoding"] == "identity"
    assert "content-length" not in head
    assert head[":method"] == "POST" and head[":path"] == "/test.Echo/Metadata"
    metadata = dict(seen["metadata"])
    assert metadata["x-grpc-web"] == "1"
    assert metadata["x-user-agent"] == "grpc-web-javascript/0.1"
    assert metadata["x-custom"] == "kept"
    # An HTTP/1.1 client's grpc-timeout is a deadline the gateway passes on.
    assert seen["grpc_timeout"] == "2S"
    assert 0 < seen["deadline"] <= 2.0


async def test_proto_suffix_is_kept_upstream(tmp_path):
    async with web_setup(tmp_path) as (ports, obs):
        result = await h2_call(ports["http2"], "Metadata", b"", content_type=WEB)
    ok(result)
    assert dict(json.loads(result.messages[0])["headers"])["content-type"] == "application/grpc+proto"


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("text", [False, True])
async def test_fail_status_lands_in_the_trailer_frame(tmp_path, library, client, text):
    async with web_setup(tmp_path, library) as (ports, obs):
        result = await CLIENTS[client](ports["grpc"], "Fail", fail_request(9, "not now: busy"), text=text)
    assert result.status == 200
    assert result.messages == []
    assert result.trailers["grpc-status"] == "9"
    assert result.trailers["grpc-message"] == "not now: busy"
    assert result.trailers["x-fail-code"] == "9"
    assert "grpc-status" not in result.headers
    assert not result.http_trailers
    assert result.headers["content-type"] == (TEXT if text else WEB)


@pytest.mark.parametrize("listener,client", PATHS)
async def test_no_route_is_unimplemented(tmp_path, listener, client):
    async with web_setup(tmp_path) as (ports, obs):
        # A service no route knows.
        if client == "h1":
            web = await H1WebCall.open(ports[listener], "/other.Svc/Call", body=frame(b"x"))
            result = await web.result()
        else:
            async with h2_client(ports[listener]) as c:
                r = await c.request("POST", "/other.Svc/Call", headers=[("content-type", WEB)],
                                    body=frame(b"x"), timeout=5.0)
            result = finish(WebResult(r.status, {k: v for k, v in r.headers if k[0] != ":"},
                                      bytes(r.data), http_trailers=r.trailers))
    assert result.status == 200
    assert result.headers["content-type"] == WEB
    assert result.trailers["grpc-status"] == "12"
    assert result.trailers["grpc-message"] == "no route matched the request"
    assert obs.calls == []


async def test_no_route_in_text_mode_is_base64(tmp_path):
    async with web_setup(tmp_path) as (ports, obs):
        web = await H1WebCall.open(ports["http"], "/other.Svc/Call", content_type=TEXT,
                                   body=base64.b64encode(frame(b"x")))
        result = await web.result()
    assert result.headers["content-type"] == TEXT
    assert result.trailers == {"grpc-status": "12", "grpc-message": "no route matched the request"}


async def test_timeout_is_deadline_exceeded(tmp_path):
    async with web_setup(tmp_path, per_request_ms=300) as (ports, obs):
        result = await h1_call(ports["http"], "Sleep", sleep_request(3))
        record = await obs.wait("Sleep")
    assert result.status == 200
    assert result.trailers["grpc-status"] == "4"
    assert record.outcome in ("cancelled", "deadline")


async def test_unreachable_backend_is_unavailable(tmp_path):
    dead = free_port()
    ports = {"http": free_port()}
    async with running_gateway(tmp_path, web_gateway_doc(ports, dead), admin=False):
        result = await h2_call(ports["http"], "Unary", b"x")
    assert result.status == 200
    assert result.trailers["grpc-status"] == "14"


async def test_non_grpc_backend_answer_becomes_grpc_status(tmp_path):
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = b"service overloaded"
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    obs_port = free_port()
    async with raw_backend(handler) as plain:
        ports = {"http": free_port()}
        async with running_gateway(tmp_path, web_gateway_doc(ports, obs_port, http_backend=plain),
                                   admin=False):
            web = await H1WebCall.open(ports["http"], "/plain.Svc/Call", body=frame(b"x"))
            result = await web.result()
    assert result.status == 200
    assert result.headers["content-type"] == WEB
    assert result.trailers == {"grpc-status": "14", "grpc-message": "service overloaded"}


@pytest.mark.parametrize("text", [False, True])
async def test_stream_arrives_incrementally_over_http1(tmp_path, text):
    async with web_setup(tmp_path) as (ports, obs):
        body = frame(stream_request(3, 64, 0.4))
        call = await H1WebCall.open(ports["grpc"], path_of("ServerStream"),
                                    content_type=TEXT if text else WEB,
                                    body=base64.b64encode(body) if text else body)

        def first_message(r: H1Reader) -> bool:
            data = bytes(r.body)
            if text:
                data = b64_groups(data[:len(data) // 4 * 4])
            return len(data) >= 5 + 64

        await call.read_until(first_message, timeout=3.0)
        record = obs.last("ServerStream")
        # The client holds the first message while the server still has two to send.
        assert record.outcome == "running" and record.sent < 3
        result = await call.result()
    ok(result)
    assert len(result.messages) == 3


async def test_stream_arrives_incrementally_over_http2(tmp_path):
    from h2_peers import Progress
    async with web_setup(tmp_path, "grpcio") as (ports, obs):
        progress = Progress()
        seen_running = []

        async def watch():
            while progress.nbytes < 5 + 64:
                await asyncio.sleep(0.01)
            record = obs.last("ServerStream")
            seen_running.append(record.outcome == "running" and record.sent < 3)

        watcher = asyncio.create_task(watch())
        result = await h2_call(ports["http2"], "ServerStream", stream_request(3, 64, 0.4),
                               progress=progress)
        await asyncio.wait_for(watcher, 1.0)
    ok(result)
    assert len(result.messages) == 3
    assert seen_running == [True]


@pytest.mark.parametrize("client", ["h1", "h2"])
async def test_bad_base64_is_answered_and_nothing_hangs(tmp_path, client):
    async with web_setup(tmp_path) as (ports, obs):
        result = await CLIENTS[client](ports["http"], "Unary", body=b"AAAA!!!!", text=True)
        # The gateway still serves the next call on a fresh connection.
        after = await CLIENTS[client](ports["http"], "Unary", b"after", text=True)
    assert result.status == 200
    assert result.trailers["grpc-status"] == "13"
    assert "invalid base64" in result.trailers["grpc-message"]
    ok(after)


async def test_text_body_ending_mid_group_is_rejected(tmp_path):
    async with web_setup(tmp_path) as (ports, obs):
        body = base64.b64encode(frame(b"abc"))[:-1]   # the last group cut short
        result = await h1_call(ports["http"], "Unary", body=body, text=True)
    assert result.trailers["grpc-status"] == "13"
    assert "invalid base64" in result.trailers["grpc-message"]


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("client", ["h1", "h2"])
async def test_truncated_frame_is_answered_and_the_backend_released(tmp_path, library, client):
    async with web_setup(tmp_path, library) as (ports, obs):
        body = frame(b"0123456789")[:9]    # promises 10 bytes, carries 4
        result = await CLIENTS[client](ports["grpc"], "Unary", body=body)
        # If the call reached the backend, it was cancelled there, not left waiting.
        for record in obs.calls:
            await asyncio.wait_for(record.done.wait(), 2.0)
            assert record.outcome != "ok"
    assert result.status == 200
    assert result.trailers["grpc-status"] == "13"
    assert "ends inside a frame" in result.trailers["grpc-message"]
