"""`virtualGateway:` -> model.VirtualGateway (appmesh-gateway.md 1.3, 2.12-2.15)."""
from __future__ import annotations

from typing import Any

from gateway.config import model
from gateway.config.fields import PORT, Checker, enum, integer, items, obj, one_of, string
from gateway.config.shapes import (HTTP_PROTOCOLS, parse_certificate, parse_client_policy_tls,
                                   parse_connection_pool, parse_file_certificate,
                                   parse_health_check, parse_validation)

# Envelope keys of the CLI / describe shapes that carry no data-plane meaning (spec section 0).
ENVELOPE_KEYS = ("meshName", "meshOwner", "clientToken", "tags")
PROXY_PROTOCOL_MODES = ("off", "optional", "required")


def parse_virtual_gateway(ck: Checker, path: str, raw: Any) -> model.VirtualGateway | None:
    d = obj(ck, path, raw, {"virtualGatewayName": True, "spec": True}, ignored=ENVELOPE_KEYS)
    if d is None:
        return None
    before = ck.errors
    name = string(ck, f"{path}.virtualGatewayName", d["virtualGatewayName"], 1, 255) \
        if "virtualGatewayName" in d else None
    spec_path = f"{path}.spec"
    spec = obj(ck, spec_path, d["spec"], {"listeners": True, "backendDefaults": False,
                                          "logging": False}) if "spec" in d else None
    if spec is None:
        return None
    listeners = _parse_listeners(ck, f"{spec_path}.listeners", spec.get("listeners"))
    backend_tls = _parse_backend_defaults(ck, f"{spec_path}.backendDefaults",
                                          spec["backendDefaults"]) if "backendDefaults" in spec else None
    access_log = _parse_logging(ck, f"{spec_path}.logging", spec["logging"]) \
        if "logging" in spec else None
    if ck.errors > before or name is None or listeners is None:
        return None
    return model.VirtualGateway(name, listeners, backend_tls=backend_tls, access_log=access_log)


def _parse_listeners(ck: Checker, path: str, raw: Any) -> tuple[model.Listener, ...] | None:
    if raw is None:
        return None   # "required field missing" already recorded
    listed = items(ck, path, raw, 1)
    if listed is None:
        return None
    before = ck.errors
    out: list[model.Listener] = []
    seen_ports: dict[int, int] = {}
    for i, entry in enumerate(listed):
        listener = _parse_listener(ck, f"{path}[{i}]", entry)
        if listener is None:
            continue
        if listener.port in seen_ports:
            ck.error(f"{path}[{i}].portMapping.port",
                     f"duplicate listener port {listener.port} (also listeners[{seen_ports[listener.port]}])")
            continue
        seen_ports[listener.port] = i
        out.append(listener)
    return tuple(out) if ck.errors == before else None


def _parse_listener(ck: Checker, path: str, raw: Any) -> model.Listener | None:
    d = obj(ck, path, raw, {"portMapping": True, "connectionPool": False, "healthCheck": False,
                            "tls": False, "proxyProtocol": False, "sniCertificates": False})
    if d is None:
        return None
    before = ck.errors
    port = protocol = None
    if "portMapping" in d:
        pm = obj(ck, f"{path}.portMapping", d["portMapping"], {"port": True, "protocol": True})
        if pm is not None:
            port = integer(ck, f"{path}.portMapping.port", pm["port"], *PORT) if "port" in pm else None
            protocol = enum(ck, f"{path}.portMapping.protocol", pm["protocol"], HTTP_PROTOCOLS) \
                if "protocol" in pm else None
    pool = parse_connection_pool(ck, f"{path}.connectionPool", d["connectionPool"], protocol,
                                 HTTP_PROTOCOLS, "listener") if "connectionPool" in d else None
    health = parse_health_check(ck, f"{path}.healthCheck", d["healthCheck"], HTTP_PROTOCOLS,
                                listener_port=port) if "healthCheck" in d else None
    tls = _parse_listener_tls(ck, f"{path}.tls", d["tls"]) if "tls" in d else None
    proxy_protocol = "off"
    if "proxyProtocol" in d:
        pp = obj(ck, f"{path}.proxyProtocol", d["proxyProtocol"], {"mode": True})
        if pp is not None and "mode" in pp:
            proxy_protocol = enum(ck, f"{path}.proxyProtocol.mode", pp["mode"],
                                  PROXY_PROTOCOL_MODES) or "off"
    sni: tuple[model.SniCertificate, ...] = ()
    if d.get("sniCertificates") is not None:
        sni = _parse_sni_certificates(ck, f"{path}.sniCertificates", d["sniCertificates"],
                                      d.get("tls"), tls)
    if ck.errors > before or port is None or protocol is None:
        return None
    return model.Listener(port, protocol, connection_pool=pool, health_check=health, tls=tls,
                          proxy_protocol=proxy_protocol, sni_certificates=sni)


def _parse_listener_tls(ck: Checker, path: str, raw: Any) -> model.ListenerTls | None:
    """VirtualGatewayListenerTls (2.12.1): certificate required in every mode, but files
    are only opened when TLS can actually be served."""
    d = obj(ck, path, raw, {"mode": True, "certificate": True, "validation": False})
    if d is None:
        return None
    before = ck.errors
    mode = enum(ck, f"{path}.mode", d["mode"], ("STRICT", "PERMISSIVE", "DISABLED")) \
        if "mode" in d else None
    must_exist = mode != "DISABLED"
    certificate = parse_certificate(ck, f"{path}.certificate", d["certificate"],
                                    ("acm", "file", "sds"), must_exist) if "certificate" in d else None
    validation = parse_validation(ck, f"{path}.validation", d["validation"], ("file", "sds"),
                                  must_exist) if "validation" in d else None
    if ck.errors > before or mode is None or certificate is None:
        return None
    return model.ListenerTls(mode, certificate, validation)


def _parse_sni_certificates(ck: Checker, path: str, raw: Any, raw_tls: Any,
                            tls: model.ListenerTls | None) -> tuple[model.SniCertificate, ...]:
    """Extension: `sniCertificates: [{serverNames, certificateChain, privateKey}]`.  The
    listener's own `tls.certificate` stays the default for clients naming no listed host."""
    if raw_tls is None:
        ck.error(path, "needs tls on the same listener (its certificate is the default)")
        return ()
    # Same rule as tls.certificate: in DISABLED mode the files are never opened.
    must_exist = tls is None or tls.mode != "DISABLED"
    listed = items(ck, path, raw, 1)
    if listed is None:
        return ()
    out: list[model.SniCertificate] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(listed):
        p = f"{path}[{i}]"
        d = obj(ck, p, entry, {"serverNames": True, "certificateChain": True, "privateKey": True})
        if d is None:
            continue
        before = ck.errors
        names: list[str] = []
        for j, value in enumerate(items(ck, f"{p}.serverNames", d.get("serverNames"), 1) or []):
            name = _server_name(ck, f"{p}.serverNames[{j}]", value)
            if name is None:
                continue
            if name in seen:
                ck.error(f"{p}.serverNames[{j}]",
                         f'"{name}" already listed in sniCertificates[{seen[name]}]')
                continue
            seen[name] = i
            names.append(name)
        cert = parse_file_certificate(ck, p, {k: d[k] for k in ("certificateChain", "privateKey")
                                              if k in d}, must_exist)
        if ck.errors == before and cert is not None and names:
            out.append(model.SniCertificate(tuple(names), cert))
    return tuple(out)


def _server_name(ck: Checker, path: str, raw: Any) -> str | None:
    """A host name, or "*." + a domain (the wildcard covers exactly one label, as in X.509)."""
    value = string(ck, path, raw, 1, 253)
    if value is None:
        return None
    value = value.lower().rstrip(".")
    bare = value[2:] if value.startswith("*.") else value
    labels = bare.split(".")
    if not bare or "*" in bare or any(not label or len(label) > 63 for label in labels) \
            or any(c.isspace() or c in "/:[]" for c in bare):
        ck.error(path, f'"{raw}" is not a host name or "*.domain" wildcard')
        return None
    return value


def _parse_backend_defaults(ck: Checker, path: str, raw: Any) -> model.ClientPolicyTls | None:
    d = obj(ck, path, raw, {"clientPolicy": False})
    if d is None or "clientPolicy" not in d:
        return None
    cp = obj(ck, f"{path}.clientPolicy", d["clientPolicy"], {"tls": False})
    if cp is None or "tls" not in cp:
        return None
    return parse_client_policy_tls(ck, f"{path}.clientPolicy.tls", cp["tls"])


def _parse_logging(ck: Checker, path: str, raw: Any) -> model.AccessLog | None:
    d = obj(ck, path, raw, {"accessLog": False})
    if d is None or "accessLog" not in d:
        return None
    al_path = f"{path}.accessLog"
    al = obj(ck, al_path, d["accessLog"], {"file": False})
    if al is None or one_of(ck, al_path, al, ("file",)) is None:
        return None
    file_path = f"{al_path}.file"
    f = obj(ck, file_path, al["file"], {"path": True, "format": False})
    if f is None:
        return None
    before = ck.errors
    log_path = string(ck, f"{file_path}.path", f["path"], 1, 255) if "path" in f else None
    text = json_format = None
    if "format" in f:
        text, json_format = _parse_format(ck, f"{file_path}.format", f["format"])
    if ck.errors > before or log_path is None:
        return None
    return model.AccessLog(log_path, text_format=text, json_format=json_format)


def _parse_format(ck: Checker, path: str, raw: Any
                  ) -> tuple[str | None, tuple[tuple[str, str], ...] | None]:
    d = obj(ck, path, raw, {"text": False, "json": False})
    if d is None:
        return None, None
    key = one_of(ck, path, d, ("text", "json"))
    if key == "text":
        text = string(ck, f"{path}.text", d["text"], 1, 1000)
        if text is not None and _check_format(ck, f"{path}.text", text):
            return text, None
        return None, None
    if key == "json":
        listed = items(ck, f"{path}.json", d["json"], 1)
        if listed is None:
            return None, None
        before = ck.errors
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, entry in enumerate(listed):
            p = f"{path}.json[{i}]"
            kv = obj(ck, p, entry, {"key": True, "value": True})
            if kv is None or "key" not in kv or "value" not in kv:
                continue
            k = string(ck, f"{p}.key", kv["key"], 1, 100)
            v = string(ck, f"{p}.value", kv["value"], 1, 100)
            if k is None or v is None or not _check_format(ck, f"{p}.value", v):
                continue
            if k in seen:
                ck.error(f"{p}.key", f'duplicate key "{k}"')
                continue
            seen.add(k)
            pairs.append((k, v))
        return (None, tuple(pairs)) if ck.errors == before else (None, None)
    return None, None


def _check_format(ck: Checker, path: str, fmt: str) -> bool:
    """Unknown %OPERATORS% are rejected at load time (2.15), by the access-log module itself
    so the two can never disagree."""
    try:
        from gateway.observability.access_log import check_format
    except ImportError:
        return True
    problem = check_format(fmt)
    if problem:
        ck.error(path, problem)
        return False
    return True
