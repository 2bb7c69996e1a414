"""Route lookup cost: ns per ListenerRouter.select() for 10 vs 1,000 routes.

    .venv/bin/python loadtest/route_lookup_bench.py [--iterations N]

Prints one line per scenario.  The point is the ratio between the small and
the large configuration of the same shape, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import random
import time

from gateway.config.model import (GatewayConfig, GatewayRoute, HeaderCondition, HostnameMatch,
                                  HttpRouteMatch, Listener, PathMatch, RouteTarget, ValueMatch,
                                  VirtualGateway)
from gateway.routing import compile_routers, normalize_path

HEADERS = [(b"user-agent", b"bench/1.0"), (b"accept", b"*/*"), (b"x-request-id", b"abc")]


def _route(name: str, **match: object) -> GatewayRoute:
    return GatewayRoute(name=name, route_type="httpRoute", match=HttpRouteMatch(**match),
                        target=RouteTarget(f"{name}.svc"))


def prefixes(n: int) -> tuple[list[GatewayRoute], list[tuple[str, str | None]]]:
    """n-1 service prefixes plus a catch-all; requests hit the services."""
    routes = [_route(f"svc-{i}", prefix=f"/svc-{i}") for i in range(n - 1)]
    routes.append(_route("catch-all", prefix="/"))
    reqs = [(f"/svc-{i}/items/42", None) for i in range(n - 1)]
    return routes, reqs


def hosts(n: int) -> tuple[list[GatewayRoute], list[tuple[str, str | None]]]:
    """n/5 exact hostnames with 5 routes each (prefixes, an exact path, a header route)."""
    routes, reqs = [], []
    for h in range(max(1, n // 5)):
        host = f"app{h}.example.com"
        hm = HostnameMatch(exact=host)
        routes += [
            _route(f"h{h}-root", prefix="/", hostname=hm),
            _route(f"h{h}-api", prefix="/api", hostname=hm),
            _route(f"h{h}-api-v2", prefix="/api", hostname=hm,
                   headers=(HeaderCondition("x-version", ValueMatch("exact", "v2")),)),
            _route(f"h{h}-health", path=PathMatch(exact="/health"), hostname=hm),
            _route(f"h{h}-static", prefix="/static/", hostname=hm),
        ]
        reqs += [(f"/api/orders/{h}", f"{host}:443"), ("/health", host),
                 (f"/static/app{h}.js", host)]
    return routes, reqs


def suffixes(n: int) -> tuple[list[GatewayRoute], list[tuple[str, str | None]]]:
    """n/2 suffix groups ("tN.example.com") with 2 routes each; hosts are subdomains."""
    routes, reqs = [], []
    for t in range(max(1, n // 2)):
        hm = HostnameMatch(suffix=f"t{t}.example.com")
        routes += [_route(f"t{t}-root", prefix="/", hostname=hm),
                   _route(f"t{t}-api", prefix="/api/", hostname=hm)]
        reqs.append((f"/api/x/{t}", f"shop.t{t}.example.com"))
    return routes, reqs


def bench(build, n: int, iterations: int) -> float:
    routes, reqs = build(n)
    vg = VirtualGateway("bench", (Listener(8080, "http"),))
    router = compile_routers(GatewayConfig(vg, tuple(routes), ()))[8080]
    random.seed(1)
    sample = [random.choice(reqs) for _ in range(1024)]
    for path, host in sample:
        assert router.select("GET", path, "", host, HEADERS) is not None, (path, host)
    select = router.select
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for i in range(iterations):
            path, host = sample[i & 1023]
            select("GET", path, "", host, HEADERS)
        best = min(best, (time.perf_counter_ns() - t0) / iterations)
    return best


def bench_overhead(iterations: int) -> float:
    """The benchmark loop calling a function that does nothing: subtract it mentally."""
    def nothing(*args: object) -> None:
        return None
    sample = [("/svc-1/items/42", None)] * 1024
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for i in range(iterations):
            path, host = sample[i & 1023]
            nothing("GET", path, "", host, HEADERS)
        best = min(best, (time.perf_counter_ns() - t0) / iterations)
    return best


def bench_normalize(iterations: int) -> tuple[float, float]:
    out = []
    for path in ("/api/orders/42/items", "/api//orders/./42/%7Eitems/../x"):
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            normalize_path(path)
        out.append((time.perf_counter_ns() - t0) / iterations)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200_000)
    args = ap.parse_args()
    print(f"{'scenario':<44} {'10 routes':>10} {'1000 routes':>12}  ratio")
    for label, build in (("prefix routes, no hostname", prefixes),
                         ("exact hostnames x 5 routes (one header)", hosts),
                         ("suffix hostnames x 2 routes", suffixes)):
        small = bench(build, 10, args.iterations)
        large = bench(build, 1000, args.iterations)
        print(f"{label:<44} {small:>8.0f}ns {large:>10.0f}ns  {large / small:.2f}")
    print(f"(loop + empty call overhead included above: {bench_overhead(args.iterations):.0f}ns)")
    plain, messy = bench_normalize(args.iterations)
    print(f"normalize_path: fast path {plain:.0f}ns, path needing work {messy:.0f}ns")


if __name__ == "__main__":
    main()
