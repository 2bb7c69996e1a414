"""Responses the gateway writes itself, with Envoy's response flags.

Each kind is a constant so the request path only picks one; the body is a
short text a human can act on.
"""
from __future__ import annotations

from typing import NamedTuple


class LocalReply(NamedTuple):
    status: int
    flag: str        # access-log response flag ("-" when none)
    body: bytes
    overloaded: bool = False   # adds x-envoy-overloaded: true
    grpc_status: int = 2       # what a gRPC client gets instead (HTTP 200 + grpc-status)
    headers: tuple = ()        # further (name, value) response fields, e.g. retry-after


# gRPC status codes the gateway answers with (grpc/doc/statuscodes.md).
GRPC_DEADLINE_EXCEEDED = 4
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_RESOURCE_EXHAUSTED = 8


NO_ROUTE = LocalReply(404, "NR", b"no route matched the request\n", grpc_status=GRPC_UNIMPLEMENTED)
NO_ENDPOINT = LocalReply(503, "UH", b"no healthy upstream\n", grpc_status=GRPC_UNAVAILABLE)
CONNECT_FAILURE = LocalReply(
    503, "UF", b"upstream connect error or disconnect/reset before headers. reset reason: connection failure\n",
    grpc_status=GRPC_UNAVAILABLE)
UPSTREAM_RESET = LocalReply(
    502, "UC", b"upstream connect error or disconnect/reset before headers. reset reason: connection termination\n",
    grpc_status=GRPC_UNAVAILABLE)
# An HTTP/2 backend reset the stream (RST_STREAM) but kept the connection.
UPSTREAM_REMOTE_RESET = LocalReply(
    502, "UR", b"upstream connect error or disconnect/reset before headers. reset reason: remote reset\n",
    grpc_status=GRPC_UNAVAILABLE)
UPSTREAM_PROTOCOL_ERROR = LocalReply(502, "UPE", b"upstream sent an invalid HTTP response\n",
                                     grpc_status=GRPC_UNAVAILABLE)
UPSTREAM_TIMEOUT = LocalReply(504, "UT", b"upstream request timeout\n", grpc_status=GRPC_DEADLINE_EXCEEDED)
UPSTREAM_IDLE_TIMEOUT = LocalReply(504, "UT", b"upstream stream idle timeout\n",
                                   grpc_status=GRPC_DEADLINE_EXCEEDED)
BAD_REQUEST = LocalReply(400, "DPE", b"bad request\n", grpc_status=GRPC_INTERNAL)
HEADERS_TOO_LARGE = LocalReply(431, "DPE", b"request header section too large\n",
                              grpc_status=GRPC_RESOURCE_EXHAUSTED)
# A circuit breaker (connectionPool maxRequests) refused the request: Envoy's UO flag
# and its x-envoy-overloaded header, so a client can tell overflow from a dead backend.
UPSTREAM_OVERFLOW = LocalReply(503, "UO", b"upstream overflow: too many requests in flight\n",
                               overloaded=True, grpc_status=GRPC_UNAVAILABLE)
# Upgrades (WebSocket, from HTTP/1.1 or RFC 8441 extended CONNECT) are tunnelled to
# HTTP/1.1 backends only; an HTTP/2 backend would need extended CONNECT upstream.
UPGRADE_TO_H2 = LocalReply(
    501, "-", b"protocol upgrade is not supported towards an HTTP/2 or gRPC virtual service\n")
REQUEST_TIMEOUT = LocalReply(408, "DPE", b"request header timeout\n")
# A local rate limit refused the request (proxy/rate_limit.py adds retry-after): Envoy's
# RL flag; gRPC clients get RESOURCE_EXHAUSTED, the status gRPC names for quota refusals.
RATE_LIMITED = LocalReply(429, "RL", b"too many requests: local rate limit exceeded\n",
                          grpc_status=GRPC_RESOURCE_EXHAUSTED)

REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout",
    413: b"Payload Too Large", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")
