"""`virtualServices[]` entries -> model.VirtualService (config-format.md, spec 1.5-1.6, 2.11-2.17).

The mesh side is collapsed onto the virtual service entry; each member keeps its
App Mesh shape (VirtualNodeConnectionPool, HealthCheckPolicy, OutlierDetection,
HttpTimeout/GrpcTimeout, HttpRetryPolicy/GrpcRetryPolicy, ClientPolicyTls).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway.config import model
from gateway.config.fields import (INT64, PORT, Checker, enum, integer, items, obj, one_of,
                                   string)
from gateway.config.shapes import (HTTP_PROTOCOLS, parse_client_policy_tls,
                                   parse_connection_pool, parse_duration, parse_health_check,
                                   parse_outlier_detection)

BACKENDS = ("endpoints", "dns", "weightedTargets")
POOL_KEYS = ("http", "http2", "grpc", "tcp")
HEALTH_PROTOCOLS = ("http", "tcp", "http2", "grpc")
HTTP_RETRY_EVENTS = ("server-error", "gateway-error", "client-error", "stream-error")
GRPC_RETRY_EVENTS = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                     "unavailable")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?\.?")


def parse_virtual_service(ck: Checker, path: str, raw: Any) -> model.VirtualService | None:
    d = obj(ck, path, raw, {
        "virtualServiceName": True, "protocol": False, "endpoints": False, "dns": False,
        "weightedTargets": False, "connectionPool": False, "healthCheck": False,
        "outlierDetection": False, "timeout": False, "retryPolicy": False, "tls": False})
    if d is None:
        return None
    before = ck.errors
    name = string(ck, f"{path}.virtualServiceName", d["virtualServiceName"], 1, 255) \
        if "virtualServiceName" in d else None
    protocol = enum(ck, f"{path}.protocol", d["protocol"], HTTP_PROTOCOLS) \
        if "protocol" in d else "http"
    # VS-level pool / health check / outlier detection are the defaults of every weighted target.
    pool = parse_connection_pool(ck, f"{path}.connectionPool", d["connectionPool"], protocol,
                                 POOL_KEYS, "virtual service") if "connectionPool" in d else None
    health = parse_health_check(ck, f"{path}.healthCheck", d["healthCheck"], HEALTH_PROTOCOLS) \
        if "healthCheck" in d else None
    outlier = parse_outlier_detection(ck, f"{path}.outlierDetection", d["outlierDetection"]) \
        if "outlierDetection" in d else None
    timeout = _parse_timeout(ck, f"{path}.timeout", d["timeout"]) if "timeout" in d else model.Timeouts()
    retry = _parse_retry_policy(ck, f"{path}.retryPolicy", d["retryPolicy"], protocol) \
        if "retryPolicy" in d else None
    tls = parse_client_policy_tls(ck, f"{path}.tls", d["tls"]) if "tls" in d else None

    groups: tuple[model.BackendGroup, ...] = ()
    kind = one_of(ck, path, d, BACKENDS)
    if kind == "weightedTargets":
        groups = _parse_weighted_targets(ck, f"{path}.weightedTargets", d["weightedTargets"],
                                         protocol, pool, health, outlier)
    elif kind is not None:
        endpoints, dns = _parse_backend(ck, path, d, kind)
        groups = (model.BackendGroup(1, endpoints=endpoints, dns=dns, connection_pool=pool,
                                     health_check=health, outlier_detection=outlier),)
    if ck.errors > before or name is None or protocol is None or timeout is None:
        return None
    return model.VirtualService(name, protocol, groups, timeout=timeout, retry_policy=retry,
                                tls=tls, source=ck.source)


def _parse_backend(ck: Checker, path: str, d: dict[str, Any], kind: str
                   ) -> tuple[tuple[model.Address, ...], model.DnsDiscovery | None]:
    if kind == "endpoints":
        return _parse_endpoints(ck, f"{path}.endpoints", d["endpoints"]), None
    return (), _parse_dns(ck, f"{path}.dns", d["dns"])


def _parse_weighted_targets(ck: Checker, path: str, raw: Any, protocol: str | None,
                            pool: model.ConnectionPool | None,
                            health: model.HealthCheckPolicy | None,
                            outlier: model.OutlierDetection | None) -> tuple[model.BackendGroup, ...]:
    listed = items(ck, path, raw, 1, 10)
    if listed is None:
        return ()
    groups: list[model.BackendGroup] = []
    weights_ok = True
    for i, entry in enumerate(listed):
        p = f"{path}[{i}]"
        d = obj(ck, p, entry, {"weight": True, "endpoints": False, "dns": False,
                               "healthCheck": False, "connectionPool": False,
                               "outlierDetection": False})
        if d is None:
            weights_ok = False
            continue
        before = ck.errors
        weight = integer(ck, f"{p}.weight", d["weight"], 0, 100) if "weight" in d else None
        weights_ok = weights_ok and weight is not None
        kind = one_of(ck, p, d, ("endpoints", "dns"))
        endpoints, dns = _parse_backend(ck, p, d, kind) if kind else ((), None)
        t_pool = parse_connection_pool(ck, f"{p}.connectionPool", d["connectionPool"], protocol,
                                       POOL_KEYS, "virtual service") if "connectionPool" in d else pool
        t_health = parse_health_check(ck, f"{p}.healthCheck", d["healthCheck"], HEALTH_PROTOCOLS) \
            if "healthCheck" in d else health
        t_outlier = parse_outlier_detection(ck, f"{p}.outlierDetection", d["outlierDetection"]) \
            if "outlierDetection" in d else outlier
        if ck.errors == before and weight is not None:
            groups.append(model.BackendGroup(weight, endpoints=endpoints, dns=dns,
                                             connection_pool=t_pool, health_check=t_health,
                                             outlier_detection=t_outlier))
    if weights_ok and groups and len(groups) == len(listed) and sum(g.weight for g in groups) == 0:
        ck.error(path, "all weights are 0: at least one target needs a weight of 1 or more")
    return tuple(groups)


def _parse_endpoints(ck: Checker, path: str, raw: Any) -> tuple[model.Address, ...]:
    listed = items(ck, path, raw, 1)
    out: list[model.Address] = []
    for i, entry in enumerate(listed or []):
        address = parse_address(ck, f"{path}[{i}]", entry)
        if address is not None:
            out.append(address)
    return tuple(out)


def parse_address(ck: Checker, path: str, raw: Any) -> model.Address | None:
    """"host:port", IPv6 literals bracketed: "[::1]:8080"."""
    value = string(ck, path, raw, 1)
    if value is None:
        return None
    form = 'must be "host:port" (IPv6 as "[::1]:8080")'
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            ck.error(path, f"{form} (got \"{value}\")")
            return None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            ck.error(path, f'"{host}" is not an IPv6 address')
            return None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            ck.error(path, f"{form} (got \"{value}\")")
            return None
        if ":" in host:
            ck.error(path, f'IPv6 addresses must be bracketed, as in "[{host}]:{port_text}"')
            return None
        if not _HOST.fullmatch(host):
            ck.error(path, f'"{host}" is not a valid host name or IPv4 address')
            return None
    if not port_text.isdigit() or not (PORT[0] <= int(port_text) <= PORT[1]):
        ck.error(path, f'port must be between 1 and 65535 (got "{port_text}")')
        return None
    return model.Address(host, int(port_text))


def _parse_dns(ck: Checker, path: str, raw: Any) -> model.DnsDiscovery | None:
    d = obj(ck, path, raw, {"hostname": True, "port": True, "responseType": False,
                            "ipPreference": False})
    if d is None:
        return None
    before = ck.errors
    hostname = string(ck, f"{path}.hostname", d["hostname"], 1, 253) if "hostname" in d else None
    if hostname is not None and not _HOST.fullmatch(hostname):
        ck.error(f"{path}.hostname", f'"{hostname}" is not a valid host name')
    port = integer(ck, f"{path}.port", d["port"], *PORT) if "port" in d else None
    response_type = enum(ck, f"{path}.responseType", d["responseType"],
                         ("LOADBALANCER", "ENDPOINTS")) if "responseType" in d else "LOADBALANCER"
    ip_preference = enum(ck, f"{path}.ipPreference", d["ipPreference"],
                         ("IPv6_PREFERRED", "IPv4_PREFERRED", "IPv4_ONLY", "IPv6_ONLY")) \
        if "ipPreference" in d else "IPv4_PREFERRED"
    if ck.errors > before or hostname is None or port is None:
        return None
    return model.DnsDiscovery(hostname, port, response_type=response_type,
                              ip_preference=ip_preference)


def _parse_timeout(ck: Checker, path: str, raw: Any) -> model.Timeouts | None:
    """HttpTimeout / GrpcTimeout (same shape); 0 disables a timeout (2.16)."""
    d = obj(ck, path, raw, {"perRequest": False, "idle": False})
    if d is None:
        return None
    before = ck.errors
    per_request = parse_duration(ck, f"{path}.perRequest", d["perRequest"]) \
        if "perRequest" in d else None
    idle = parse_duration(ck, f"{path}.idle", d["idle"]) if "idle" in d else None
    if ck.errors > before:
        return None
    return model.Timeouts(per_request=per_request, idle=idle)


def _parse_retry_policy(ck: Checker, path: str, raw: Any,
                        protocol: str | None) -> model.RetryPolicy | None:
    """HttpRetryPolicy, or GrpcRetryPolicy for a grpc virtual service (adds grpcRetryEvents)."""
    fields = {"maxRetries": True, "perRetryTimeout": True, "httpRetryEvents": False,
              "tcpRetryEvents": False}
    if protocol == "grpc":
        fields["grpcRetryEvents"] = False
    d = obj(ck, path, raw, fields)
    if d is None:
        return None
    before = ck.errors
    max_retries = integer(ck, f"{path}.maxRetries", d["maxRetries"], 0, INT64[1]) \
        if "maxRetries" in d else None
    per_retry = parse_duration(ck, f"{path}.perRetryTimeout", d["perRetryTimeout"]) \
        if "perRetryTimeout" in d else None
    http_events = _parse_events(ck, f"{path}.httpRetryEvents", d.get("httpRetryEvents"),
                                HTTP_RETRY_EVENTS, 25)
    tcp_events = _parse_events(ck, f"{path}.tcpRetryEvents", d.get("tcpRetryEvents"),
                               ("connection-error",), 1)
    grpc_events = _parse_events(ck, f"{path}.grpcRetryEvents", d.get("grpcRetryEvents"),
                                GRPC_RETRY_EVENTS, 5)
    # on the raw object: grpcRetryEvents on an http service was already reported as unknown
    if all(raw.get(k) is None for k in ("httpRetryEvents", "tcpRetryEvents", "grpcRetryEvents")):
        names = "httpRetryEvents, tcpRetryEvents" + (", grpcRetryEvents" if protocol == "grpc" else "")
        ck.error(path, f"must contain at least one of {names}")
    if ck.errors > before or max_retries is None or per_retry is None:
        return None
    return model.RetryPolicy(max_retries, per_retry, http_retry_events=http_events,
                             tcp_retry_events=tcp_events, grpc_retry_events=grpc_events)


def _parse_events(ck: Checker, path: str, raw: Any, allowed: tuple[str, ...],
                  max_items: int) -> tuple[str, ...]:
    if raw is None:
        return ()
    listed = items(ck, path, raw, 1, max_items)
    out: list[str] = []
    for i, v in enumerate(listed or []):
        event = enum(ck, f"{path}[{i}]", v, allowed)
        if event is not None and event not in out:
            out.append(event)
    return tuple(out)
