"""Route tools behind the CLI: list the compiled tables, explain one request, lint.

Everything here goes through the same compiled routers the gateway serves
with (table.py), so what the tools print is what the data plane does.
"""
from __future__ import annotations

from gateway.config.errors import ConfigIssue
from gateway.config.model import (GatewayConfig, GatewayRoute, GrpcRouteMatch, HeaderCondition,
                                  HttpRouteMatch)
from gateway.routing.matchers import RequestView, describe_header_condition, host_key
from gateway.routing.normalize import normalize_path, split_target
from gateway.routing.rewrite import describe_rewrite
from gateway.routing.table import CompiledRoute, ListenerRouter, RouteGroup, compile_routers

# ------------------------------------------------------------------ descriptions


def describe_match(route: GatewayRoute, with_hostname: bool = False) -> str:
    m = route.match
    parts: list[str] = []
    if with_hostname and m.hostname is not None:
        h = m.hostname
        parts.append(f"hostname exact {h.exact}" if h.exact is not None
                     else f"hostname suffix {h.suffix}")
    if isinstance(m, GrpcRouteMatch):
        if m.service_name is not None:
            parts.append(f"service {m.service_name}"
                         + (f" method {m.method_name}" if m.method_name else ""))
        elif not parts:
            parts.append("any call")
        parts += [describe_header_condition(c, "metadata") for c in m.metadata]
    else:
        if m.path is not None and m.path.exact is not None:
            parts.append(f"path.exact {m.path.exact}")
        elif m.path is not None:
            parts.append(f"path.regex {m.path.regex}")
        elif m.prefix is not None:
            parts.append(f"prefix {m.prefix}")
        elif not parts:
            parts.append("any path")
        if m.method is not None:
            parts.append(f"method {m.method}")
        parts += [describe_header_condition(c) for c in m.headers]
        parts += [f"query {q.name} present" if q.exact is None
                  else f'query {q.name} exact "{q.exact}"' for q in m.query_parameters]
    if m.port is not None:
        parts.append(f"port {m.port}")
    return ", ".join(parts)


def describe_target(route: GatewayRoute) -> str:
    t = route.target
    return t.virtual_service_name + (f" port {t.port}" if t.port is not None else "")


def _key_text(r: CompiledRoute) -> str:
    p, kind, neg_len, neg_conds, _ = r.sort_key
    return f"({p}, {kind}, {-neg_len}, {-neg_conds})"


def _group_title(group: RouteGroup) -> str:
    if group.kind == "exact":
        return f'host group: hostname exact "{group.value}"'
    if group.kind == "suffix":
        return f'host group: hostname suffix "{group.value}" (hosts *.{group.value})'
    return "host group: default (routes without hostname)"


def _table(rows: list[list[str]], indent: str) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in rows]


def format_routes(config: GatewayConfig) -> str:
    """Every listener's host groups and their routes in evaluation order (2.9)."""
    lines: list[str] = []
    for port, router in compile_routers(config).items():
        lines.append(f"listener {port} ({router.protocol}, serves {router.route_type}): "
                     f"{router.route_count()} route(s)")
        groups = router.groups
        if not groups:
            lines.append("  (no routes: every request gets 404)")
        for group in groups:
            lines.append("  " + _group_title(group))
            rows = [["#", "sort key", "route", "match", "target", "rewrite"]]
            for i, r in enumerate(group.routes, 1):
                rows.append([str(i), _key_text(r), r.name, describe_match(r.spec),
                             describe_target(r.spec), describe_rewrite(r.spec)])
            lines += _table(rows, "    ")
        lines.append("")
    lines.append("sort key = (priority or 1001, path kind 0 exact/service 1 prefix 2 regex "
                 "3 none, literal length, condition count), then name; first match wins.")
    return "\n".join(lines)


# ------------------------------------------------------------------ explain


def route_failures(route: CompiledRoute, method: str, path: str, view: RequestView) -> list[str]:
    """Every condition of `route` the request fails (empty = the route matches)."""
    out: list[str] = []
    m = route.spec.match
    if not route.path_matches(path):
        if isinstance(m, GrpcRouteMatch):
            out.append(f'path "{path}" is not a method of service "{m.service_name}"'
                       if m.method_name is None else f'path "{path}" is not "{route.index_key}"')
        elif route.index_kind == "exact":
            out.append(f'path: expected exact "{route.index_key}", got "{path}"')
        elif route.index_kind == "prefix":
            out.append(f'path: "{path}" does not start with prefix "{route.index_key}"')
        else:
            regex = m.path.regex  # type: ignore[union-attr]
            out.append(f'path: "{path}" does not fully match regex "{regex}"')
    if route.method is not None and route.method != method:
        out.append(f'method: expected "{route.method}", got "{method}"')
    for c in route.conds:
        why = c.why_not(view)
        if why:
            out.append(why)
    return out


def _choose_listener(routers: dict[int, ListenerRouter], port: int | None,
                     authority: str | None) -> tuple[ListenerRouter | None, str]:
    if port is not None:
        if port in routers:
            return routers[port], "chosen with --port"
        return None, f"no listener on port {port} (listeners: {', '.join(map(str, routers))})"
    if len(routers) == 1:
        return next(iter(routers.values())), "the only listener"
    if authority and authority.rpartition(":")[2].isdigit():
        url_port = int(authority.rpartition(":")[2])
        if url_port in routers:
            return routers[url_port], "the port in the URL"
    if not routers:
        return None, "the gateway has no listeners"
    first = next(iter(routers.values()))
    return first, "the first listener (use --port to pick another)"


def _group_reason(router: ListenerRouter, group: RouteGroup | None, host: str | None) -> str:
    h = host_key(host)
    shown = f'"{h}"' if h else "(no host)"
    if group is None:
        return (f"no group: host {shown} matches no hostname group and there are no "
                f"routes without hostname")
    if group.kind == "exact":
        return f"{_group_title(group)}: host {shown} equals it (exact groups come first)"
    if group.kind == "suffix":
        return f"{_group_title(group)}: longest hostname suffix matching host {shown}"
    if router.exact_groups or router.suffix_groups:
        return f"{_group_title(group)}: host {shown} matches no hostname exact/suffix group"
    return f"{_group_title(group)}: no route on this listener has a hostname"


GRPC_SCHEMES = {"grpc": "http", "grpcs": "https"}


def _grpc_call_name(path: str) -> str | None:
    """ "/pkg.Service/Method" -> "pkg.Service/Method"; None when the path is not a gRPC method."""
    parts = path.split("/")
    if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:
        return f"{parts[1]}/{parts[2]}"
    return None


def explain(config: GatewayConfig, method: str, url: str, headers: list[tuple[str, str]],
            port: int | None = None) -> tuple[str, bool]:
    """Why a request goes where it goes: (report text, whether a route matched).

    A gRPC call is asked for with the method GRPC or a grpc:// (grpcs://) URL; it
    travels as the POST with content-type application/grpc that a client sends,
    headers are its metadata, and a miss is reported as the gRPC status a client
    gets.
    """
    lines: list[str] = []
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    grpc = method.upper() == "GRPC" or scheme in GRPC_SCHEMES
    if scheme in GRPC_SCHEMES:
        url = GRPC_SCHEMES[scheme] + url[len(scheme):]
    if grpc:
        method = "POST"
    try:
        authority, raw_path, query = split_target(url)
    except ValueError as exc:
        return f"error: {exc}", False
    wire = [(n.strip().lower().encode("latin-1"), v.strip().encode("utf-8")) for n, v in headers]
    if grpc and not any(n == b"content-type" for n, _ in wire):
        wire.append((b"content-type", b"application/grpc"))
    grpc = grpc or any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in wire)
    host = authority
    if host is None:
        for n, v in wire:
            if n in (b"host", b":authority"):
                host = v.decode("utf-8")
                break
    try:
        path = normalize_path(raw_path)
    except ValueError as exc:
        return f"error: {exc} (the gateway answers 400)", False
    lines.append(f"request: {method} {url}")
    note = f"   (normalised from {raw_path})" if path != raw_path else ""
    lines.append(f"  path: {path}{note}")
    if grpc:
        call = _grpc_call_name(path)
        lines.append(f"  gRPC call: service {call.replace('/', ' method ')}" if call else
                     "  gRPC call: the path is not /package.Service/Method, so no grpcRoute "
                     "serviceName can match it")
    lines.append(f"  query: {query if query else '(none)'}")
    lines.append(f"  host: {host if host is not None else '(none)'}"
                 + (f" (matched as {host_key(host)})" if host and host_key(host) != host else ""))
    routers = compile_routers(config)
    router, why_listener = _choose_listener(routers, port, authority)
    if router is None:
        lines.append(f"listener: {why_listener}")
        return "\n".join(lines), False
    lines.append(f"listener: {router.port} ({router.protocol}, serves {router.route_type} "
                 f"routes; {why_listener})")
    if grpc and router.protocol != "grpc":
        lines.append(f"  (a gRPC call on a {router.protocol} listener is matched by its "
                     f"{router.route_type}s like any request)")
    miss = ("no route matched -> HTTP 200, grpc-status 12 (UNIMPLEMENTED)" if grpc
            else "no route matched -> 404")
    group = router.group_for(host)
    lines.append(_group_reason(router, group, host))
    if group is None:
        lines.append(f"result: {miss}")
        return "\n".join(lines), False
    hidden = sum(len(g.routes) for g in router.groups if g is not group)
    if hidden:
        lines.append(f"  ({hidden} route(s) in other host groups are not consulted; "
                     f"there is no fallback between groups)")
    view = RequestView(method, path, query, host, wire)
    winner: CompiledRoute | None = None
    lines.append("routes in evaluation order:")
    for i, r in enumerate(group.routes, 1):
        failures = route_failures(r, method, path, view)
        head = f"  {i}. {r.name} {_key_text(r)}"
        if failures:
            lines.append(f"{head}: no: " + "; ".join(failures))
            continue
        lines.append(f"{head}: MATCH")
        winner = r
        rest = len(group.routes) - i
        if rest:
            lines.append(f"  ({rest} later route(s) not evaluated: first match wins)")
        break
    if not group.routes:
        lines.append("  (none)")
    # The narrative above must agree with the data plane; say so loudly if not.
    selected = router.select(method, path, query, host, wire)
    if selected is not winner:
        lines.append(f"internal error: the router selects "
                     f"{selected.name if selected else 'nothing'}; please report this")
    if winner is None:
        lines.append(f"result: {miss}")
        return "\n".join(lines), False
    upstream_host = winner.host_rewrite if winner.host_rewrite is not None else (host or "")
    upstream_path = winner.rewrite_path(path) if winner.path_rewritten else path
    lines.append(f'result: route "{winner.name}"')
    lines.append(f"upstream: virtual service {winner.virtual_service}"
                 + (f" port {winner.target_port}" if winner.target_port is not None else ""))
    lines.append(f"  {':authority' if grpc else 'Host'}: {upstream_host}"
                 + ("   (client's Host kept: defaultTargetHostname DISABLED)"
                    if winner.host_rewrite is None else ""))
    lines.append(f"  path: {upstream_path}{'?' + query if query else ''}"
                 + (f"   ({describe_rewrite(winner.spec).split(', ', 1)[1]})"
                    if winner.path_rewritten else ""))
    return "\n".join(lines), True


# ------------------------------------------------------------------ lint


def _cond_implied(cond: HeaderCondition, later: tuple[HeaderCondition, ...]) -> bool:
    """Does every request meeting all of `later` also meet `cond`?"""
    if cond in later:
        return True
    if cond.match is None and not cond.invert:
        # Every test on a name except an inverted presence test needs the header
        # present (2.4: absent fails value tests even when inverted).
        return any(c.name == cond.name and not (c.match is None and c.invert) for c in later)
    return False


def _path_covers(earlier: CompiledRoute, later: CompiledRoute) -> bool:
    """Does every path that `later` accepts also satisfy `earlier`'s path condition?"""
    ek, lk = earlier.index_kind, later.index_kind
    if ek == "other" and earlier.path_test is None:
        return True                                   # no path condition at all
    if ek == "prefix":
        if earlier.index_key == "/" and isinstance(earlier.spec.match, HttpRouteMatch):
            return True                               # every normalised path starts with "/"
        if lk in ("prefix", "exact"):
            return later.index_key.startswith(earlier.index_key)  # type: ignore[union-attr]
        return False
    if ek == "exact":
        return lk == "exact" and later.index_key == earlier.index_key
    # earlier is a regex route
    if lk == "exact":
        return earlier.path_test(later.index_key) is not None  # type: ignore[misc,arg-type]
    return (lk == "other" and later.path_test is not None
            and earlier.spec.match.path == later.spec.match.path)  # type: ignore[union-attr]


def _shadows(earlier: CompiledRoute, later: CompiledRoute) -> bool:
    """Conservative: True only when `earlier` matches every request `later` matches."""
    if not _path_covers(earlier, later):
        return False
    if earlier.method is not None and earlier.method != later.method:
        return False
    em, lm = earlier.spec.match, later.spec.match
    if isinstance(em, GrpcRouteMatch):
        assert isinstance(lm, GrpcRouteMatch)
        return all(_cond_implied(c, lm.metadata) for c in em.metadata)
    assert isinstance(lm, HttpRouteMatch)
    if not all(_cond_implied(c, lm.headers) for c in em.headers):
        return False
    later_query = {q.name: q for q in lm.query_parameters}
    for q in em.query_parameters:
        other = later_query.get(q.name)
        if other is None or (q.exact is not None and q.exact != other.exact):
            return False
    return True


def _priority_text(route: GatewayRoute) -> str:
    return f"priority {route.priority}" if route.priority is not None else "no priority"


def _group_phrase(kind: str, value: str) -> str:
    return f'host "{value}"' if kind == "exact" else f'hosts "*.{value}"'


def _hidden_by(router: ListenerRouter, group: RouteGroup) -> list[tuple[str, str, RouteGroup]]:
    """(kind, value, hiding group) for each host set this group never sees (2.9.2)."""
    out = []
    for h, g in sorted(router.exact_groups.items()):
        if group.kind == "default":
            out.append(("exact", h, g))
        elif group.kind == "suffix" and h.endswith("." + group.value) and \
                len(h) > len(group.value) + 1:  # type: ignore[operator]
            out.append(("exact", h, g))
    for s, g in sorted(router.suffix_groups.items()):
        if group.kind == "default" or (group.kind == "suffix" and s != group.value
                                       and s.endswith("." + group.value)):  # type: ignore[operator]
            out.append(("suffix", s, g))
    return out


def lint(config: GatewayConfig) -> list[ConfigIssue]:
    """Warnings for routes that some host or path can never reach (2.9.1, 2.9.2)."""
    routers = compile_routers(config)
    issues: list[ConfigIssue] = []
    seen: set[tuple[str, str]] = set()

    def warn(route: GatewayRoute, message: str) -> None:
        if (route.name, message) not in seen:
            seen.add((route.name, message))
            issues.append(ConfigIssue(route.source, f"gatewayRoutes[{route.name}]", message,
                                      "warning"))

    # Which listeners a route is on, to tell "never" from "never on this listener".
    listeners_of: dict[str, list[int]] = {}
    for port, router in routers.items():
        for group in router.groups:
            for r in group.routes:
                listeners_of.setdefault(r.name, []).append(port)

    shadowed: dict[str, dict[int, tuple[CompiledRoute, CompiledRoute]]] = {}
    for port, router in routers.items():
        for group in router.groups:
            for kind, value, hiding in _hidden_by(router, group):
                example = ", ".join(f'"{r.name}"' for r in hiding.routes[:2])
                what = ("host-less routes" if group.kind == "default"
                        else f'routes with hostname suffix "{group.value}"')
                for r in group.routes:
                    warn(r.spec, f'route "{r.name}" is never used for '
                                 f'{_group_phrase(kind, value)}: routes with hostname {kind} '
                                 f'"{value}" (e.g. {example}) form their own group, and {what} '
                                 f"are not consulted for it")
            routes = group.routes
            for i, later in enumerate(routes):
                for earlier in routes[:i]:
                    if _shadows(earlier, later):
                        shadowed.setdefault(later.name, {})[port] = (earlier, later)
                        break

    for name, by_port in shadowed.items():
        everywhere = len(by_port) == len(listeners_of[name])
        for port, (earlier, later) in sorted(by_port.items()):
            where = "" if everywhere else f" on listener {port}"
            warn(later.spec, f'route "{name}" can never match{where}: route "{earlier.name}" '
                             f"({_priority_text(earlier.spec)}) comes first and matches every "
                             f"request it would")
            if everywhere:
                break
    return issues


__all__ = ["describe_match", "describe_target", "explain", "format_routes", "lint",
           "route_failures"]
