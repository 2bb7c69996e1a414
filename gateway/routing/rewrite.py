"""Host and path rewrites of a matched route (appmesh-gateway.md 2.10, A9, A10).

Each route's rewrite is decided once, at compile time, into a function of the
path alone, plus a flag saying whether that function can change anything.
"""
from __future__ import annotations

from collections.abc import Callable

from gateway.config.model import GatewayRoute, HttpRouteMatch
from gateway.routing.normalize import remove_dot_segments


def _keep(path: str) -> str:
    return path


def host_rewrite(route: GatewayRoute) -> str | None:
    """Upstream Host: the target virtual service name, or None to keep the client's (2.10.1)."""
    rw = route.rewrite
    if rw is not None and rw.default_target_hostname == "DISABLED":
        return None
    return route.target.virtual_service_name


def effective_prefix(match: HttpRouteMatch) -> str | None:
    """The prefix a prefix rewrite replaces; a hostname-only route acts as "/" (A10)."""
    if match.path is not None:
        return None
    return match.prefix or "/"


def path_rewriter(route: GatewayRoute) -> tuple[Callable[[str], str], bool]:
    """(rewrite_path, can_change): rewrite_path maps the matched, normalised path
    (no query) to the upstream path (2.10.2)."""
    match = route.match
    if route.route_type == "grpcRoute" or not isinstance(match, HttpRouteMatch):
        return _keep, False                   # gRPC: only the host is rewritten (2.8)
    rw = route.rewrite
    if rw is not None and rw.path_exact is not None:
        new_path = rw.path_exact
        return (lambda path: new_path), True  # A10: any match kind
    prefix = effective_prefix(match)
    if prefix is None:
        return _keep, False                   # exact/regex match without path rewrite
    p = rw.prefix if rw is not None else None
    if p is not None and p.value is not None:
        replacement = p.value
    elif p is not None and p.default_prefix == "DISABLED":
        return _keep, False
    else:
        replacement = "/"
    if replacement == "/" and prefix == "/":
        return _keep, False                   # "/" + path[1:] is the path itself
    return _prefix_replacer(prefix, replacement), True


def _prefix_replacer(prefix: str, replacement: str) -> Callable[[str], str]:
    cut = len(prefix)

    def rewrite(path: str) -> str:
        rest = path[cut:]
        if rest[:1] == "/":
            rest = rest[1:]                   # A9: never double the slash
        elif rest[:1] == ".":
            # A plain-string prefix can end inside a segment: "/static" on
            # "/static.." leaves "..", which must not become a dot segment the
            # backend resolves after routing (2.1's reason for normalising).
            out = replacement + rest
            return remove_dot_segments(out) if "/." in out else out
        return replacement + rest

    return rewrite


def describe_rewrite(route: GatewayRoute) -> str:
    """One-line summary for the route tools."""
    host = host_rewrite(route)
    parts = [f"host -> {host}" if host is not None else "host kept"]
    match = route.match
    if route.route_type == "grpcRoute" or not isinstance(match, HttpRouteMatch):
        parts.append("path kept (gRPC)")
        return ", ".join(parts)
    rw = route.rewrite
    if rw is not None and rw.path_exact is not None:
        parts.append(f"path -> {rw.path_exact}")
        return ", ".join(parts)
    prefix = effective_prefix(match)
    p = rw.prefix if rw is not None else None
    if prefix is None:
        parts.append("path kept")
    elif p is not None and p.value is not None:
        parts.append(f"prefix {prefix} -> {p.value}")
    elif (p is not None and p.default_prefix == "DISABLED") or prefix == "/":
        parts.append("path kept")
    else:
        parts.append(f"prefix {prefix} -> /")
    return ", ".join(parts)
