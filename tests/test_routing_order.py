"""Evaluation order (2.9.1, A1) and host groups (2.9.2, A2), including a brute-force check
of the indexed lookup against a plain in-order scan."""
from __future__ import annotations

import random

import pytest
from routing_helpers import (config, grpc_route, header, host_exact, host_suffix, http_route,
                             query, router, select)

from gateway.routing import compile_routers
from gateway.routing.matchers import RequestView
from gateway.routing.table import HOST_CACHE_SIZE, sort_key

# ------------------------------------------------------------------ 2.9.1 worked example

WORKED = [
    http_route("green-exact", exact="/paths/green", priority=0),
    http_route("beta-header", prefix="/", headers=(header("x-beta"),), priority=5),
    http_route("paths", prefix="/paths"),
    http_route("catch-all", prefix="/"),
]


@pytest.mark.parametrize("name, key", [
    ("green-exact", (0, 0, 12, 0)),
    ("beta-header", (5, 1, 1, 1)),
    ("paths", (1001, 1, 6, 0)),
    ("catch-all", (1001, 1, 1, 0)),
])
def test_spec_2_9_1_sort_keys(name: str, key: tuple) -> None:
    route = next(r for r in WORKED if r.name == name)
    p, kind, neg_len, neg_conds, n = sort_key(route)
    assert (p, kind, -neg_len, -neg_conds) == key and n == name


def test_spec_2_9_1_evaluation_order() -> None:
    group = router(*reversed(WORKED)).default
    assert [r.name for r in group.routes] == ["green-exact", "beta-header", "paths", "catch-all"]


@pytest.mark.parametrize("target, headers, expected", [
    ("/paths/green", [], "green-exact"),
    ("/paths/green", [("x-beta", "1")], "green-exact"),
    ("/paths/red", [("x-beta", "1")], "beta-header"),
    ("/paths/red", [], "paths"),
    ("/other", [], "catch-all"),
])
def test_spec_2_9_1_worked_requests(target: str, headers: list, expected: str) -> None:
    assert select(router(*WORKED), target, headers=headers) == expected


# ------------------------------------------------------------------ A1 tie-breaks


def test_a1_unset_priority_sorts_after_every_explicit_one() -> None:
    rt = router(http_route("long-unset", prefix="/a/b/c"), http_route("short-1000", prefix="/",
                                                                      priority=1000))
    assert select(rt, "/a/b/c") == "short-1000"


def test_a1_priority_0_is_first() -> None:
    rt = router(http_route("p1", exact="/x", priority=1), http_route("p0", prefix="/", priority=0))
    assert select(rt, "/x") == "p0"


def test_a1_path_kind_exact_prefix_regex_none() -> None:
    routes = [http_route("none", hostname=host_exact("h"), priority=7),
              http_route("regex", regex="/x", hostname=host_exact("h"), priority=7),
              http_route("prefix", prefix="/", hostname=host_exact("h"), priority=7),
              http_route("exact", exact="/x", hostname=host_exact("h"), priority=7)]
    rt = router(*routes)
    assert [r.name for r in rt.exact_groups["h"].routes] == ["exact", "prefix", "regex", "none"]
    assert select(rt, "/x", host="h") == "exact"
    assert select(rt, "/y", host="h") == "prefix"


def test_a1_longest_prefix_first_among_unprioritised() -> None:
    rt = router(http_route("root", prefix="/"), http_route("chapter", prefix="/chapter"),
                http_route("chap", prefix="/chap"))
    assert select(rt, "/chapter/") == "chapter"
    assert select(rt, "/chapel") == "chap"
    assert select(rt, "/x") == "root"


def test_a1_longer_exact_before_shorter_exact_key() -> None:
    a = http_route("a", exact="/abc")
    b = http_route("b", exact="/ab")
    assert sort_key(a) < sort_key(b)


def test_a1_more_conditions_first() -> None:
    rt = router(http_route("plain", prefix="/api"),
                http_route("method", prefix="/api", method="GET"),
                http_route("two", prefix="/api", method="GET", headers=(header("x"),)),
                http_route("three", prefix="/api", headers=(header("x"),),
                           query_parameters=(query("q"),), port=8080, method="GET"))
    assert [r.name for r in rt.default.routes] == ["three", "two", "method", "plain"]
    assert select(rt, "/api?q", headers=[("x", "1")]) == "three"
    assert select(rt, "/api", headers=[("x", "1")]) == "two"
    assert select(rt, "/api") == "method"
    assert select(rt, "/api", method="POST") == "plain"


def test_a1_name_breaks_the_last_tie_by_code_point() -> None:
    rt = router(http_route("b", prefix="/"), http_route("B", prefix="/"),
                http_route("a", prefix="/"))
    assert [r.name for r in rt.default.routes] == ["B", "a", "b"]
    assert select(rt, "/") == "B"


def test_grpc_service_sorts_as_path_kind_0() -> None:
    assert sort_key(grpc_route("s", service="a.B"))[:3] == (1001, 0, -3)
    assert sort_key(grpc_route("h", hostname=host_exact("x")))[:3] == (1001, 3, 0)


def test_first_match_wins_no_fall_through_by_target() -> None:
    rt = router(http_route("first", prefix="/a", priority=1, target="x"),
                http_route("second", prefix="/a", priority=2, target="y"))
    assert select(rt, "/a") == "first"


# ------------------------------------------------------------------ 2.9.2 host groups

A = http_route("A", prefix="/v1", hostname=host_exact("api.example.com"))
B = http_route("B", prefix="/")
C = http_route("C", prefix="/", hostname=host_suffix("example.com"))
D = http_route("D", prefix="/admin", hostname=host_exact("api.example.com"))


@pytest.mark.parametrize("routes, host, target, expected", [
    ((A, B), "api.example.com", "/v1/x", "A"),
    ((A, B), "api.example.com", "/health", None),
    ((A, B), "www.example.com", "/health", "B"),
    ((C, D), "api.example.com", "/x", None),
], ids=["exact-group", "no-fallback-404", "other-host-default", "exact-beats-suffix-404"])
def test_spec_2_9_2_table(routes: tuple, host: str, target: str, expected: str | None) -> None:
    assert select(router(*routes), target, host=host) == expected


def test_a2_priority_does_not_cross_groups() -> None:
    rt = router(http_route("default-p0", prefix="/", priority=0),
                http_route("host", prefix="/x", hostname=host_exact("h.example.com")))
    assert select(rt, "/y", host="h.example.com") is None
    assert select(rt, "/y", host="other") == "default-p0"


def test_longest_suffix_group_wins() -> None:
    rt = router(http_route("short", prefix="/", hostname=host_suffix("example.com")),
                http_route("long", prefix="/", hostname=host_suffix(".eu.example.com")),
                http_route("default", prefix="/"))
    assert select(rt, "/", host="shop.eu.example.com") == "long"
    assert select(rt, "/", host="a.b.eu.example.com:8443") == "long"
    assert select(rt, "/", host="eu.example.com") == "short"     # bare "eu.example.com"
    assert select(rt, "/", host="shop.example.com") == "short"
    assert select(rt, "/", host="example.com") == "default"
    assert select(rt, "/", host=None) == "default"


def test_suffix_group_without_match_is_404_not_default() -> None:
    rt = router(http_route("api", prefix="/api", hostname=host_suffix("example.com")),
                http_route("default", prefix="/"))
    assert select(rt, "/other", host="x.example.com") is None


def test_exact_group_case_and_port_insensitive() -> None:
    rt = router(http_route("A", prefix="/", hostname=host_exact("Api.Example.com")),
                http_route("B", prefix="/"))
    assert select(rt, "/", host="API.EXAMPLE.COM:443") == "A"


def test_no_default_group_and_unknown_host_is_404() -> None:
    rt = router(http_route("A", prefix="/", hostname=host_exact("a")))
    assert select(rt, "/", host="b") is None
    assert rt.group_for("b") is None


def test_empty_router_is_404() -> None:
    rt = compile_routers(config())[8080]
    assert rt.select("GET", "/", "", "h", []) is None


def test_host_cache_is_bounded() -> None:
    rt = router(http_route("A", prefix="/", hostname=host_suffix("example.com")),
                http_route("B", prefix="/"))
    for i in range(HOST_CACHE_SIZE * 2 + 5):
        expected = "A" if i % 2 else "B"
        host = f"h{i}.example.com" if i % 2 else f"h{i}.other"
        assert select(rt, "/", host=host) == expected
        assert len(rt._host_cache) <= HOST_CACHE_SIZE


# ------------------------------------------------------------------ index vs brute force


def _reference(group, method: str, path: str, query_: str, host, headers):
    """Plain in-order scan: the definition of 2.9.1 without any index."""
    view = RequestView(method, path, query_, host, headers)
    for r in group.routes:
        if not r.path_matches(path):
            continue
        if r.method is not None and r.method != method:
            continue
        if all(c.test(view) for c in r.conds):
            return r
    return None


def test_indexed_lookup_equals_in_order_scan() -> None:
    rnd = random.Random(7)
    segs = ["a", "ab", "abc", "b", "api", "v1", "v2", "x"]
    routes = []
    for i in range(300):
        depth = rnd.randint(0, 3)
        literal = "/" + "/".join(rnd.choice(segs) for _ in range(depth))
        kind = rnd.random()
        kw: dict = {}
        if kind < 0.5:
            kw["prefix"] = literal + (rnd.choice(["", "/", "b"]) if depth else "")
        elif kind < 0.8:
            kw["exact"] = literal
        elif kind < 0.9:
            kw["regex"] = literal + ".*"
        else:
            kw["hostname"] = host_exact("h")
        if rnd.random() < 0.3:
            kw["priority"] = rnd.randint(0, 20)
        if rnd.random() < 0.2:
            kw["method"] = rnd.choice(["GET", "POST"])
        if rnd.random() < 0.3:
            kw["headers"] = (header("x-v", "exact", rnd.choice(["1", "2"])),)
        if rnd.random() < 0.1:
            kw["query_parameters"] = (query("q"),)
        routes.append(http_route(f"r{i}", **kw))
    rt = router(*routes)
    for _ in range(3000):
        path = "/" + "/".join(rnd.choice(segs) for _ in range(rnd.randint(0, 4)))
        method = rnd.choice(["GET", "POST"])
        headers = [(b"x-v", rnd.choice([b"1", b"2"]))] if rnd.random() < 0.5 else []
        q = rnd.choice(["", "q", "z=1"])
        host = rnd.choice([None, "h", "other"])
        group = rt.group_for(host)
        expected = _reference(group, method, path, q, host, headers) if group else None
        assert rt.select(method, path, q, host, headers) is expected, (method, path, q, host)


def test_thousand_routes_still_route_correctly() -> None:
    routes = [http_route(f"svc-{i}", prefix=f"/svc-{i}/") for i in range(1000)]
    routes += [http_route(f"host-{i}", prefix="/", hostname=host_exact(f"app{i}.example.com"))
               for i in range(100)]
    routes.append(http_route("root", prefix="/"))
    rt = router(*routes)
    assert select(rt, "/svc-999/x") == "svc-999"
    assert select(rt, "/svc-99/x") == "svc-99"
    assert select(rt, "/svc-9") == "root"
    assert select(rt, "/x", host="app42.example.com") == "host-42"
