"""App Mesh shapes shared by the virtual gateway and the virtual services.

Each `parse_*` function checks one shape of appmesh-gateway.md section 1 and
returns the model object, or None when the shape had errors (already recorded).
"""
from __future__ import annotations

import os
from typing import Any

from gateway.config import model
from gateway.config.fields import (INT64, PORT, Checker, boolean, enum, integer, items, obj,
                                   one_of, string)

NOT_SUPPORTED = "not supported here: use file"
HTTP_PROTOCOLS = ("http", "http2", "grpc")


def parse_duration(ck: Checker, path: str, raw: Any) -> float | None:
    """Duration {value, unit} -> seconds.

    The model marks both members optional; a duration without either has no
    meaning, so both are required here."""
    d = obj(ck, path, raw, {"value": True, "unit": True})
    if d is None or "value" not in d or "unit" not in d:
        return None
    value = integer(ck, f"{path}.value", d["value"], 0, INT64[1])
    unit = enum(ck, f"{path}.unit", d["unit"], ("s", "ms"))
    if value is None or unit is None:
        return None
    return value / 1000.0 if unit == "ms" else float(value)


def parse_connection_pool(ck: Checker, path: str, raw: Any, protocol: str | None,
                          keys: tuple[str, ...], owner: str) -> model.ConnectionPool | None:
    """Virtual gateway / virtual node connection pool: one key, equal to the protocol (2.13)."""
    d = obj(ck, path, raw, {k: False for k in keys})
    if d is None:
        return None
    key = one_of(ck, path, d, keys)
    if key is None:
        return None
    before = ck.errors
    sub = f"{path}.{key}"
    if protocol is not None and key != protocol:
        ck.error(sub, f'must match the {owner} protocol "{protocol}"')
    if key == "http":
        p = obj(ck, sub, d[key], {"maxConnections": True, "maxPendingRequests": False})
        if p is None:
            return None
        max_conn = integer(ck, f"{sub}.maxConnections", p.get("maxConnections"), 1) \
            if "maxConnections" in p else None
        pending = integer(ck, f"{sub}.maxPendingRequests", p["maxPendingRequests"], 1) \
            if "maxPendingRequests" in p else None
        if ck.errors > before:
            return None
        return model.ConnectionPool("http", max_connections=max_conn, max_pending_requests=pending)
    if key == "tcp":
        p = obj(ck, sub, d[key], {"maxConnections": True})
        if p is None or "maxConnections" not in p:
            return None
        max_conn = integer(ck, f"{sub}.maxConnections", p["maxConnections"], 1)
        if ck.errors > before:
            return None
        return model.ConnectionPool("tcp", max_connections=max_conn)
    p = obj(ck, sub, d[key], {"maxRequests": True})
    if p is None or "maxRequests" not in p:
        return None
    max_req = integer(ck, f"{sub}.maxRequests", p["maxRequests"], 1)
    if ck.errors > before:
        return None
    return model.ConnectionPool(key, max_requests=max_req)


def parse_health_check(ck: Checker, path: str, raw: Any, protocols: tuple[str, ...],
                       listener_port: int | None = None) -> model.HealthCheckPolicy | None:
    """HealthCheckPolicy / VirtualGatewayHealthCheckPolicy with the ranges of 2.14."""
    d = obj(ck, path, raw, {
        "protocol": True, "intervalMillis": True, "timeoutMillis": True,
        "healthyThreshold": True, "unhealthyThreshold": True, "path": False, "port": False})
    if d is None:
        return None
    before = ck.errors
    protocol = enum(ck, f"{path}.protocol", d["protocol"], protocols) if "protocol" in d else None
    interval = integer(ck, f"{path}.intervalMillis", d["intervalMillis"], 5000, 300000) \
        if "intervalMillis" in d else None
    timeout = integer(ck, f"{path}.timeoutMillis", d["timeoutMillis"], 2000, 60000) \
        if "timeoutMillis" in d else None
    healthy = integer(ck, f"{path}.healthyThreshold", d["healthyThreshold"], 2, 10) \
        if "healthyThreshold" in d else None
    unhealthy = integer(ck, f"{path}.unhealthyThreshold", d["unhealthyThreshold"], 2, 10) \
        if "unhealthyThreshold" in d else None
    probe_path = string(ck, f"{path}.path", d["path"], 1) if "path" in d else None
    port = integer(ck, f"{path}.port", d["port"], *PORT) if "port" in d else None
    if port is not None and listener_port is not None and port != listener_port:
        ck.error(f"{path}.port", f"must equal the listener port {listener_port} (got {port})")
    if probe_path is not None and not probe_path.startswith("/"):
        ck.error(f"{path}.path", 'must start with "/"')
    if probe_path is not None and protocol in ("grpc", "tcp"):
        ck.warn(f"{path}.path", f"ignored for protocol {protocol}")
    if ck.errors > before or None in (protocol, interval, timeout, healthy, unhealthy):
        return None
    return model.HealthCheckPolicy(protocol, interval, timeout, healthy, unhealthy,
                                   path=probe_path, port=port)


def parse_outlier_detection(ck: Checker, path: str, raw: Any) -> model.OutlierDetection | None:
    d = obj(ck, path, raw, {"maxServerErrors": True, "interval": True,
                            "baseEjectionDuration": True, "maxEjectionPercent": True})
    if d is None:
        return None
    before = ck.errors
    errors = integer(ck, f"{path}.maxServerErrors", d["maxServerErrors"], 1, INT64[1]) \
        if "maxServerErrors" in d else None
    interval = parse_duration(ck, f"{path}.interval", d["interval"]) if "interval" in d else None
    ejection = parse_duration(ck, f"{path}.baseEjectionDuration", d["baseEjectionDuration"]) \
        if "baseEjectionDuration" in d else None
    percent = integer(ck, f"{path}.maxEjectionPercent", d["maxEjectionPercent"], 0, 100) \
        if "maxEjectionPercent" in d else None
    if ck.errors > before or None in (errors, interval, ejection, percent):
        return None
    return model.OutlierDetection(errors, interval, ejection, percent)


def parse_file_certificate(ck: Checker, path: str, raw: Any,
                           must_exist: bool) -> model.TlsFileCertificate | None:
    d = obj(ck, path, raw, {"certificateChain": True, "privateKey": True})
    if d is None:
        return None
    before = ck.errors
    chain = _file_path(ck, f"{path}.certificateChain", d.get("certificateChain"), must_exist)
    key = _file_path(ck, f"{path}.privateKey", d.get("privateKey"), must_exist)
    if ck.errors > before or chain is None or key is None:
        return None
    return model.TlsFileCertificate(chain, key)


def parse_certificate(ck: Checker, path: str, raw: Any, members: tuple[str, ...],
                      must_exist: bool) -> model.TlsFileCertificate | None:
    """A certificate union (acm | file | sds): only `file` can be served (A21)."""
    d = obj(ck, path, raw, {m: False for m in members})
    if d is None:
        return None
    key = one_of(ck, path, d, members)
    if key is None:
        return None
    if key != "file":
        ck.error(f"{path}.{key}", NOT_SUPPORTED)
        return None
    return parse_file_certificate(ck, f"{path}.file", d["file"], must_exist)


def parse_validation(ck: Checker, path: str, raw: Any, trust_members: tuple[str, ...],
                     must_exist: bool) -> model.TlsValidation | None:
    """A TLS validation context: {trust (union), subjectAlternativeNames?}."""
    d = obj(ck, path, raw, {"trust": True, "subjectAlternativeNames": False})
    if d is None:
        return None
    before = ck.errors
    trust_path = f"{path}.trust"
    chain = None
    if "trust" in d:
        # acm on a listener trust is not even an App Mesh member, but the answer is the same
        t = obj(ck, trust_path, d["trust"], {m: False for m in trust_members},
                ignored=("acm", "sds"))
        if t is not None:
            for unsupported in ("acm", "sds"):
                if d["trust"].get(unsupported) is not None:
                    ck.error(f"{trust_path}.{unsupported}", NOT_SUPPORTED)
            if ck.errors == before:
                key = one_of(ck, trust_path, t, trust_members)
                if key == "file":
                    f = obj(ck, f"{trust_path}.file", t["file"], {"certificateChain": True})
                    if f is not None:
                        chain = _file_path(ck, f"{trust_path}.file.certificateChain",
                                           f.get("certificateChain"), must_exist)
    sans: tuple[str, ...] = ()
    if "subjectAlternativeNames" in d:
        sans = _parse_sans(ck, f"{path}.subjectAlternativeNames", d["subjectAlternativeNames"])
    if ck.errors > before or chain is None:
        return None
    return model.TlsValidation(chain, sans)


def _parse_sans(ck: Checker, path: str, raw: Any) -> tuple[str, ...]:
    d = obj(ck, path, raw, {"match": True})
    if d is None or "match" not in d:
        return ()
    m = obj(ck, f"{path}.match", d["match"], {"exact": True})
    if m is None or "exact" not in m:
        return ()
    values = items(ck, f"{path}.match.exact", m["exact"])
    if values is None:
        return ()
    out = [string(ck, f"{path}.match.exact[{i}]", v, 1, 254) for i, v in enumerate(values)]
    return tuple(v for v in out if v is not None)


def parse_client_policy_tls(ck: Checker, path: str, raw: Any) -> model.ClientPolicyTls | None:
    """ClientPolicyTls / VirtualGatewayClientPolicyTls (2.12.3)."""
    d = obj(ck, path, raw, {"validation": True, "enforce": False, "ports": False,
                            "certificate": False})
    if d is None:
        return None
    before = ck.errors
    enforce = boolean(ck, f"{path}.enforce", d["enforce"]) if "enforce" in d else True
    # A non-enforced policy is ignored for the TLS decision (A16): its files are never opened.
    must_exist = enforce is not False
    ports: list[int] = []
    if "ports" in d:
        listed = items(ck, f"{path}.ports", d["ports"])
        for i, p in enumerate(listed or []):
            port = integer(ck, f"{path}.ports[{i}]", p, *PORT)
            if port is not None:
                ports.append(port)
    validation = parse_validation(ck, f"{path}.validation", d["validation"],
                                  ("acm", "file", "sds"), must_exist) if "validation" in d else None
    certificate = parse_certificate(ck, f"{path}.certificate", d["certificate"],
                                    ("file", "sds"), must_exist) if "certificate" in d else None
    if ck.errors > before or validation is None:
        return None
    return model.ClientPolicyTls(validation, enforce=bool(enforce), ports=tuple(ports),
                                 certificate=certificate)


def parse_hostname_match(ck: Checker, path: str, raw: Any) -> model.HostnameMatch | None:
    """GatewayRouteHostnameMatch: exactly one of exact / suffix, normalised (2.3)."""
    d = obj(ck, path, raw, {"exact": False, "suffix": False})
    if d is None:
        return None
    key = one_of(ck, path, d, ("exact", "suffix"))
    if key is None:
        return None
    value = string(ck, f"{path}.{key}", d[key], 1, 253)
    if value is None:
        return None
    value = value.lower()
    if key == "exact":
        return model.HostnameMatch(exact=value)
    value = value[1:] if value.startswith(".") else value
    if not value:
        ck.error(f"{path}.suffix", "must name a domain, not just \".\"")
        return None
    return model.HostnameMatch(suffix=value)


def _file_path(ck: Checker, path: str, raw: Any, must_exist: bool) -> str | None:
    """A file named in the config: kept as written (relative to the working directory)."""
    value = string(ck, path, raw, 1, 255)
    if value is None:
        return None
    if must_exist:
        if not os.path.isfile(value):
            ck.error(path, f"file not found: {value}")
            return None
        if not os.access(value, os.R_OK):
            ck.error(path, f"file not readable: {value}")
            return None
    return value
