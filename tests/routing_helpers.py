"""Builders for routing tests: GatewayConfig objects straight from the model."""
from __future__ import annotations

from gateway.config.model import (GatewayConfig, GatewayRoute, GrpcRouteMatch, HeaderCondition,
                                  HostnameMatch, HttpRouteMatch, Listener, MatchRange, PathMatch,
                                  PrefixRewrite, QueryCondition, RouteRewrite, RouteTarget,
                                  ValueMatch, VirtualGateway)
from gateway.routing import compile_routers


def header(name: str, kind: str | None = None, value: object = None, invert: bool = False,
           ) -> HeaderCondition:
    """header("x-v", "exact", "v2"); header("x-beta") is a presence test;
    header("n", "range", (100, 150))."""
    if kind is None:
        return HeaderCondition(name.lower(), None, invert)
    if kind == "range":
        value = MatchRange(*value)  # type: ignore[misc]
    return HeaderCondition(name.lower(), ValueMatch(kind, value), invert)  # type: ignore[arg-type]


def query(name: str, exact: str | None = None) -> QueryCondition:
    return QueryCondition(name, exact)


def host_exact(h: str) -> HostnameMatch:
    return HostnameMatch(exact=h.lower())


def host_suffix(s: str) -> HostnameMatch:
    s = s.lower()
    return HostnameMatch(suffix=s[1:] if s.startswith(".") else s)


def http_route(name: str, *, prefix: str | None = None, exact: str | None = None,
               regex: str | None = None, hostname: HostnameMatch | None = None,
               headers: tuple = (), query_parameters: tuple = (), method: str | None = None,
               port: int | None = None, priority: int | None = None, target: str = "svc",
               target_port: int | None = None, rewrite: RouteRewrite | None = None,
               route_type: str = "httpRoute", source: str = "test.yaml") -> GatewayRoute:
    path = PathMatch(exact=exact, regex=regex) if exact is not None or regex is not None else None
    match = HttpRouteMatch(prefix=prefix, path=path, hostname=hostname, headers=tuple(headers),
                           query_parameters=tuple(query_parameters), method=method, port=port)
    return GatewayRoute(name=name, route_type=route_type, match=match,
                        target=RouteTarget(target, target_port), rewrite=rewrite,
                        priority=priority, source=source)


def grpc_route(name: str, *, service: str | None = None, hostname: HostnameMatch | None = None,
               metadata: tuple = (), port: int | None = None, priority: int | None = None,
               target: str = "grpc-svc", host_rewrite: str | None = None) -> GatewayRoute:
    match = GrpcRouteMatch(service_name=service, hostname=hostname, metadata=tuple(metadata),
                           port=port)
    rewrite = RouteRewrite(default_target_hostname=host_rewrite) if host_rewrite else None
    return GatewayRoute(name=name, route_type="grpcRoute", match=match,
                        target=RouteTarget(target), rewrite=rewrite, priority=priority,
                        source="test.yaml")


def rewrite(*, host: str | None = None, default_prefix: str | None = None,
            value: str | None = None, path: str | None = None) -> RouteRewrite:
    prefix = (PrefixRewrite(default_prefix=default_prefix, value=value)
              if default_prefix is not None or value is not None else None)
    return RouteRewrite(default_target_hostname=host, prefix=prefix, path_exact=path)


def config(*routes: GatewayRoute, listeners: tuple[tuple[int, str], ...] = ((8080, "http"),)
           ) -> GatewayConfig:
    vg = VirtualGateway("vg", tuple(Listener(port, proto) for port, proto in listeners))
    return GatewayConfig(virtual_gateway=vg, gateway_routes=tuple(routes), virtual_services=())


def router(*routes: GatewayRoute, port: int = 8080, protocol: str = "http"):
    return compile_routers(config(*routes, listeners=((port, protocol),)))[port]


def select(rt, target: str, host: str | None = None, method: str = "GET",
           headers: list[tuple[str, str]] | None = None):
    """Route a raw origin-form target like the gateway does; returns the route name or None."""
    route = select_route(rt, target, host, method, headers)
    return route.name if route is not None else None


def select_route(rt, target: str, host: str | None = None, method: str = "GET",
                 headers: list[tuple[str, str]] | None = None):
    from gateway.routing import normalize_path, split_target
    _, raw, q = split_target(target)
    wire = [(n.lower().encode(), v.encode()) for n, v in (headers or [])]
    return rt.select(method, normalize_path(raw), q, host, wire)
