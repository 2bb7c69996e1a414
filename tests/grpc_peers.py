"""gRPC test peers: one Echo service served by grpclib or grpcio, and clients for both.

Messages are raw bytes (no protobuf), so a test states exactly what crosses the wire. Every
method is registered server-side as bidirectional: gRPC's wire format does not carry the
call kind, so one generic implementation serves all four kinds identically on both libraries,
and the client's choice of kind is what the gateway sees.

Methods of /test.Echo/ (request -> replies):
  Unary         b"x"                  -> b"x"
  ServerStream  b"count,size[,delay]" -> count messages of size bytes (first 4 bytes: index)
  ClientStream  any messages          -> b"count,total_bytes"
  Bidi          any messages          -> each echoed as it arrives
  Sleep         b"seconds"            -> b"slept" (records cancel / deadline)
  Fail          b"code[,message]"     -> that grpc-status and grpc-message, trailers
                                         x-fail-code and x-trailer-bin
  Metadata      anything              -> JSON of what the server saw (authority, metadata, ...)
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, Union

import grpc
import grpc.aio
import grpclib.client
import grpclib.server
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol

SERVICE = "test.Echo"
KINDS: dict[str, Cardinality] = {
    "Unary": Cardinality.UNARY_UNARY,
    "ServerStream": Cardinality.UNARY_STREAM,
    "ClientStream": Cardinality.STREAM_UNARY,
    "Bidi": Cardinality.STREAM_STREAM,
    "Sleep": Cardinality.UNARY_UNARY,
    "Fail": Cardinality.UNARY_UNARY,
    "Metadata": Cardinality.UNARY_UNARY,
}
LIBRARIES = ("grpclib", "grpcio")
# Large-stream tests send 64 MiB in 1 MiB messages; grpcio's 4 MiB default would refuse
# nothing there, but a test of one big message must not trip over a library limit.
MAX_MESSAGE = 128 * 1024 * 1024
FAIL_TRAILER_BIN = b"\x00\x01\xfe\xff"

# Status for an RST_STREAM seen by the client, per gRPC's PROTOCOL-HTTP2 mapping.
_RESET_STATUS = {7: 14, 8: 1, 11: 8, 12: 7}
_RESERVED_KEYS = frozenset({"te", "content-type", "user-agent"})

MetadataValue = Union[str, bytes]
Metadata = Sequence[tuple[str, MetadataValue]]


def path_of(method: str) -> str:
    return f"/{SERVICE}/{method}"


def stream_request(count: int, size: int, delay: float = 0.0) -> bytes:
    return f"{count},{size},{delay}".encode()


def fail_request(code: int, message: str = "") -> bytes:
    return f"{code},{message}".encode()


def sleep_request(seconds: float) -> bytes:
    return str(seconds).encode()


class RawCodec(CodecBase):
    """Passes bytes through unchanged."""

    # grpclib reads a bare "application/grpc" (what grpcio sends and expects) as subtype
    # "proto"; any other name would make the two libraries refuse each other.
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"RawCodec sends bytes, not {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


# --------------------------------------------------------------- observations

@dataclass(slots=True, eq=False)
class CallRecord:
    """What a server saw of one call; updated live while the call runs."""
    method: str                       # short name: "Sleep"
    library: str                      # "grpclib" | "grpcio"
    peer: str                         # "127.0.0.1:port" of the connection it came on
    authority: str | None             # :authority (None on grpcio, which hides it)
    metadata: list[tuple[str, MetadataValue]]   # custom metadata only
    headers: list[tuple[str, str]] | None       # raw request head (grpclib only)
    grpc_timeout: str | None          # raw grpc-timeout header (grpclib only)
    deadline: float | None            # seconds left when the handler started
    received: int = 0
    received_bytes: int = 0
    sent: int = 0
    sent_bytes: int = 0
    outcome: str = "running"          # running | ok | error | cancelled | deadline
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Observations:
    """Per-call records of one server, in arrival order."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    def of(self, method: str) -> list[CallRecord]:
        return [c for c in self.calls if c.method == method]

    def last(self, method: str) -> CallRecord:
        calls = self.of(method)
        if not calls:
            raise LookupError(f"no {method} call reached the server; saw {[c.method for c in self.calls]}")
        return calls[-1]

    def peers(self) -> set[str]:
        """Distinct connections calls arrived on (to assert multiplexing or fan-out)."""
        return {c.peer for c in self.calls}

    async def wait(self, method: str, *, count: int = 1, timeout: float = 5.0) -> CallRecord:
        """The count-th call to method once it has finished (handler returned or was cancelled)."""
        async with asyncio.timeout(timeout):
            while len(self.of(method)) < count:
                await asyncio.sleep(0.005)
            record = self.of(method)[count - 1]
            await record.done.wait()
        return record


# --------------------------------------------------------------------- service

class _ServerCall(Protocol):
    async def recv(self) -> bytes | None: ...
    async def send(self, message: bytes) -> None: ...
    async def finish(self, code: int, message: str | None, trailers: Metadata) -> None: ...
    def remaining(self) -> float | None: ...


class _BadRequest(Exception):
    pass


async def _recv_one(call: _ServerCall) -> bytes:
    message = await call.recv()
    if message is None:
        raise _BadRequest("expected one request message, got none")
    return message


def _block(index: int, size: int, filler: bytes) -> bytes:
    if size < 4:
        return filler[:size]
    return index.to_bytes(4, "big") + filler[4:size]


def _metadata_json(record: CallRecord) -> bytes:
    def show(value: MetadataValue) -> str:
        return base64.b64encode(value).decode() if isinstance(value, bytes) else value
    return json.dumps({
        "method": record.method, "library": record.library, "authority": record.authority,
        "grpc_timeout": record.grpc_timeout, "deadline": record.deadline,
        "metadata": [[k, show(v)] for k, v in record.metadata],
        "headers": record.headers, "peer": record.peer,
    }).encode()


async def _serve(call: _ServerCall, record: CallRecord) -> None:
    try:
        await _dispatch(call, record)
        if record.outcome == "running":
            record.outcome = "ok"
    except _BadRequest as exc:
        record.outcome = "error"
        await call.finish(3, f"bad {record.method} request: {exc}", ())
    except asyncio.CancelledError:
        remaining = call.remaining()
        record.outcome = "deadline" if remaining is not None and remaining < 0.05 else "cancelled"
        raise
    finally:
        record.ended = time.monotonic()
        record.done.set()


async def _dispatch(call: _ServerCall, record: CallRecord) -> None:
    method = record.method
    if method == "Unary":
        await call.send(await _recv_one(call))
    elif method == "ServerStream":
        text = (await _recv_one(call)).decode("latin-1")
        try:
            parts = text.split(",")
            count, size = int(parts[0]), int(parts[1])
            delay = float(parts[2]) if len(parts) > 2 else 0.0
        except (ValueError, IndexError):
            raise _BadRequest(f"want 'count,size[,delay]', got {text!r}") from None
        if count < 0 or size < 0:
            raise _BadRequest(f"count and size must not be negative: {text!r}")
        filler = b"." * size
        for i in range(count):
            await call.send(_block(i, size, filler))
            if delay:
                await asyncio.sleep(delay)
    elif method == "ClientStream":
        while await call.recv() is not None:
            pass
        await call.send(f"{record.received},{record.received_bytes}".encode())
    elif method == "Bidi":
        while (message := await call.recv()) is not None:
            await call.send(message)
    elif method == "Sleep":
        text = (await _recv_one(call)).decode("latin-1")
        try:
            seconds = float(text)
        except ValueError:
            raise _BadRequest(f"want seconds, got {text!r}") from None
        await asyncio.sleep(seconds)
        await call.send(b"slept")
    elif method == "Fail":
        text = (await _recv_one(call)).decode("utf-8")
        code_text, _, message = text.partition(",")
        try:
            code = int(code_text)
        except ValueError:
            raise _BadRequest(f"want 'code[,message]', got {text!r}") from None
        if not 0 <= code <= 16:
            raise _BadRequest(f"grpc-status {code} is outside 0..16")
        record.outcome = "ok" if code == 0 else "error"
        await call.finish(code, message or None,
                          [("x-fail-code", str(code)), ("x-trailer-bin", FAIL_TRAILER_BIN)])
    elif method == "Metadata":
        while await call.recv() is not None:
            pass
        await call.send(_metadata_json(record))
    else:  # pragma: no cover - both routers refuse unknown names first
        raise _BadRequest(f"unknown method {method}")


def _custom_metadata(pairs: Iterable[tuple[str, MetadataValue]]) -> list[tuple[str, MetadataValue]]:
    return [(k, v) for k, v in pairs
            if not k.startswith((":", "grpc-")) and k not in _RESERVED_KEYS]


def _server_tls(tls: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _client_tls(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    return ctx


# ------------------------------------------------------------- grpclib server

class _GrpclibCall:
    __slots__ = ("stream", "record")

    def __init__(self, stream: grpclib.server.Stream, record: CallRecord) -> None:
        self.stream = stream
        self.record = record

    async def recv(self) -> bytes | None:
        message = await self.stream.recv_message()
        if message is not None:
            self.record.received += 1
            self.record.received_bytes += len(message)
        return message

    async def send(self, message: bytes) -> None:
        await self.stream.send_message(message)
        self.record.sent += 1
        self.record.sent_bytes += len(message)

    async def finish(self, code: int, message: str | None, trailers: Metadata) -> None:
        await self.stream.send_trailing_metadata(status=Status(code), status_message=message,
                                                 metadata=trailers)

    def remaining(self) -> float | None:
        deadline = self.stream.deadline
        return None if deadline is None else deadline.time_remaining()


class _GrpclibEcho:
    def __init__(self, obs: Observations) -> None:
        self.obs = obs

    def __mapping__(self) -> dict[str, Handler]:
        return {path_of(name): Handler(partial(self._handle, name), Cardinality.STREAM_STREAM,
                                       bytes, bytes)
                for name in KINDS}

    async def _handle(self, method: str, stream: grpclib.server.Stream) -> None:
        raw = getattr(stream._stream, "request_head", None) or []
        head = dict(raw)
        addr = stream.peer.addr()
        record = CallRecord(
            method=method, library="grpclib", peer=f"{addr[0]}:{addr[1]}" if addr else "?",
            authority=head.get(":authority"),
            metadata=_custom_metadata(stream.metadata.items() if stream.metadata else ()),
            headers=[list(p) for p in raw], grpc_timeout=head.get("grpc-timeout"),
            deadline=stream.deadline.time_remaining() if stream.deadline else None)
        self.obs.calls.append(record)
        await _serve(_GrpclibCall(stream, record), record)


class _HeadKeepingHandler(grpclib.server.Handler):
    def accept(self, stream: Any, headers: Any, release_stream: Any) -> None:
        # grpclib hands the raw request head only to this hook; methods see decoded metadata,
        # and the peers must report :authority and grpc-timeout exactly as they arrived.
        stream.request_head = headers
        super().accept(stream, headers, release_stream)


class _GrpclibServer(grpclib.server.Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _HeadKeepingHandler(self._mapping, self._codec, self._status_details_codec,
                                      self.__dispatch__)
        self._handlers.add(handler)
        protocol = H2Protocol(handler, self._config, self._h2_config)
        self.protocols.add(protocol)
        return protocol

    def drop_connections(self) -> None:
        """grpclib's close() leaves accepted connections open until the client goes; a test
        server must not outlive its test."""
        for protocol in list(self.protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def grpclib_server(obs: Observations | None = None, *,
                         tls: tuple[str, str] | None = None) -> AsyncIterator[int]:
    """The Echo service on grpclib at 127.0.0.1; yields its port. tls=(cert_file, key_file)."""
    server = _GrpclibServer([_GrpclibEcho(obs if obs is not None else Observations())],
                            codec=RawCodec())
    sock = _listening_socket()
    port = sock.getsockname()[1]
    await server.start(sock=sock, ssl=_server_tls(tls) if tls else None)
    try:
        yield port
    finally:
        server.close()
        server.drop_connections()
        await server.wait_closed()


# -------------------------------------------------------------- grpcio server

class _GrpcioCall:
    __slots__ = ("context", "record")

    def __init__(self, context: grpc.aio.ServicerContext, record: CallRecord) -> None:
        self.context = context
        self.record = record

    async def recv(self) -> bytes | None:
        message = await self.context.read()
        if message is grpc.aio.EOF:
            return None
        self.record.received += 1
        self.record.received_bytes += len(message)
        return message

    async def send(self, message: bytes) -> None:
        await self.context.write(message)
        self.record.sent += 1
        self.record.sent_bytes += len(message)

    async def finish(self, code: int, message: str | None, trailers: Metadata) -> None:
        self.context.set_trailing_metadata(tuple(trailers))
        self.context.set_code(_STATUS_CODES[code])
        if message:
            self.context.set_details(message)

    def remaining(self) -> float | None:
        return self.context.time_remaining()


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _GrpcioEcho(grpc.GenericRpcHandler):
    def __init__(self, obs: Observations) -> None:
        self.obs = obs

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.rpartition("/")
        if service != f"/{SERVICE}" or method not in KINDS:
            return None
        return grpc.stream_stream_rpc_method_handler(partial(self._handle, method))

    async def _handle(self, method: str, _requests: Any, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()
        record = CallRecord(
            method=method, library="grpcio", peer=peer.partition(":")[2] if peer else "?",
            authority=None, metadata=_custom_metadata(context.invocation_metadata() or ()),
            headers=None, grpc_timeout=None, deadline=context.time_remaining())
        self.obs.calls.append(record)
        await _serve(_GrpcioCall(context, record), record)


@asynccontextmanager
async def grpcio_server(obs: Observations | None = None, *, tls: tuple[str, str] | None = None,
                        options: Sequence[tuple[str, Any]] = ()) -> AsyncIterator[int]:
    """The Echo service on grpcio at 127.0.0.1; yields its port. tls=(cert_file, key_file);
    options go to grpc.aio.server (e.g. ("grpc.max_concurrent_streams", 4))."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE), *options])
    server.add_generic_rpc_handlers((_GrpcioEcho(obs if obs is not None else Observations()),))
    if tls:
        with open(tls[0], "rb") as f:
            cert = f.read()
        with open(tls[1], "rb") as f:
            key = f.read()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)


@asynccontextmanager
async def grpclib_health(state: dict):
    """A grpclib server serving grpc.health.v1.Health/Check with state["answer"] (raw bytes:
    grpclib.health.service needs the protobuf runtime, which is not a test dependency)."""
    async def check(stream: grpclib.server.Stream) -> None:
        state["requests"].append(await stream.recv_message())
        await stream.send_message(state["answer"])

    class Health:
        def __mapping__(self):
            return {"/grpc.health.v1.Health/Check":
                    Handler(check, Cardinality.UNARY_UNARY, bytes, bytes)}

    server = grpclib.server.Server([Health()], codec=RawCodec())
    sock = _listening_socket()
    port = sock.getsockname()[1]
    await server.start(sock=sock)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def grpc_server(library: str, obs: Observations | None = None, **kwargs: Any):
    """grpclib_server or grpcio_server by name, for tests parametrized over both."""
    if library == "grpclib":
        return grpclib_server(obs, **kwargs)
    if library == "grpcio":
        return grpcio_server(obs, **kwargs)
    raise ValueError(f"unknown gRPC library {library!r}; want one of {LIBRARIES}")


# --------------------------------------------------------------------- clients

@dataclass(slots=True)
class Progress:
    """Live count of replies a client has consumed; pass one in to watch a call in flight."""
    count: int = 0
    nbytes: int = 0


@dataclass(slots=True)
class CallResult:
    messages: list[bytes]             # replies, in order (empty when keep=False)
    status: int                       # grpc-status the client ended with
    message: str | None               # grpc-message (None when OK)
    trailers: list[tuple[str, MetadataValue]]   # trailing metadata (-bin values as bytes)
    count: int = 0                    # replies received
    nbytes: int = 0                   # reply bytes received
    error: str | None = None          # transport failure text (reset, GOAWAY, lost connection)


class _ClientCancelled(Exception):
    pass


def _check_request(method: str, request: Any) -> tuple[Cardinality, Any]:
    kind = KINDS.get(method)
    if kind is None:
        raise ValueError(f"unknown Echo method {method!r}; want one of {sorted(KINDS)}")
    if kind.client_streaming:
        if isinstance(request, (bytes, bytearray, str)) or request is None:
            raise TypeError(f"{method} streams requests: pass an iterable of bytes")
        return kind, [bytes(m) for m in request]
    if not isinstance(request, (bytes, bytearray)):
        raise TypeError(f"{method} takes one request: pass bytes, not {type(request).__name__}")
    return kind, bytes(request)


class _Receiver:
    __slots__ = ("messages", "count", "nbytes", "progress", "keep", "read_delay",
                 "cancel_after_messages")

    def __init__(self, progress: Progress | None, keep: bool, read_delay: float,
                 cancel_after_messages: int | None) -> None:
        self.messages: list[bytes] = []
        self.count = 0
        self.nbytes = 0
        self.progress = progress
        self.keep = keep
        self.read_delay = read_delay
        self.cancel_after_messages = cancel_after_messages

    async def take(self, message: bytes) -> bool:
        """Counts one reply; True when the caller should cancel now."""
        if self.keep:
            self.messages.append(message)
        self.count += 1
        self.nbytes += len(message)
        if self.progress is not None:
            self.progress.count += 1
            self.progress.nbytes += len(message)
        if self.read_delay:
            await asyncio.sleep(self.read_delay)
        return self.cancel_after_messages is not None and self.count >= self.cancel_after_messages

    def result(self, status: int, message: str | None, trailers: list[tuple[str, MetadataValue]],
               error: str | None = None) -> CallResult:
        return CallResult(self.messages, status, message or None, trailers,
                          self.count, self.nbytes, error)


class GrpcClient(Protocol):
    async def call(self, method: str, request: Any = b"", *, timeout: float | None = None,
                   metadata: Metadata = (), read_delay: float = 0.0, send_delay: float = 0.0,
                   lockstep: bool = False, keep: bool = True, cancel_after: float | None = None,
                   cancel_after_messages: int | None = None,
                   progress: Progress | None = None) -> CallResult: ...


class GrpclibClient:
    """One grpclib Channel (one HTTP/2 connection, opened on first call) to host:port.

    ca: CA file for TLS (plaintext h2c without it); server_name: the name the certificate
    must carry (and the SNI); authority: the :authority to send instead of host:port;
    window: HTTP/2 connection and stream receive windows (grpclib default 4 MiB)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", ca: str | None = None,
                 server_name: str | None = None, authority: str | None = None,
                 window: int | None = None) -> None:
        config: dict[str, Any] = {"ssl_target_name_override": server_name}
        if window is not None:
            config["http2_connection_window_size"] = window
            config["http2_stream_window_size"] = window
        self.channel = grpclib.client.Channel(host, port, codec=RawCodec(),
                                              ssl=_client_tls(ca) if ca else None,
                                              config=Configuration(**config))
        if authority is not None:
            # grpclib derives :authority from the connect address and offers no option.
            self.channel._authority = authority

    async def __aenter__(self) -> GrpclibClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.channel.close()

    async def call(self, method: str, request: Any = b"", *, timeout: float | None = None,
                   metadata: Metadata = (), read_delay: float = 0.0, send_delay: float = 0.0,
                   lockstep: bool = False, keep: bool = True, cancel_after: float | None = None,
                   cancel_after_messages: int | None = None,
                   progress: Progress | None = None) -> CallResult:
        kind, request = _check_request(method, request)
        rx = _Receiver(progress, keep, read_delay, cancel_after_messages)
        stream = self.channel.request(path_of(method), kind, bytes, bytes, timeout=timeout,
                                      metadata=list(metadata))
        status, message, error = 0, None, None
        try:
            async with stream:
                try:
                    async with asyncio.timeout(cancel_after) as budget:
                        cancel = await self._exchange(stream, kind, request, rx, send_delay, lockstep)
                except TimeoutError:
                    if not budget.expired():
                        raise
                    cancel = True
                if cancel:
                    await stream.cancel()
                    raise _ClientCancelled
        except GRPCError as exc:
            status, message = exc.status.value, exc.message
        except _ClientCancelled:
            status, message = Status.CANCELLED.value, "cancelled by the client"
        except asyncio.TimeoutError:
            status, message = Status.DEADLINE_EXCEEDED.value, "client deadline exceeded"
        except StreamTerminatedError as exc:
            error = str(exc)
            found = re.search(r"error_code: (\w+)", error)
            code = found.group(1) if found else ""
            # gRPC reads a GOAWAY or a lost connection as UNAVAILABLE, a reset by its code
            status = _RESET_STATUS.get(int(code), 13) if code.isdigit() else (
                14 if "GOAWAY" in error or "connection" in error.lower() else 13)
            message = error
        except (ConnectionError, OSError) as exc:
            status, message, error = Status.UNAVAILABLE.value, str(exc), repr(exc)
        trailers = list(stream.trailing_metadata.items()) if stream.trailing_metadata else []
        return rx.result(status, message, trailers, error)

    @staticmethod
    async def _exchange(stream: grpclib.client.Stream, kind: Cardinality, request: Any,
                        rx: _Receiver, send_delay: float, lockstep: bool) -> bool:
        if not kind.client_streaming:
            await stream.send_message(request, end=True)
            return await GrpclibClient._receive(stream, rx)
        # headers first: the receiving side must not race the sender to open the stream
        await stream.send_request()
        if lockstep:
            # one out, its reply back, before the next: proves nothing waits for the whole stream
            for item in request:
                await stream.send_message(item)
                reply = await stream.recv_message()
                if reply is None:
                    break
                if await rx.take(reply):
                    return True
            await stream.end()
            return await GrpclibClient._receive(stream, rx)

        async def send_all() -> None:
            for item in request:
                await stream.send_message(item)
                if send_delay:
                    await asyncio.sleep(send_delay)
            await stream.end()
        sender = asyncio.create_task(send_all())
        try:
            if not kind.server_streaming:
                await sender
            cancel = await GrpclibClient._receive(stream, rx)
            if not cancel:
                await sender
            return cancel
        finally:
            if not sender.done():
                sender.cancel()

    @staticmethod
    async def _receive(stream: grpclib.client.Stream, rx: _Receiver) -> bool:
        while (reply := await stream.recv_message()) is not None:
            if await rx.take(reply):
                return True
        return False


class GrpcioClient:
    """One grpc.aio channel to host:port. ca/server_name/authority as for GrpclibClient;
    options go to the channel. Retries and proxy discovery are off so a test sees the
    gateway's own answer, and BDP probing is off so the receive window stays at its fixed
    size instead of growing under a fast sender (slow-reader tests need a known bound)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", ca: str | None = None,
                 server_name: str | None = None, authority: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0),
            ("grpc.http2.bdp_probe", 0)]
        if authority is not None:
            opts.append(("grpc.default_authority", authority))
        if server_name is not None:
            opts.append(("grpc.ssl_target_name_override", server_name))
        opts.extend(options)
        target = f"{host}:{port}"
        if ca:
            with open(ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.aio.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=opts)

    async def __aenter__(self) -> GrpcioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    def _callable(self, method: str, kind: Cardinality) -> Any:
        make = {Cardinality.UNARY_UNARY: self.channel.unary_unary,
                Cardinality.UNARY_STREAM: self.channel.unary_stream,
                Cardinality.STREAM_UNARY: self.channel.stream_unary,
                Cardinality.STREAM_STREAM: self.channel.stream_stream}[kind]
        return make(path_of(method), request_serializer=None, response_deserializer=None)

    async def call(self, method: str, request: Any = b"", *, timeout: float | None = None,
                   metadata: Metadata = (), read_delay: float = 0.0, send_delay: float = 0.0,
                   lockstep: bool = False, keep: bool = True, cancel_after: float | None = None,
                   cancel_after_messages: int | None = None,
                   progress: Progress | None = None) -> CallResult:
        kind, request = _check_request(method, request)
        rx = _Receiver(progress, keep, read_delay, cancel_after_messages)
        multicallable = self._callable(method, kind)
        md = tuple(metadata) or None
        call = (multicallable(timeout=timeout, metadata=md) if kind.client_streaming
                else multicallable(request, timeout=timeout, metadata=md))
        try:
            try:
                async with asyncio.timeout(cancel_after) as budget:
                    cancel = await self._exchange(call, kind, request, rx, send_delay, lockstep)
            except TimeoutError:
                if not budget.expired():
                    raise
                cancel = True
            if cancel:
                call.cancel()
                return rx.result(grpc.StatusCode.CANCELLED.value[0], "cancelled by the client", [])
            code = await call.code()
            return rx.result(code.value[0], await call.details(),
                             list(await call.trailing_metadata() or ()))
        except grpc.aio.AioRpcError as exc:
            return rx.result(exc.code().value[0], exc.details(), list(exc.trailing_metadata() or ()),
                             exc.debug_error_string() if exc.code() in _TRANSPORT_CODES else None)
        except asyncio.CancelledError:
            # grpcio turns a cancel it learns of while a read is pending into CancelledError
            if call.cancelled() and not _current_task_cancelling():
                return rx.result(grpc.StatusCode.CANCELLED.value[0], "cancelled", [])
            raise

    @staticmethod
    async def _exchange(call: Any, kind: Cardinality, request: Any, rx: _Receiver,
                        send_delay: float, lockstep: bool) -> bool:
        if kind.client_streaming:
            if lockstep:
                for item in request:
                    await call.write(item)
                    reply = await call.read()
                    if reply is grpc.aio.EOF:
                        break
                    if await rx.take(reply):
                        return True
                await call.done_writing()
            else:
                async def send_all() -> None:
                    for item in request:
                        await call.write(item)
                        if send_delay:
                            await asyncio.sleep(send_delay)
                    await call.done_writing()
                sender = asyncio.create_task(send_all())
                try:
                    if not kind.server_streaming:
                        await sender
                        return await rx.take(await call)
                    while (reply := await call.read()) is not grpc.aio.EOF:
                        if await rx.take(reply):
                            return True
                    await sender
                finally:
                    if not sender.done():
                        sender.cancel()
                return False
        if not kind.server_streaming:
            return await rx.take(await call)
        while (reply := await call.read()) is not grpc.aio.EOF:
            if await rx.take(reply):
                return True
        return False


_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.UNKNOWN})


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def grpc_client(library: str, port: int, **kwargs: Any) -> GrpclibClient | GrpcioClient:
    """GrpclibClient or GrpcioClient by name; use as `async with grpc_client(...) as c`."""
    if library == "grpclib":
        return GrpclibClient(port, **kwargs)
    if library == "grpcio":
        return GrpcioClient(port, **kwargs)
    raise ValueError(f"unknown gRPC library {library!r}; want one of {LIBRARIES}")


_CONNECTION_KEYS = frozenset({"host", "ca", "server_name", "authority", "window", "options"})


async def grpc_call(library: str, port: int, method: str, request: Any = b"",
                    **kwargs: Any) -> CallResult:
    """One call on a fresh connection: connection keywords (host, ca, server_name, authority,
    window for grpclib, options for grpcio) and call keywords (timeout, metadata, read_delay,
    send_delay, lockstep, keep, cancel_after, cancel_after_messages, progress) mixed."""
    conn = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONNECTION_KEYS}
    async with grpc_client(library, port, **conn) as client:
        return await client.call(method, request, **kwargs)
