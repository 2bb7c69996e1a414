"""Header rules shared by every codec: hop-by-hop stripping and forwarding headers.

Headers travel as lists of (lower-case name bytes, value bytes) in arrival
order, so repeated fields (Set-Cookie) and their order survive the proxy.
"""
from __future__ import annotations

import os

# RFC 9110 7.6.1: connection-specific fields never cross a proxy.  Content
# framing (content-length / transfer-encoding) is removed here too because the
# codec on the other side re-frames the body itself.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length",
))

# Headers the gateway sets itself on the way upstream; a client's copy is
# replaced (x-forwarded-for is appended to instead, see forwarded_request_headers).
GATEWAY_SET = frozenset((
    b"host", b"x-forwarded-proto", b"x-forwarded-port", b"expect",
    b"x-envoy-original-path",
    # Only the gateway vouches for a client certificate (Envoy's SANITIZE_SET).
    b"x-forwarded-client-cert",
))


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Field names listed in Connection: headers, which are hop-by-hop too."""
    tokens = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens)


# Connection values that name no extra hop-by-hop field: the common case skips parsing.
PLAIN_CONNECTION_VALUES = frozenset((b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"))


class RequestIds:
    """UUID-shaped request ids: a random per-process prefix and a counter.

    Unique across processes and restarts (the prefix has 80 random bits) and
    a fraction of the cost of uuid.uuid4(); ids are correlation handles, not
    secrets, so they need not be unpredictable."""
    __slots__ = ("prefix", "counter")

    def __init__(self) -> None:
        h = os.urandom(10).hex().encode()
        self.prefix = b"%s-%s-4%s-a%s-" % (h[:8], h[8:12], h[12:15], h[15:18])
        self.counter = 0

    def next(self) -> bytes:
        self.counter += 1
        return b"%s%012x" % (self.prefix, self.counter & 0xFFFFFFFFFFFF)


new_request_id = RequestIds().next


_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout_seconds(value: bytes) -> float:
    """The grpc-timeout header (gRPC over HTTP/2 spec): 1-8 digits and a unit; 0 if malformed."""
    unit = _GRPC_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return 0.0
    return int(digits) * unit
