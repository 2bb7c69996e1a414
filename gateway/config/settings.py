"""`gateway:` process settings (not App Mesh) -> model.GatewaySettings."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway.config import model
from gateway.config.fields import Checker, enum, integer, items, number, obj, string

# Seconds settings are capped at a day: larger values are typos, and event-loop timers
# refuse absurd delays at run time instead of at load time.
MAX_SECONDS = 86400
# Rate limits: beyond these a value is a typo (one worker serves far fewer requests).
MAX_RATE = 1_000_000
MAX_RATE_LIMITS = 100
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_settings(ck: Checker, path: str, raw: Any) -> model.GatewaySettings | None:
    defaults = model.GatewaySettings()
    d = obj(ck, path, raw, {"admin": False, "workers": False, "drain": False, "limits": False,
                            "listenAddress": False, "trustedForwardedHops": False,
                            "rateLimits": False})
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
    hops = integer(ck, f"{path}.trustedForwardedHops", d["trustedForwardedHops"], 0, 64) \
        if "trustedForwardedHops" in d else defaults.trusted_forwarded_hops
    rate_limits = _parse_rate_limits(ck, f"{path}.rateLimits", d["rateLimits"]) \
        if "rateLimits" in d else ()
    if ck.errors > before:
        return None
    return model.GatewaySettings(admin_address=address, admin_port=port, workers=workers,
                                 drain_delay=delay, drain_timeout=timeout, limits=limits,
                                 listen_address=listen, trusted_forwarded_hops=hops,
                                 rate_limits=rate_limits)


def _parse_rate_limits(ck: Checker, path: str, raw: Any) -> tuple[model.RateLimit, ...] | None:
    entries = items(ck, path, raw, 0, MAX_RATE_LIMITS)
    if entries is None:
        return None
    out = []
    for i, entry in enumerate(entries):
        p = f"{path}[{i}]"
        d = obj(ck, p, entry, {"route": False, "requestsPerSecond": True, "burst": False,
                               "per": False})
        if d is None:
            continue
        before = ck.errors
        # Route names are checked against the gateway routes by check_rate_limit_routes.
        route = string(ck, f"{p}.route", d["route"], 1, 255) if "route" in d else None
        rate = number(ck, f"{p}.requestsPerSecond", d["requestsPerSecond"], 0, MAX_RATE,
                      lo_exclusive=True) if "requestsPerSecond" in d else None
        burst = integer(ck, f"{p}.burst", d["burst"], 1, MAX_RATE) if "burst" in d else None
        per = enum(ck, f"{p}.per", d["per"], ("route", "client")) if "per" in d else "route"
        if ck.errors > before or rate is None:
            continue
        out.append(model.RateLimit(requests_per_second=rate,
                                   burst=float(burst) if burst is not None else max(1.0, rate),
                                   route=route, per=per))
    return tuple(out) if len(out) == len(entries) else None


def check_rate_limit_routes(ck: Checker, path: str, raw: Any, declared: set[str]) -> None:
    """Each rate limit's `route` names a declared gateway route.  Read from the raw block,
    like the virtual service references, so it is reported beside any other error."""
    entries = raw.get("rateLimits") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return
    for i, entry in enumerate(entries):
        name = entry.get("route") if isinstance(entry, dict) else None
        if isinstance(name, str) and name and name not in declared:
            ck.error(f"{path}.rateLimits[{i}].route",
                     f'gateway route "{name}" is not declared in gatewayRoutes')


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
