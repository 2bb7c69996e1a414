"""The SSLObject class both TLS sides hand to the event loop's TLS transport."""
from __future__ import annotations

import ssl


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C methods themselves.

    The event loop's TLS transport calls these for every record; the stdlib
    versions are Python functions that only forward to `_sslobj`, three frames
    per keep-alive request (about 1,400 instructions, 1% of the request, counted
    with callgrind).  If a Python release renames `_sslobj`, the inherited
    methods are kept.
    """

    @classmethod
    def _create(cls, *args, **kwargs):
        obj = super()._create(*args, **kwargs)
        inner = getattr(obj, "_sslobj", None)
        if inner is not None:
            obj.read = inner.read
            obj.write = inner.write
            obj.pending = inner.pending
        return obj
