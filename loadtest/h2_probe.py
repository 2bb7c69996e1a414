"""One HTTP/2 request over cleartext with prior knowledge: the sanity check before any h2 load.

h2load only sees the :status of a response, so before loading a target the
benchmark sends one request with this probe and checks what h2load cannot: the
body, the content-type and, for gRPC, the grpc-status trailer. A target that does
not speak h2c (answers in HTTP/1.1, closes the connection, resets the stream)
raises NotServed with what it did instead, so the table can say "not served"
rather than report a crash.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

LOOPBACK = "127.0.0.1"


class NotServed(RuntimeError):
    """The peer did not answer the request over HTTP/2."""


@dataclass(frozen=True, slots=True)
class H2Reply:
    status: int
    headers: dict[str, str]             # response headers, pseudo-headers excluded
    body: bytes
    trailers: dict[str, str]


def request(port: int, method: str, path: str, authority: str,
            headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
            timeout: float = 5.0) -> H2Reply:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", method), (":scheme", "http"), (":authority", authority),
                            (":path", path), *headers], end_stream=not body)
    if body:
        conn.send_data(sid, body, end_stream=True)
    status: int | None = None
    resp_headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    data = bytearray()
    first = True
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise NotServed(f"no complete HTTP/2 response within {timeout:.0f}s") from None
            except OSError as e:
                raise NotServed(f"connection failed: {e}") from None
            if not chunk:
                raise NotServed("the peer closed the connection before a complete HTTP/2 "
                                "response (it does not speak h2c with prior knowledge)")
            if first and chunk.startswith(b"HTTP/1."):
                line = chunk.split(b"\r\n", 1)[0].decode(errors="replace")
                raise NotServed(f"answered in HTTP/1.x ({line!r}), not HTTP/2")
            first = False
            try:
                events = conn.receive_data(chunk)
            except h2.exceptions.ProtocolError as e:
                raise NotServed(f"invalid HTTP/2 from the peer: {e!r}") from None
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == ":status":
                            status = int(v)
                        else:
                            resp_headers[k] = v
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    trailers.update(ev.headers)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise NotServed(f"the peer reset the stream ({ev.error_code!r})")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise NotServed(f"the peer sent GOAWAY ({ev.error_code!r}, "
                                    f"{ev.additional_data!r}) before the response ended")
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    if status is None:
                        raise NotServed("the stream ended without response headers")
                    return H2Reply(status, resp_headers, bytes(data), trailers)
            if out := conn.data_to_send():
                sock.sendall(out)
