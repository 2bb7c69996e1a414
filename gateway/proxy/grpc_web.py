"""gRPC-Web <-> gRPC translation for one exchange (grpc/doc/PROTOCOL-WEB.md).

A browser cannot read HTTP trailers, so gRPC-Web moves them into the body as a
final length-prefixed frame whose flag byte has the top bit set (0x80), holding
"name: value\r\n" lines; the -text variants carry the whole body base64-encoded.
Envoy's grpc_web filter is the behaviour matched:

  request    content-type application/grpc-web[-text][+proto] -> application/grpc[+proto],
             content-length dropped (the backend sees HTTP/2 DATA, and text bodies shrink),
             te: trailers and grpc-accept-encoding: identity added; x-grpc-web and
             x-user-agent travel on as ordinary metadata, as Envoy leaves them
  response   content-type -> the gRPC-Web type the client used (-text when it asked
             for text by content-type or Accept), trailers -> the trailer frame,
             trailers-only responses (grpc-status in the head) -> the same frame
  errors     the gateway's own replies and non-gRPC backend answers become HTTP 200 with
             grpc-status / grpc-message in the trailer frame

`begin()` turns an exchange the codec marked (`Exchange.grpc_web` holding the
client's content-type) into a translated one: a `GrpcWebCall` takes the
exchange's downstream seat, so every response event passes through it with no
check on the path of other exchanges; the request body is handed to it by the
exchange's own one-attribute hook.
"""
from __future__ import annotations

import binascii
from typing import TYPE_CHECKING
from urllib.parse import quote

from gateway.proxy import local_reply as replies
from gateway.proxy.headers import grpc_timeout_seconds

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

TRAILER_FLAG = 0x80
TEXT_PREFIX = b"application/grpc-web-text"

BAD_BASE64 = replies.LocalReply(400, "DPE", b"bad gRPC-Web request: invalid base64 data\n",
                                grpc_status=replies.GRPC_INTERNAL)
TRUNCATED_FRAME = replies.LocalReply(400, "DPE", b"bad gRPC-Web request: the body ends inside a frame\n",
                                     grpc_status=replies.GRPC_INTERNAL)

# grpc/doc/http-grpc-status-mapping.md: what a client makes of a non-gRPC answer.
_HTTP_TO_GRPC = {400: replies.GRPC_INTERNAL, 401: 16, 403: 7, 404: replies.GRPC_UNIMPLEMENTED,
                 429: replies.GRPC_UNAVAILABLE, 502: replies.GRPC_UNAVAILABLE,
                 503: replies.GRPC_UNAVAILABLE, 504: replies.GRPC_UNAVAILABLE}
_GRPC_UNKNOWN = 2
# A non-gRPC answer's body becomes grpc-message; a page of HTML need not all go.
MESSAGE_LIMIT = 1024
# grpc-message is percent-encoded outside printable ASCII, and '%' itself (PROTOCOL-HTTP2.md).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7f) if c != 0x25)


def grpc_message(text: str) -> bytes:
    return quote(text, safe=_MESSAGE_SAFE).encode("ascii")


def trailer_frame(trailers) -> bytes:
    """The body frame that carries trailers: 0x80, a 4-byte length, HTTP/1-style lines."""
    block = b"".join(b"%s: %s\r\n" % (name, value) for name, value in trailers)
    return bytes((TRAILER_FLAG,)) + len(block).to_bytes(4, "big") + block


def b64encode(data: bytes) -> bytes:
    # Each chunk is encoded (and padded) on its own so it can go out at once: the
    # protocol lets padding fall at any flush, and holding back a chunk's last one or
    # two bytes would delay the end of a streamed message until the next one.
    return binascii.b2a_base64(data, newline=False)


class Base64Decoder:
    """Streaming base64 for -text request bodies.

    Whole 4-byte groups are decoded as they arrive and at most 3 bytes wait for the
    next chunk.  Clients may send several independently padded chunks, so a group
    holding "=" ends one run and decoding starts afresh after it."""
    __slots__ = ("carry",)

    def __init__(self) -> None:
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        """Decoded bytes of every complete group so far; ValueError if not base64."""
        if self.carry:
            data = self.carry + data
        n = len(data) & ~3
        self.carry = data[n:]
        if not n:
            return b""
        block = data[:n] if n != len(data) else data
        try:
            if b"=" not in block:
                return binascii.a2b_base64(block, strict_mode=True)
            out = []
            start = 0
            while start < n:
                pad = block.find(b"=", start)
                end = n if pad < 0 else (pad // 4 + 1) * 4
                out.append(binascii.a2b_base64(block[start:end], strict_mode=True))
                start = end
            return b"".join(out)
        except binascii.Error as exc:
            raise ValueError(str(exc)) from None

    @property
    def clean(self) -> bool:
        """Nothing left over: the body ended on a group boundary."""
        return not self.carry


class FrameTracker:
    """Follows the length-prefixed frames of a request body so one cut short is caught
    at the end, before a backend is left waiting for bytes that will never come."""
    __slots__ = ("head", "remaining")

    def __init__(self) -> None:
        self.head = b""       # bytes of a 5-byte frame header seen so far
        self.remaining = 0    # message bytes still due in the current frame

    def feed(self, data: bytes) -> None:
        i = 0
        n = len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                continue
            need = 5 - len(self.head)
            self.head += data[i:i + need]
            i += need
            if len(self.head) == 5:
                self.remaining = int.from_bytes(self.head[1:], "big")
                self.head = b""

    @property
    def complete(self) -> bool:
        return not self.head and not self.remaining


def begin(ex: Exchange) -> None:
    """Phase ROUTE, first thing: translate the request head and take the downstream seat."""
    content_type = ex.grpc_web
    base, _, suffix = content_type.partition(b";")[0].strip().partition(b"+")
    text_request = base == TEXT_PREFIX
    text_response = text_request
    grpc_type = b"application/grpc+" + suffix if suffix else b"application/grpc"
    headers = []
    accept_encoding = False
    for name, value in ex.request_headers:
        if name == b"content-type":
            headers.append((name, grpc_type))
            continue
        if name == b"content-length" or name == b"te":
            continue
        if name == b"accept":
            if value.startswith(TEXT_PREFIX):
                text_response = True
        elif name == b"grpc-accept-encoding":
            accept_encoding = True
        elif name == b"grpc-timeout" and not ex.grpc_timeout:
            ex.grpc_timeout = grpc_timeout_seconds(value)
        headers.append((name, value))
    headers.append((b"te", b"trailers"))
    if not accept_encoding:
        headers.append((b"grpc-accept-encoding", b"identity"))
    ex.request_headers[:] = headers
    # The body is re-framed on the way up (HTTP/2 DATA, or chunked to an HTTP/1.1 backend).
    ex.content_length = None
    ex.chunked = True
    ex.grpc = True
    if text_response and not text_request:
        content_type = TEXT_PREFIX + (b"+" + suffix if suffix else b"")
    call = GrpcWebCall(ex, content_type, text_request, text_response)
    ex.grpc_web = call
    ex.downstream = call


class GrpcWebCall:
    """The translation state of one exchange, sitting between it and its downstream."""
    __slots__ = ("inner", "exchange", "content_type", "decoder", "frames", "text_response",
                 "held_head", "head_status", "head_trailers", "message")

    def __init__(self, ex: Exchange, content_type: bytes, text_request: bool, text_response: bool):
        self.inner = ex.downstream
        self.exchange = ex
        self.content_type = content_type
        self.decoder = Base64Decoder() if text_request else None
        self.frames = FrameTracker()
        self.text_response = text_response
        self.held_head = None      # (headers) of a response whose head waits for its end
        self.head_status = 0       # HTTP status of a non-gRPC answer being turned into grpc-status
        self.head_trailers = None  # the head of a trailers-only response: its trailers
        self.message = None        # body of a non-gRPC answer, kept for grpc-message

    def __getattr__(self, name):
        # Everything but the response writes is the real downstream's business.
        return getattr(self.inner, name)

    # ------------------------------------------------------------- request

    def request_body(self, chunk: bytes) -> bytes | None:
        """The bytes to send upstream for one client chunk; None when the exchange failed."""
        decoder = self.decoder
        if decoder is not None:
            try:
                chunk = decoder.feed(chunk)
            except ValueError:
                self._reject(BAD_BASE64)
                return None
        self.frames.feed(chunk)
        return chunk

    def request_end(self) -> bool:
        """False when the body ended malformed (and the exchange was answered)."""
        if self.decoder is not None and not self.decoder.clean:
            self._reject(BAD_BASE64)
            return False
        if not self.frames.complete:
            self._reject(TRUNCATED_FRAME)
            return False
        return True

    def _reject(self, reply: replies.LocalReply) -> None:
        ex = self.exchange
        ex.drop_upstream()   # the backend must not wait for the rest of a broken message
        ex.close_after = True
        ex._fail(reply)

    # ------------------------------------------------------------ response

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers, length: int,
                  bodyless: bool) -> None:
        content_type = None
        trailers_only = False
        out = []
        for name, value in headers:
            if name == b"content-type":
                content_type = value
                continue
            if name == b"grpc-status":
                trailers_only = True
            out.append((name, value))
        if trailers_only:
            # grpc-status in the head decides, whatever the content-type.  Every field of
            # a trailers-only head is trailing metadata (PROTOCOL-HTTP2.md), so all of them
            # go into the frame, and the response goes out in one piece at its end.
            self.head_trailers = out
            self.held_head = [(b"content-type", self.content_type)]
            return
        out.append((b"content-type", self.content_type))
        if status != 200 or content_type is None or not content_type.startswith(b"application/grpc"):
            # Not a gRPC answer (a proxy's error page, a misrouted request): the client
            # learns of it through grpc-status, as from any other gRPC failure.
            self.head_status = status
            self.message = b""
            self.held_head = out
            return
        # The body changes length (frames added, base64): the codec frames it anew.
        self.inner.send_head(ex, 200, reason, out, -1, False)

    def send_body(self, chunk: bytes) -> None:
        message = self.message
        if message is not None:
            if len(message) < MESSAGE_LIMIT:
                self.message = message + chunk[:MESSAGE_LIMIT - len(message)]
            return
        if self.text_response:
            chunk = b64encode(chunk)
        self.inner.send_body(chunk)

    def send_end(self, trailers) -> None:
        inner = self.inner
        ex = self.exchange
        if self.message is not None:
            code = _HTTP_TO_GRPC.get(self.head_status, _GRPC_UNKNOWN)
            text = self.message.decode("utf-8", "replace").strip() or \
                f"upstream answered HTTP {self.head_status} without gRPC"
            trailers = [(b"grpc-status", b"%d" % code), (b"grpc-message", grpc_message(text))]
        elif not trailers:
            trailers = self.head_trailers or ()
        for name, value in trailers:
            if name == b"grpc-status":
                ex.grpc_status = value.decode("latin-1")
                break
        frame = trailer_frame(trailers)
        if self.text_response:
            frame = b64encode(frame)
        held = self.held_head
        if held is not None:
            self.held_head = None
            inner.send_head(ex, 200, b"OK", held, len(frame), False)
        inner.send_body(frame)
        inner.send_end(None)

    def send_local_reply(self, ex: Exchange, reply: replies.LocalReply) -> list:
        """The gateway's own error, the gRPC-Web way: HTTP 200 and a trailer frame."""
        ex.grpc_status = str(reply.grpc_status)
        frame = trailer_frame(((b"grpc-status", b"%d" % reply.grpc_status),
                               (b"grpc-message", grpc_message(reply.body.decode().strip()))))
        if self.text_response:
            frame = b64encode(frame)
        headers = [(b"content-type", self.content_type)]
        if reply.overloaded:
            headers.append((b"x-envoy-overloaded", b"true"))
        if reply.headers:
            headers += reply.headers
        inner = self.inner
        inner.send_head(ex, 200, b"OK", headers, len(frame), False)
        inner.send_body(frame)
        inner.send_end(None)
        return headers
