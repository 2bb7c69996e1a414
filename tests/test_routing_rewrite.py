"""Host and path rewrites (2.10, A9, A10), checked through the compiled route."""
from __future__ import annotations

import pytest
from routing_helpers import (grpc_route, host_exact, http_route, rewrite, router, select_route)


def upstream(route_spec, target: str) -> str:
    """Route `target` through a one-route table and build the upstream target like the proxy."""
    from gateway.routing import split_target
    route = select_route(router(route_spec), target)
    assert route is not None, "route did not match"
    _, _, q = split_target(target)
    from gateway.routing import normalize_path
    path = normalize_path(split_target(target)[1])
    new = route.rewrite_path(path) if route.path_rewritten else path
    assert route.rewrite_path(path) == new       # the flag only skips a no-op
    return new + ("?" + q if q else "")


# (match, rewrite, request, upstream path): spec 2.10.2 worked examples, row by row
REWRITE_TABLE = [
    ({"prefix": "/chapter"}, None, "/chapter/page", "/page"),
    ({"prefix": "/chapter"}, None, "/chapter1", "/1"),
    ({"prefix": "/chapter"}, None, "/chapter", "/"),
    ({"prefix": "/chapter"}, None, "/chapter/?a=1", "/?a=1"),
    ({"prefix": "/"}, None, "/chapter/page", "/chapter/page"),
    ({"prefix": "/paths"}, None, "/paths/red", "/red"),
    ({"prefix": "/chapter"}, {"default_prefix": "DISABLED"}, "/chapter/page", "/chapter/page"),
    ({"prefix": "/test/"}, {"value": "/red/"}, "/test/", "/red/"),
    ({"prefix": "/test/"}, {"value": "/red/"}, "/test/a/b?x=1", "/red/a/b?x=1"),
    ({"prefix": "/test"}, {"value": "/red/"}, "/test/a", "/red/a"),
    ({"prefix": "/test"}, {"value": "/red/"}, "/testing", "/red/ing"),
    ({"exact": "/rewrite/path/blue"}, {"path": "/blue"}, "/rewrite/path/blue?v=2", "/blue?v=2"),
    ({"regex": "/img/.*"}, None, "/img/a.png", "/img/a.png"),
]


@pytest.mark.parametrize("match, rw, request_target, expected", REWRITE_TABLE,
                         ids=[f"{r[2]}->{r[3]}" for r in REWRITE_TABLE])
def test_spec_2_10_2_table(match: dict, rw: dict | None, request_target: str,
                           expected: str) -> None:
    spec = http_route("r", **match, rewrite=rewrite(**rw) if rw else None)
    assert upstream(spec, request_target) == expected


def test_prefix_default_enabled_explicitly() -> None:
    spec = http_route("r", prefix="/chapter", rewrite=rewrite(default_prefix="ENABLED"))
    assert upstream(spec, "/chapter/page") == "/page"


@pytest.mark.parametrize("spec, rewritten", [
    (http_route("r", prefix="/"), False),
    (http_route("r", prefix="/a"), True),
    (http_route("r", prefix="/a", rewrite=rewrite(default_prefix="DISABLED")), False),
    (http_route("r", exact="/a"), False),
    (http_route("r", regex="/a.*"), False),
    (http_route("r", exact="/a", rewrite=rewrite(host="DISABLED")), False),
    (http_route("r", hostname=host_exact("h")), False),
    (grpc_route("g", service="a.B"), False),
])
def test_path_rewritten_flag(spec, rewritten: bool) -> None:
    protocol = "grpc" if spec.route_type == "grpcRoute" else "http"
    route = router(spec, protocol=protocol).groups[0].routes[0]
    assert route.path_rewritten is rewritten


# ------------------------------------------------------------------ 2.10.1 host

@pytest.mark.parametrize("host_setting, expected", [
    (None, "catalog.retail.svc.cluster.local"),
    ("ENABLED", "catalog.retail.svc.cluster.local"),
    ("DISABLED", None),
])
def test_spec_2_10_1_host_table(host_setting: str | None, expected: str | None) -> None:
    rw = rewrite(host=host_setting) if host_setting else None
    spec = http_route("r", prefix="/", target="catalog.retail.svc.cluster.local", rewrite=rw)
    route = select_route(router(spec), "/", host="shop.example.com:443")
    assert route.host_rewrite == expected
    assert route.virtual_service == "catalog.retail.svc.cluster.local"


def test_grpc_host_rewrite_and_no_path_rewrite() -> None:
    rt = router(grpc_route("g", service="s.S", target="grpc.svc"), protocol="grpc")
    route = rt.select("POST", "/s.S/M", "", "h:443", [])
    assert route.host_rewrite == "grpc.svc"
    assert route.rewrite_path("/s.S/M") == "/s.S/M"
    rt = router(grpc_route("g", service="s.S", host_rewrite="DISABLED"), protocol="grpc")
    assert rt.select("POST", "/s.S/M", "", "h", []).host_rewrite is None


def test_compiled_route_public_fields() -> None:
    spec = http_route("r", prefix="/a", target="svc", target_port=8081)
    route = router(spec).default.routes[0]
    assert (route.name, route.route_type, route.virtual_service, route.target_port) == \
        ("r", "httpRoute", "svc", 8081)
    assert route.spec is spec
    with pytest.raises(AttributeError):
        route.extra = 1      # __slots__


# ------------------------------------------------------------------ A9, A10

def test_a9_value_join_never_doubles_the_slash() -> None:
    spec = http_route("r", prefix="/test", rewrite=rewrite(value="/red/"))
    assert upstream(spec, "/test/a") == "/red/a"
    assert upstream(spec, "/test") == "/red/"


def test_a10_path_rewrite_accepted_with_prefix_match() -> None:
    spec = http_route("r", prefix="/old", rewrite=rewrite(path="/new"))
    assert upstream(spec, "/old/x/y?z=1") == "/new?z=1"


def test_a10_path_rewrite_with_hostname_only_route() -> None:
    spec = http_route("r", hostname=host_exact("h"), rewrite=rewrite(path="/fixed"))
    route = select_route(router(spec), "/any/thing", host="h")
    assert route.rewrite_path("/any/thing") == "/fixed"


def test_a10_hostname_only_route_acts_as_prefix_slash() -> None:
    spec = http_route("r", hostname=host_exact("h"))
    route = select_route(router(spec), "/a/b", host="h")
    assert route.rewrite_path("/a/b") == "/a/b"
    spec = http_route("r", hostname=host_exact("h"), rewrite=rewrite(value="/v2/"))
    route = select_route(router(spec), "/a/b", host="h")
    assert route.rewrite_path("/a/b") == "/v2/a/b"
    assert route.rewrite_path("/") == "/v2/"


def test_a10_regex_match_path_unchanged_even_with_host_rewrite() -> None:
    spec = http_route("r", regex="/img/.*", rewrite=rewrite(host="DISABLED"))
    assert upstream(spec, "/img/a.png?s=1") == "/img/a.png?s=1"


# ------------------------------------------------------------------ safety (decision)

@pytest.mark.parametrize("prefix, value, request_target, expected", [
    ("/static", None, "/static..", "/"),
    ("/static", "/files/", "/static..", "/"),
    ("/static", "/files/", "/static../etc", "/etc"),
    ("/static", "/files/", "/static./x", "/files/x"),
    ("/static", "/files/", "/static.css", "/files/.css"),
])
def test_rewrite_cannot_create_dot_segments(prefix: str, value: str | None,
                                            request_target: str, expected: str) -> None:
    spec = http_route("r", prefix=prefix, rewrite=rewrite(value=value) if value else None)
    assert upstream(spec, request_target) == expected
