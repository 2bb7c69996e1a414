"""Load and validate a gateway configuration: files -> `model.GatewayConfig`.

Validation rules (spec = ../shared/spec/appmesh-gateway.md, cf = config-format.md).
Every error names the file, the object (by name in brackets, else by index) and
the field path; all errors of all files are reported together.

Files and structure
- .yaml/.yml/.json by extension; a directory = its config files in name order;
  multi-document YAML allowed; YAML/JSON syntax errors with line and column (cf).
- YAML is read with YAML 1.2 core scalars (`off`/`yes` stay strings, `010` is ten)
  and duplicate keys are errors.
- Unknown top-level keys, and unknown fields inside every object, are errors
  (spec 0).  Envelope keys meshName, meshOwner, clientToken, tags (and
  virtualGatewayName on routes) are ignored (spec 0, 1.2, 1.4).
- Exactly one `virtualGateway` with at least one listener; at most one `gateway:`
  block; duplicate gateway route / virtual service names are errors naming both
  files (cf "Loading a directory").
Types, enums, ranges (spec 0, 1)
- Types are strict: a boolean is not an integer, "8080" is not a number; integer
  = 32-bit, long = 64-bit; enums are case-sensitive; required fields; string
  lengths and list item counts from the tables (e.g. names 1..255, header names
  1..50, match values 1..255, hostnames 1..253, headers/queryParameters/metadata
  1..10 items, SANs 1..254, access-log text 1..1000, json key/value 1..100).
- Unions: exactly one member (route type, certificate, trust, connection pool,
  header match, hostname match, path match, access log, log format, backend kind).
Gateway routes
- priority 0..1000; port / target.port 1..65535 (spec 1.1).
- prefix and path mutually exclusive; path has exactly one of exact|regex;
  http/http2 match needs prefix|path|hostname (spec 2.2).
- prefix starts with "/"; /aws-appmesh and /aws-app-mesh are reserved (spec 2.2).
- regexes (path and header/metadata) must compile and use only RE2 syntax:
  no backreferences, lookaround, atomic groups, possessive quantifiers,
  conditionals; \\z, \\p and POSIX classes refused (spec 2.2, A6).
- hostname: exactly one of exact|suffix, lower-cased, suffix leading "." removed
  (spec 2.3); header/metadata names lower-cased; `match: {}` invalid; range
  start < end (spec 2.4); query match needs exact (spec 2.5); method enum (2.6).
- grpcRoute match needs serviceName|hostname; service names aws.appmesh and
  aws.app-mesh* reserved; only a hostname rewrite (spec 2.8).
- rewrite: at least one member; prefix xor path; defaultPrefix xor value; value
  starts and ends with "/"; rewrite.prefix with match.path is an error (2.10.2, A10).
- target names a declared virtual service, else an error naming the route (2.11).
- warnings: no listener of the route's protocol (dead route); match.port naming
  no listener, or a listener of another protocol (2.7); no match.port while
  several listeners serve the route's protocol (A11).
Virtual gateway
- listener ports unique (A11); portMapping.protocol http|http2|grpc (1.3).
- connectionPool: one key, equal to the listener protocol, values >= 1 (2.13).
- healthCheck ranges: interval 5000..300000, timeout 2000..60000, thresholds
  2..10; port = listener port (2.14).
- tls: mode STRICT|PERMISSIVE|DISABLED; certificate/trust acm and sds -> "not
  supported here: use file" (2.12, A21); referenced files must exist and be
  readable, except in DISABLED mode and for enforce: false client policies.
- access log: text 1..1000 / json key,value 1..100; unknown %OPERATORS% refused
  via gateway.observability.access_log.check_format (2.15).
Virtual services (cf "Virtual services")
- exactly one of endpoints|dns|weightedTargets; endpoints "host:port", IPv6
  bracketed; weightedTargets 1..10 items, weight 0..100, not all 0 (2.11, A19).
- connectionPool key = the virtual service protocol; healthCheck as 2.14;
  outlierDetection maxServerErrors >= 1, maxEjectionPercent 0..100 (1.6).
- Duration {value >= 0, unit s|ms}; retryPolicy maxRetries >= 0, at least one event
  list, httpRetryEvents limited to server-error|gateway-error|client-error|
  stream-error, grpcRetryEvents only for grpc services (1.5, 2.16).
Process settings (`gateway:`, ours)
- admin.address / listenAddress: IP literal or host name; admin.port 0..65535
  (0 = any free port); workers 1..1024; drain seconds 0..86400; limits:
  maxRequestHeaderBytes >= 1024, maxRequestHeaders >= 1, timeouts > 0 and <= 86400,
  http2KeepaliveIntervalSeconds 0 (off) .. 86400; trustedForwardedHops 0..64;
  rateLimits at most 100: requestsPerSecond > 0, burst >= 1 (integer), per route|client,
  route names a declared gateway route.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from gateway.config import model
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.fields import Checker
from gateway.config.native import NativeFormat
from gateway.config.routes import parse_gateway_route
from gateway.config.services import parse_virtual_service
from gateway.config.settings import check_rate_limit_routes, parse_settings
from gateway.config.source import Item, Resources, expand_paths, read_file
from gateway.config.virtual_gateway import parse_virtual_gateway

# First match wins; the native format is the fallback and must stay last.
FORMATS = (NativeFormat(),)

ROUTE_PROTOCOL = {"httpRoute": "http", "http2Route": "http2", "grpcRoute": "grpc"}


def load_config(paths: list[str] | str) -> tuple[model.GatewayConfig, list[ConfigIssue]]:
    """Read, merge and validate; returns the model and the warnings.

    Raises ConfigError carrying every error found (followed by the warnings)."""
    issues: list[ConfigIssue] = []
    given = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) \
        else [os.fspath(p) for p in paths]
    files = expand_paths(given, issues)
    resources = Resources.empty()
    complete = not issues   # every path given was found
    for source in files:
        ck = Checker(source, issues)
        documents = read_file(source, issues)
        if documents is None:
            complete = False
            continue
        for doc in documents:
            fmt = next(f for f in FORMATS if f.recognises(doc.data))
            fmt.collect(ck, doc.data, resources)

    config = _validate(resources, ", ".join(given) or "<no files>", issues, complete)
    errors = [i for i in issues if i.severity == "error"]
    warnings = [i for i in issues if i.severity != "error"]
    if errors or config is None:
        raise ConfigError(errors + warnings)
    return dataclasses.replace(config, sources=tuple(files)), warnings


def _validate(res: Resources, where: str, issues: list[ConfigIssue],
              complete: bool) -> model.GatewayConfig | None:
    """`complete` is False when a file could not be decoded: what seems missing may be in
    it, so absence is not reported on top of the decoding error."""
    checkers: dict[str, Checker] = {}

    def ck(item: Item) -> Checker:
        if item.source not in checkers:
            checkers[item.source] = Checker(item.source, issues)
        return checkers[item.source]

    vg = None
    if not res.virtual_gateways:
        if complete:
            issues.append(ConfigIssue(where, "virtualGateway",
                                      "required: no virtual gateway declared"))
    else:
        first = res.virtual_gateways[0]
        for extra in res.virtual_gateways[1:]:
            ck(extra).error(extra.path, f"a second virtual gateway (the first is in {first.source}); "
                                        "one configuration describes one gateway")
        vg = parse_virtual_gateway(ck(first), first.path, first.raw)

    settings = model.GatewaySettings()
    if res.settings:
        first = res.settings[0]
        for extra in res.settings[1:]:
            ck(extra).error(extra.path, f"a second gateway: block (the first is in {first.source})")
        settings = parse_settings(ck(first), first.path, first.raw)

    services: list[model.VirtualService] = []
    declared = _check_duplicates(res.virtual_services, "virtualServiceName", "virtual service", ck)
    for item in res.virtual_services:
        vs = parse_virtual_service(ck(item), item.path, item.raw)
        if vs is not None:
            services.append(vs)

    routes: list[tuple[model.GatewayRoute, Item]] = []
    route_names = _check_duplicates(res.gateway_routes, "gatewayRouteName", "gateway route", ck)
    for item in res.gateway_routes:
        route = parse_gateway_route(ck(item), item.path, item.raw)
        if route is not None:
            routes.append((route, item))

    for item in res.gateway_routes if complete else ():
        _check_target_declared(ck(item), item, declared)
    for route, item in routes:
        _check_route_listeners(ck(item), item.path, route, vg)
    if res.settings and complete:
        first = res.settings[0]
        check_rate_limit_routes(ck(first), first.path, first.raw, route_names)

    if vg is None or settings is None:
        return None
    return model.GatewayConfig(vg, tuple(r for r, _ in routes), tuple(services), settings)


def _check_duplicates(entries: list[Item], key: str, what: str, ck) -> set[str]:
    """Names declared (valid or not, so a broken entry is not also reported as missing)."""
    first_seen: dict[str, Item] = {}
    for item in entries:
        name = item.raw.get(key) if isinstance(item.raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_seen:
            ck(item).error(item.path, f'duplicate {what} name "{name}" '
                                      f"(first defined in {first_seen[name].source})")
        else:
            first_seen[name] = item
    return set(first_seen)


def _check_target_declared(ck: Checker, item: Item, declared: set[str]) -> None:
    """Checked on the raw route, so a route with other errors still gets this one reported."""
    spec = item.raw.get("spec") if isinstance(item.raw, dict) else None
    if not isinstance(spec, dict):
        return
    for route_type in ROUTE_PROTOCOL:
        node: Any = spec.get(route_type)
        for key in ("action", "target", "virtualService", "virtualServiceName"):
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str) and node and node not in declared:
            ck.error(f"{item.path}.spec.{route_type}.action.target.virtualService.virtualServiceName",
                     f'virtual service "{node}" is not declared in virtualServices')


def _check_route_listeners(ck: Checker, path: str, route: model.GatewayRoute,
                           vg: model.VirtualGateway | None) -> None:
    if vg is None:
        return
    spec_path = f"{path}.spec.{route.route_type}"
    protocol = ROUTE_PROTOCOL[route.route_type]
    serving = [l for l in vg.listeners if l.protocol == protocol]
    if not serving:
        ck.warn(spec_path, f"no {protocol} listener: this route is never used")
        return
    port = route.match.port
    if port is not None:
        listener = next((l for l in vg.listeners if l.port == port), None)
        if listener is None:
            ck.warn(f"{spec_path}.match.port", f"no listener on port {port}: this route is never used")
        elif listener.protocol != protocol:
            ck.warn(f"{spec_path}.match.port", f"listener {port} is {listener.protocol}, "
                                               f"not {protocol}: this route is never used")
    elif len(serving) > 1:
        ports = ", ".join(str(l.port) for l in serving)
        ck.warn(f"{spec_path}.match", f"no match.port: applies to every {protocol} listener "
                                      f"({ports}); App Mesh required a port match with several listeners")


def config_to_json(config: model.GatewayConfig) -> dict[str, Any]:
    """The effective configuration as plain JSON-able data (admin /config, validate --dump)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
