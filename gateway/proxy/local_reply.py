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


NO_ROUTE = LocalReply(404, "NR", b"no route matched the request\n")
NO_ENDPOINT = LocalReply(503, "UH", b"no healthy upstream\n")
CONNECT_FAILURE = LocalReply(
    503, "UF", b"upstream connect error or disconnect/reset before headers. reset reason: connection failure\n")
UPSTREAM_RESET = LocalReply(
    502, "UC", b"upstream connect error or disconnect/reset before headers. reset reason: connection termination\n")
UPSTREAM_PROTOCOL_ERROR = LocalReply(502, "UPE", b"upstream sent an invalid HTTP response\n")
UPSTREAM_TIMEOUT = LocalReply(504, "UT", b"upstream request timeout\n")
UPSTREAM_IDLE_TIMEOUT = LocalReply(504, "UT", b"upstream stream idle timeout\n")
BAD_REQUEST = LocalReply(400, "DPE", b"bad request\n")
HEADERS_TOO_LARGE = LocalReply(431, "DPE", b"request header section too large\n")
REQUEST_TIMEOUT = LocalReply(408, "DPE", b"request header timeout\n")

REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout",
    413: b"Payload Too Large", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")
