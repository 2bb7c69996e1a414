"""`gateway:` process settings (not App Mesh) -> model.GatewaySettings."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway.config import model
from gateway.config.fields import Checker, integer, number, obj, string

# Seconds settings are capped at a day: larger values are typos, and event-loop timers
# refuse absurd delays at run time instead of at load time.
MAX_SECONDS = 86400
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_settings(ck: Checker, path: str, raw: Any) -> model.GatewaySettings | None:
    defaults = model.GatewaySettings()
    d = obj(ck, path, raw, {"admin": False, "workers": False, "drain": False, "limits": False,
                            "listenAddress": False})
    if d is None:
        return None
    before = ck.errors
    address, port = defaults.admin_address, defaults.admin_port
    if "admin" in d:
        a = obj(ck, f"{path}.admin", d["admin"], {"address": False, "port": False})
        if a is not None:
            if "address" in a:
                address = _address(ck, f"{path}.admin.address", a["address"])
            if "port" in a:
                # 0 = any free port, handy for tests and side-by-side instances
                port = integer(ck, f"{path}.admin.port", a["port"], 0, 65535)
    listen = _address(ck, f"{path}.listenAddress", d["listenAddress"]) \
        if "listenAddress" in d else defaults.listen_address
    workers = integer(ck, f"{path}.workers", d["workers"], 1, 1024) if "workers" in d else None
    delay, timeout = defaults.drain_delay, defaults.drain_timeout
    if "drain" in d:
        dr = obj(ck, f"{path}.drain", d["drain"], {"delaySeconds": False, "timeoutSeconds": False})
        if dr is not None:
            if "delaySeconds" in dr:
                delay = number(ck, f"{path}.drain.delaySeconds", dr["delaySeconds"], 0, MAX_SECONDS)
            if "timeoutSeconds" in dr:
                timeout = number(ck, f"{path}.drain.timeoutSeconds", dr["timeoutSeconds"], 0,
                                 MAX_SECONDS)
    limits = _parse_limits(ck, f"{path}.limits", d["limits"]) if "limits" in d else model.Limits()
    if ck.errors > before:
        return None
    return model.GatewaySettings(admin_address=address, admin_port=port, workers=workers,
                                 drain_delay=delay, drain_timeout=timeout, limits=limits,
                                 listen_address=listen)


def _parse_limits(ck: Checker, path: str, raw: Any) -> model.Limits | None:
    defaults = model.Limits()
    d = obj(ck, path, raw, {"maxRequestHeaderBytes": False, "maxRequestHeaders": False,
                            "downstreamIdleTimeoutSeconds": False,
                            "requestHeaderTimeoutSeconds": False,
                            "http2KeepaliveIntervalSeconds": False,
                            "http2KeepaliveTimeoutSeconds": False})
    if d is None:
        return None
    before = ck.errors
    header_bytes = integer(ck, f"{path}.maxRequestHeaderBytes", d["maxRequestHeaderBytes"], 1024) \
        if "maxRequestHeaderBytes" in d else defaults.max_request_header_bytes
    headers = integer(ck, f"{path}.maxRequestHeaders", d["maxRequestHeaders"], 1) \
        if "maxRequestHeaders" in d else defaults.max_request_headers
    idle = number(ck, f"{path}.downstreamIdleTimeoutSeconds", d["downstreamIdleTimeoutSeconds"],
                  0, MAX_SECONDS, lo_exclusive=True) \
        if "downstreamIdleTimeoutSeconds" in d else defaults.downstream_idle_timeout
    header_timeout = number(ck, f"{path}.requestHeaderTimeoutSeconds",
                            d["requestHeaderTimeoutSeconds"], 0, MAX_SECONDS, lo_exclusive=True) \
        if "requestHeaderTimeoutSeconds" in d else defaults.request_header_timeout
    # 0 turns keepalive PINGs off; a timeout of 0 would close every connection it pings.
    ping_interval = number(ck, f"{path}.http2KeepaliveIntervalSeconds",
                           d["http2KeepaliveIntervalSeconds"], 0, MAX_SECONDS) \
        if "http2KeepaliveIntervalSeconds" in d else defaults.http2_keepalive_interval
    ping_timeout = number(ck, f"{path}.http2KeepaliveTimeoutSeconds", d["http2KeepaliveTimeoutSeconds"],
                          0, MAX_SECONDS, lo_exclusive=True) \
        if "http2KeepaliveTimeoutSeconds" in d else defaults.http2_keepalive_timeout
    if ck.errors > before:
        return None
    return model.Limits(max_request_header_bytes=header_bytes, max_request_headers=headers,
                        downstream_idle_timeout=idle, request_header_timeout=header_timeout,
                        http2_keepalive_interval=ping_interval, http2_keepalive_timeout=ping_timeout)


def _address(ck: Checker, path: str, raw: Any) -> str | None:
    """A bind address: an IP literal (IPv6 unbracketed, as socket.bind takes it) or a host name."""
    value = string(ck, path, raw, 1, 253)
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            ck.error(path, f'"{value}" is not an IP address or host name')
            return None
    return value
