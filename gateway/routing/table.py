"""Per-listener route tables: compile once, select per request (2.7-2.9).

Layout of one listener's router:

    ListenerRouter
      host -> RouteGroup         exact group > longest suffix group > default (2.9.2),
                                 resolved through a bounded dict keyed by the raw Host
      RouteGroup                 routes in 2.9.1 order; each route has its index `order`
        exact:   path -> routes          path.exact (and gRPC service+method)
        prefix:  [(len, {prefix -> routes})]   one dict per distinct prefix length
        other:   routes                  regex and path-less routes, always candidates

A request only looks at the routes its path can select (one dict probe per
distinct prefix length), tests them in order, and stops at the first full
match; routes later than the best match found so far are never tested.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from gateway.config.model import GatewayConfig, GatewayRoute, GrpcRouteMatch, HttpRouteMatch
from gateway.routing.matchers import HeaderTest, QueryTest, RequestView, host_key
from gateway.routing.rewrite import host_rewrite, path_rewriter

ROUTE_TYPE_FOR_PROTOCOL = {"http": "httpRoute", "http2": "http2Route", "grpc": "grpcRoute"}
UNSET_PRIORITY = 1001
HOST_CACHE_SIZE = 4096
HOST_KEY_MAX = 255      # a longer Host is no DNS name: resolved, never cached

# 2.9.1 row 2
KIND_EXACT, KIND_PREFIX, KIND_REGEX, KIND_NONE = 0, 1, 2, 3

SortKey = tuple[int, int, int, int, str]


def sort_key(route: GatewayRoute) -> SortKey:
    """The 2.9.1 evaluation-order key; smaller sorts first."""
    kind, literal = path_kind(route)
    return (route.priority if route.priority is not None else UNSET_PRIORITY,
            kind, -len(literal or ""), -condition_count(route), route.name)


def path_kind(route: GatewayRoute) -> tuple[int, str | None]:
    """(2.9.1 path kind, its literal: exact path, prefix or serviceName)."""
    m = route.match
    if isinstance(m, GrpcRouteMatch):
        return (KIND_EXACT, m.service_name) if m.service_name is not None else (KIND_NONE, None)
    if m.path is not None:
        if m.path.exact is not None:
            return KIND_EXACT, m.path.exact
        return KIND_REGEX, None
    if m.prefix is not None:
        return KIND_PREFIX, m.prefix
    return KIND_NONE, None


def condition_count(route: GatewayRoute) -> int:
    m = route.match
    if isinstance(m, GrpcRouteMatch):
        n = len(m.metadata)
    else:
        n = len(m.headers) + len(m.query_parameters)
    if isinstance(m, HttpRouteMatch) and m.method is not None:
        n += 1
    if m.port is not None:
        n += 1
    return n


def hostname_group(route: GatewayRoute) -> tuple[str, str] | None:
    """("exact" | "suffix", value) of the route's host group; None = default group."""
    h = route.match.hostname
    if h is None:
        return None
    if h.exact is not None:
        return "exact", h.exact.lower()
    assert h.suffix is not None
    s = h.suffix.lower()
    return "suffix", s[1:] if s.startswith(".") else s


class CompiledRoute:
    """One gateway route, ready for matching and forwarding."""
    __slots__ = (
        "name", "route_type", "virtual_service", "host_rewrite", "rewrite_path",
        "path_rewritten", "target_port", "spec",
        # matching (internal)
        "order", "sort_key", "method", "path_test", "conds", "simple", "index_kind", "index_key",
        # no route of this route's host group tests a header: method, target and Host
        # alone decide a request's route there (set by RouteGroup)
        "headers_free",
    )

    def __init__(self, spec: GatewayRoute) -> None:
        self.spec = spec
        self.name = spec.name
        self.route_type = spec.route_type
        self.virtual_service = spec.target.virtual_service_name
        self.target_port = spec.target.port
        self.host_rewrite = host_rewrite(spec)
        self.rewrite_path: Callable[[str], str]
        self.rewrite_path, self.path_rewritten = path_rewriter(spec)
        self.sort_key = sort_key(spec)
        self.order = 0
        m = spec.match
        self.path_test: Callable[[str], object] | None = None
        conds: list[HeaderTest | QueryTest]
        if isinstance(m, GrpcRouteMatch):
            self.method = None
            conds = [HeaderTest(c, "metadata") for c in m.metadata]
            if m.service_name is None:
                self.index_kind, self.index_key = "other", None
            elif m.method_name is not None:
                self.index_kind, self.index_key = "exact", f"/{m.service_name}/{m.method_name}"
            else:
                # 2.8: every method of the service, i.e. the plain prefix "/S/"
                self.index_kind, self.index_key = "prefix", f"/{m.service_name}/"
        else:
            self.method = m.method
            conds = [HeaderTest(c) for c in m.headers]
            conds += [QueryTest(q) for q in m.query_parameters]
            if m.path is not None and m.path.exact is not None:
                self.index_kind, self.index_key = "exact", m.path.exact
            elif m.path is not None:
                self.index_kind, self.index_key = "other", None
                self.path_test = re.compile(m.path.regex or "").fullmatch
            elif m.prefix is not None:
                self.index_kind, self.index_key = "prefix", m.prefix
            else:
                self.index_kind, self.index_key = "other", None
        # Port needs no runtime test: a route with match.port is only compiled
        # into that listener's router (2.7).
        self.conds = tuple(conds)
        self.simple = self.method is None and self.path_test is None and not self.conds
        self.headers_free = False

    def path_matches(self, path: str) -> bool:
        """The path condition alone (the index answers it in select())."""
        kind, key = self.index_kind, self.index_key
        if kind == "exact":
            return path == key
        if kind == "prefix":
            return path.startswith(key)  # type: ignore[arg-type]
        return self.path_test is None or self.path_test(path) is not None

    def __repr__(self) -> str:
        return f"<CompiledRoute {self.name!r} {self.sort_key}>"


class RouteGroup:
    """The routes of one host group, indexed by what their path condition needs."""
    __slots__ = ("kind", "value", "routes", "exact", "prefix", "other", "size")

    def __init__(self, kind: str, value: str | None, specs: list[GatewayRoute]) -> None:
        self.kind = kind            # "exact" | "suffix" | "default"
        self.value = value          # the hostname (None for the default group)
        routes = sorted((CompiledRoute(s) for s in specs), key=lambda r: r.sort_key)
        exact: dict[str, list[CompiledRoute]] = {}
        by_len: dict[int, dict[str, list[CompiledRoute]]] = {}
        other: list[CompiledRoute] = []
        for i, r in enumerate(routes):
            r.order = i
            if r.index_kind == "exact":
                exact.setdefault(r.index_key, []).append(r)  # type: ignore[arg-type]
            elif r.index_kind == "prefix":
                key = r.index_key
                assert key is not None
                by_len.setdefault(len(key), {}).setdefault(key, []).append(r)
            else:
                other.append(r)
        self.routes: tuple[CompiledRoute, ...] = tuple(routes)
        headers_free = not any(isinstance(c, HeaderTest) for r in routes for c in r.conds)
        for r in routes:
            r.headers_free = headers_free
        self.exact = {k: tuple(v) for k, v in exact.items()}
        # (length, lowest order in the table, table), longest first
        self.prefix = tuple((n, min(r.order for rs in d.values() for r in rs),
                             {k: tuple(v) for k, v in d.items()})
                            for n, d in sorted(by_len.items(), reverse=True))
        self.size = len(routes)
        self.other = tuple(other)

    def candidates(self, path: str) -> list[tuple[CompiledRoute, ...]]:
        """The lists of routes whose path condition can hold for `path`, each in order."""
        lists = []
        hit = self.exact.get(path)
        if hit is not None:
            lists.append(hit)
        n = len(path)
        for length, _, table in self.prefix:
            if length <= n:
                hit = table.get(path[:length])
                if hit is not None:
                    lists.append(hit)
        if self.other:
            lists.append(self.other)
        return lists

    def select(self, method: str, path: str, query: str, host: str | None,
               headers: list[tuple[bytes, bytes]], scheme: str) -> CompiledRoute | None:
        # The hot path: written out rather than built on candidates(), and every
        # candidate list is skipped once it cannot beat the best match so far.
        best: CompiledRoute | None = None
        best_order = self.size
        view: RequestView | None = None
        hit = self.exact.get(path)
        lists = [hit] if hit is not None else []
        if self.other:
            lists.append(self.other)
        n = len(path)
        prefix = self.prefix
        i = 0
        while True:
            for routes in lists:
                for r in routes:
                    if r.order >= best_order:
                        break
                    if not r.simple:
                        if r.method is not None and r.method != method:
                            continue
                        if r.path_test is not None and r.path_test(path) is None:
                            continue
                        if r.conds:
                            if view is None:
                                view = RequestView(method, path, query, host, headers, scheme)
                            for c in r.conds:
                                if not c.test(view):
                                    break
                            else:
                                best, best_order = r, r.order
                                break
                            continue
                    best, best_order = r, r.order
                    break
            # Prefix tables, longest first: with unprioritised routes the longest
            # matching prefix wins, and every shorter table is then skipped unprobed.
            lists = []
            while i < len(prefix):
                length, first, table = prefix[i]
                i += 1
                if length <= n and first < best_order:
                    hit = table.get(path[:length])
                    if hit is not None:
                        lists = [hit]
                        break
            if not lists:
                return best


_NO_ROUTES = RouteGroup("none", None, [])


class ListenerRouter:
    """The route table of one listener (2.0 step 3-4)."""
    __slots__ = ("port", "protocol", "route_type", "default", "exact_groups", "suffix_groups",
                 "_only", "_host_cache")

    def __init__(self, port: int, protocol: str, routes: list[GatewayRoute]) -> None:
        self.port = port
        self.protocol = protocol
        self.route_type = ROUTE_TYPE_FOR_PROTOCOL[protocol]
        exact: dict[str, list[GatewayRoute]] = {}
        suffix: dict[str, list[GatewayRoute]] = {}
        default: list[GatewayRoute] = []
        for r in routes:
            g = hostname_group(r)
            if g is None:
                default.append(r)
            else:
                (exact if g[0] == "exact" else suffix).setdefault(g[1], []).append(r)
        self.default: RouteGroup | None = RouteGroup("default", None, default) if default else None
        self.exact_groups = {h: RouteGroup("exact", h, rs) for h, rs in exact.items()}
        self.suffix_groups = {s: RouteGroup("suffix", s, rs) for s, rs in suffix.items()}
        # Without hostname groups every host ends in the same group: skip the lookup.
        self._only: RouteGroup | None = None
        if not exact and not suffix:
            self._only = self.default or _NO_ROUTES
        self._host_cache: dict[str | None, RouteGroup] = {}

    @property
    def groups(self) -> list[RouteGroup]:
        """Every host group: exact ones, suffix ones (longest first), then the default."""
        out = [self.exact_groups[h] for h in sorted(self.exact_groups)]
        out += [self.suffix_groups[s]
                for s in sorted(self.suffix_groups, key=lambda s: (-len(s), s))]
        if self.default is not None:
            out.append(self.default)
        return out

    def group_for(self, host: str | None) -> RouteGroup | None:
        """The one host group a request for `host` is evaluated in (2.9.2); None = 404."""
        group = self._resolve(host)
        return None if group is _NO_ROUTES else group

    def _resolve(self, host: str | None) -> RouteGroup:
        h = host_key(host)
        group = self.exact_groups.get(h)
        if group is not None:
            return group
        if self.suffix_groups:
            # Leftmost dot first = longest suffix; a dot at 0 would leave an empty
            # label in front, which a "*." wildcard never matches (2.3).
            i = h.find(".", 1)
            while i > 0:
                group = self.suffix_groups.get(h[i + 1:])
                if group is not None:
                    return group
                i = h.find(".", i + 1)
        return self.default or _NO_ROUTES

    def select(self, method: str, path: str, query: str, host: str | None,
               headers: list[tuple[bytes, bytes]], scheme: str = "http") -> CompiledRoute | None:
        """The winning route for a request, or None (404).

        `path` is normalised, `query` is raw without "?", `host` is the raw Host /
        :authority value, `headers` are (lower-case name, value) in arrival order.
        """
        group = self._only
        if group is None:
            group = self._host_cache.get(host)
            if group is None:
                group = self._resolve(host)
                if host is None or len(host) <= HOST_KEY_MAX:
                    cache = self._host_cache
                    if len(cache) >= HOST_CACHE_SIZE:
                        cache.clear()     # random Host values must not grow memory
                    cache[host] = group
        return group.select(method, path, query, host, headers, scheme)

    def route_count(self) -> int:
        return sum(len(g.routes) for g in self.groups)


def listener_routes(config: GatewayConfig, port: int, protocol: str) -> list[GatewayRoute]:
    """The routes a listener serves: its protocol's route type, match.port absent or equal (2.7)."""
    route_type = ROUTE_TYPE_FOR_PROTOCOL[protocol]
    return [r for r in config.gateway_routes
            if r.route_type == route_type and (r.match.port is None or r.match.port == port)]


def compile_routers(config: GatewayConfig) -> dict[int, ListenerRouter]:
    """One ListenerRouter per listener port."""
    return {listener.port: ListenerRouter(listener.port, listener.protocol,
                                          listener_routes(config, listener.port, listener.protocol))
            for listener in config.virtual_gateway.listeners}
