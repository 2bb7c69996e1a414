"""`gatewayRoutes[]` entries -> model.GatewayRoute (appmesh-gateway.md 1.1, 2.2-2.10)."""
from __future__ import annotations

from typing import Any

from gateway.config import model
from gateway.config.fields import (INT64, PORT, Checker, boolean, enum, integer, items, obj,
                                   one_of, string)
from gateway.config.regex_check import regex_problem
from gateway.config.shapes import parse_hostname_match
from gateway.config.virtual_gateway import ENVELOPE_KEYS

ROUTE_TYPES = ("httpRoute", "http2Route", "grpcRoute")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
RESERVED_PREFIXES = ("/aws-appmesh", "/aws-app-mesh")
ENABLED_DISABLED = ("ENABLED", "DISABLED")
VALUE_MATCH_KINDS = ("exact", "prefix", "suffix", "regex", "range")


def parse_gateway_route(ck: Checker, path: str, raw: Any) -> model.GatewayRoute | None:
    d = obj(ck, path, raw, {"gatewayRouteName": True, "spec": True},
            ignored=ENVELOPE_KEYS + ("virtualGatewayName",))
    if d is None:
        return None
    before = ck.errors
    name = string(ck, f"{path}.gatewayRouteName", d["gatewayRouteName"], 1, 255) \
        if "gatewayRouteName" in d else None
    if "spec" not in d:
        return None
    spec_path = f"{path}.spec"
    spec = obj(ck, spec_path, d["spec"], {"priority": False, **{t: False for t in ROUTE_TYPES}})
    if spec is None:
        return None
    priority = integer(ck, f"{spec_path}.priority", spec["priority"], 0, 1000) \
        if "priority" in spec else None
    route_type = one_of(ck, spec_path, spec, ROUTE_TYPES)
    parsed = None
    if route_type == "grpcRoute":
        parsed = _parse_route(ck, f"{spec_path}.grpcRoute", spec[route_type],
                              _parse_grpc_match, _parse_grpc_rewrite)
    elif route_type is not None:
        parsed = _parse_route(ck, f"{spec_path}.{route_type}", spec[route_type],
                              _parse_http_match, _parse_http_rewrite)
    if ck.errors > before or name is None or route_type is None or parsed is None:
        return None
    match, target, rewrite = parsed
    return model.GatewayRoute(name, route_type, match, target, rewrite=rewrite,
                              priority=priority, source=ck.source)


# ------------------------------------------------------------------------ HTTP


def _parse_route(ck: Checker, path: str, raw: Any, parse_match, parse_rewrite):
    """match + action of an http/http2/grpc route; the kind supplies its match and rewrite parsers."""
    d = obj(ck, path, raw, {"match": True, "action": True})
    if d is None:
        return None
    before = ck.errors
    match = parse_match(ck, f"{path}.match", d["match"]) if "match" in d else None
    target = rewrite = None
    if "action" in d:
        a = obj(ck, f"{path}.action", d["action"], {"target": True, "rewrite": False})
        if a is not None:
            target = _parse_target(ck, f"{path}.action.target", a["target"]) if "target" in a else None
            if "rewrite" in a:
                rewrite = parse_rewrite(ck, f"{path}.action.rewrite", a["rewrite"], match)
    if ck.errors > before or match is None or target is None:
        return None
    return match, target, rewrite


def _parse_http_match(ck: Checker, path: str, raw: Any) -> model.HttpRouteMatch | None:
    d = obj(ck, path, raw, {"prefix": False, "path": False, "hostname": False, "headers": False,
                            "queryParameters": False, "method": False, "port": False})
    if d is None:
        return None
    before = ck.errors
    prefix = None
    if "prefix" in d:
        prefix = string(ck, f"{path}.prefix", d["prefix"])
        if prefix is not None:
            _check_prefix(ck, f"{path}.prefix", prefix)
    path_match = _parse_path_match(ck, f"{path}.path", d["path"]) if "path" in d else None
    hostname = parse_hostname_match(ck, f"{path}.hostname", d["hostname"]) if "hostname" in d else None
    if "prefix" in d and "path" in d:
        ck.error(path, "prefix and path are mutually exclusive")
    elif not any(k in d for k in ("prefix", "path", "hostname")):
        ck.error(path, "must contain at least one of prefix, path, hostname "
                       '(use prefix "/" to match every path)')
    headers = _parse_conditions(ck, f"{path}.headers", d["headers"]) if "headers" in d else ()
    query = _parse_query(ck, f"{path}.queryParameters", d["queryParameters"]) \
        if "queryParameters" in d else ()
    method = enum(ck, f"{path}.method", d["method"], METHODS) if "method" in d else None
    port = integer(ck, f"{path}.port", d["port"], *PORT) if "port" in d else None
    if ck.errors > before:
        return None
    return model.HttpRouteMatch(prefix=prefix, path=path_match, hostname=hostname,
                                headers=headers, query_parameters=query, method=method, port=port)


def _check_prefix(ck: Checker, path: str, prefix: str) -> None:
    if not prefix.startswith("/"):
        ck.error(path, 'must start with "/"')
    elif prefix.startswith(RESERVED_PREFIXES):
        reserved = next(r for r in RESERVED_PREFIXES if prefix.startswith(r))
        ck.error(path, f'prefixes starting with "{reserved}" are reserved by App Mesh')


def _parse_path_match(ck: Checker, path: str, raw: Any) -> model.PathMatch | None:
    d = obj(ck, path, raw, {"exact": False, "regex": False})
    if d is None:
        return None
    key = one_of(ck, path, d, ("exact", "regex"))
    if key is None:
        return None
    value = string(ck, f"{path}.{key}", d[key], 1, 255)
    if value is None:
        return None
    if key == "exact":
        if not value.startswith("/"):
            ck.warn(f"{path}.exact", 'never matches: request paths start with "/"')
        return model.PathMatch(exact=value)
    problem = regex_problem(value)
    if problem:
        ck.error(f"{path}.regex", problem)
        return None
    return model.PathMatch(regex=value)


def _parse_query(ck: Checker, path: str, raw: Any) -> tuple[model.QueryCondition, ...]:
    listed = items(ck, path, raw, 1, 10)
    out: list[model.QueryCondition] = []
    for i, entry in enumerate(listed or []):
        p = f"{path}[{i}]"
        d = obj(ck, p, entry, {"name": True, "match": False})
        if d is None:
            continue
        name = string(ck, f"{p}.name", d["name"], 1) if "name" in d else None
        exact = None
        if "match" in d:
            m = obj(ck, f"{p}.match", d["match"], {"exact": False})
            if m is not None:
                if "exact" not in m:
                    ck.error(f"{p}.match", "must contain exact (omit match to test presence only)")
                else:
                    exact = string(ck, f"{p}.match.exact", m["exact"])
        if name is not None:
            out.append(model.QueryCondition(name, exact))
    return tuple(out)


def _parse_conditions(ck: Checker, path: str, raw: Any) -> tuple[model.HeaderCondition, ...]:
    """headers[] (HTTP) and metadata[] (gRPC): same shape and semantics (2.4)."""
    listed = items(ck, path, raw, 1, 10)
    out: list[model.HeaderCondition] = []
    for i, entry in enumerate(listed or []):
        p = f"{path}[{i}]"
        d = obj(ck, p, entry, {"name": True, "match": False, "invert": False})
        if d is None:
            continue
        before = ck.errors
        name = string(ck, f"{p}.name", d["name"], 1, 50) if "name" in d else None
        invert = boolean(ck, f"{p}.invert", d["invert"]) if "invert" in d else False
        match = _parse_value_match(ck, f"{p}.match", d["match"]) if "match" in d else None
        if ck.errors == before and name is not None:
            out.append(model.HeaderCondition(name.lower(), match, bool(invert)))
    return tuple(out)


def _parse_value_match(ck: Checker, path: str, raw: Any) -> model.ValueMatch | None:
    d = obj(ck, path, raw, {k: False for k in VALUE_MATCH_KINDS})
    if d is None:
        return None
    kind = one_of(ck, path, d, VALUE_MATCH_KINDS)
    if kind is None:
        return None
    if kind == "range":
        r = obj(ck, f"{path}.range", d["range"], {"start": True, "end": True})
        if r is None or "start" not in r or "end" not in r:
            return None
        start = integer(ck, f"{path}.range.start", r["start"], *INT64)
        end = integer(ck, f"{path}.range.end", r["end"], *INT64)
        if start is None or end is None:
            return None
        if start >= end:
            ck.error(f"{path}.range", f"start must be less than end (got start {start}, end {end})")
            return None
        return model.ValueMatch("range", model.MatchRange(start, end))
    value = string(ck, f"{path}.{kind}", d[kind], 1, 255)
    if value is None:
        return None
    if kind == "regex":
        problem = regex_problem(value)
        if problem:
            ck.error(f"{path}.regex", problem)
            return None
    return model.ValueMatch(kind, value)


def _parse_target(ck: Checker, path: str, raw: Any) -> model.RouteTarget | None:
    d = obj(ck, path, raw, {"virtualService": True, "port": False})
    if d is None:
        return None
    before = ck.errors
    port = integer(ck, f"{path}.port", d["port"], *PORT) if "port" in d else None
    name = None
    if "virtualService" in d:
        vs = obj(ck, f"{path}.virtualService", d["virtualService"], {"virtualServiceName": True})
        if vs is not None and "virtualServiceName" in vs:
            name = string(ck, f"{path}.virtualService.virtualServiceName",
                          vs["virtualServiceName"], 1, 255)
    if ck.errors > before or name is None:
        return None
    return model.RouteTarget(name, port)


def _parse_hostname_rewrite(ck: Checker, path: str, raw: Any) -> str | None:
    d = obj(ck, path, raw, {"defaultTargetHostname": False})
    if d is None or "defaultTargetHostname" not in d:
        return None
    return enum(ck, f"{path}.defaultTargetHostname", d["defaultTargetHostname"], ENABLED_DISABLED)


def _parse_http_rewrite(ck: Checker, path: str, raw: Any,
                        match: model.HttpRouteMatch | None) -> model.RouteRewrite | None:
    """HttpGatewayRouteRewrite with the validity rules of 2.10.2 and A10."""
    d = obj(ck, path, raw, {"hostname": False, "prefix": False, "path": False})
    if d is None:
        return None
    before = ck.errors
    if not raw:   # (unknown members were reported by obj)
        ck.error(path, "must contain at least one of hostname, prefix, path")
        return None
    if "prefix" in d and "path" in d:
        ck.error(path, "prefix and path are mutually exclusive")
    host = _parse_hostname_rewrite(ck, f"{path}.hostname", d["hostname"]) if "hostname" in d else None
    prefix = None
    if "prefix" in d:
        prefix = _parse_prefix_rewrite(ck, f"{path}.prefix", d["prefix"])
        if match is not None and match.path is not None:
            ck.error(f"{path}.prefix", "not allowed with match.path: there is no matched prefix "
                                       "to replace (use rewrite.path)")
    path_exact = None
    if "path" in d:
        p = obj(ck, f"{path}.path", d["path"], {"exact": True})
        if p is not None and "exact" in p:
            path_exact = string(ck, f"{path}.path.exact", p["exact"], 1, 255)
            if path_exact is not None and not path_exact.startswith("/"):
                ck.error(f"{path}.path.exact", 'must start with "/"')
    if ck.errors > before:
        return None
    return model.RouteRewrite(default_target_hostname=host, prefix=prefix, path_exact=path_exact)


def _parse_prefix_rewrite(ck: Checker, path: str, raw: Any) -> model.PrefixRewrite | None:
    d = obj(ck, path, raw, {"defaultPrefix": False, "value": False})
    if d is None:
        return None
    if "defaultPrefix" in d and "value" in d:
        ck.error(path, "defaultPrefix and value are mutually exclusive")
        return None
    if "defaultPrefix" in d:
        mode = enum(ck, f"{path}.defaultPrefix", d["defaultPrefix"], ENABLED_DISABLED)
        return model.PrefixRewrite(default_prefix=mode) if mode else None
    if "value" in d:
        value = string(ck, f"{path}.value", d["value"], 1, 255)
        if value is None:
            return None
        if not (value.startswith("/") and value.endswith("/")):
            ck.error(f"{path}.value", 'must start and end with "/"')
            return None
        return model.PrefixRewrite(value=value)
    return model.PrefixRewrite()


# ------------------------------------------------------------------------ gRPC


def _parse_grpc_rewrite(ck: Checker, path: str, raw: Any, match) -> model.RouteRewrite | None:
    rw = obj(ck, path, raw, {"hostname": False})
    if rw is None:
        return None
    if not raw:   # (unknown members were reported by obj)
        ck.error(path, "must contain hostname")
    elif "hostname" in rw:
        host = _parse_hostname_rewrite(ck, f"{path}.hostname", rw["hostname"])
        return model.RouteRewrite(default_target_hostname=host)
    return None


def _parse_grpc_match(ck: Checker, path: str, raw: Any) -> model.GrpcRouteMatch | None:
    d = obj(ck, path, raw, {"serviceName": False, "hostname": False, "metadata": False,
                            "port": False})
    if d is None:
        return None
    before = ck.errors
    service = None
    if "serviceName" in d:
        service = string(ck, f"{path}.serviceName", d["serviceName"], 1)
        if service is not None and (service == "aws.appmesh" or service.startswith("aws.app-mesh")):
            ck.error(f"{path}.serviceName", f'service name "{service}" is reserved by App Mesh')
    hostname = parse_hostname_match(ck, f"{path}.hostname", d["hostname"]) if "hostname" in d else None
    if "serviceName" not in d and "hostname" not in d:
        ck.error(path, "must contain at least one of serviceName, hostname")
    metadata = _parse_conditions(ck, f"{path}.metadata", d["metadata"]) if "metadata" in d else ()
    port = integer(ck, f"{path}.port", d["port"], *PORT) if "port" in d else None
    if ck.errors > before:
        return None
    return model.GrpcRouteMatch(service_name=service, hostname=hostname, metadata=metadata,
                                port=port)
