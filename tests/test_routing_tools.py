"""Route tools: format_routes, explain, lint (lint covers 2.9.1 shadowing and 2.9.2 hiding)."""
from __future__ import annotations

import pytest
from routing_helpers import (config, grpc_route, header, host_exact, host_suffix, http_route,
                             query, rewrite)

from gateway.routing.tools import explain, format_routes, lint

SHOP = config(
    http_route("products-v2", prefix="/products", priority=10,
               headers=(header("x-version", "exact", "v2"),), target="catalog-v2.svc"),
    http_route("products", prefix="/products", priority=10, target="catalog.svc"),
    http_route("home", prefix="/", target="web.svc", rewrite=rewrite(host="DISABLED")),
    http_route("api-v1", prefix="/v1", hostname=host_exact("api.example.com"), target="api.svc"),
)


# ------------------------------------------------------------------ format_routes

def test_format_routes_lists_groups_in_order_with_keys() -> None:
    text = format_routes(SHOP)
    assert "listener 8080 (http, serves httpRoute): 4 route(s)" in text
    assert 'host group: hostname exact "api.example.com"' in text
    assert "host group: default (routes without hostname)" in text
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if f"  {name}  " in line)
             for name in ("products-v2", "products", "home")]
    assert order == sorted(order)
    assert "(10, 1, 9, 1)" in text and "(1001, 1, 1, 0)" in text
    assert "prefix /products -> /" in text and "host kept" in text
    assert 'header x-version exact "v2"' in text


def test_format_routes_empty_listener() -> None:
    assert "no routes" in format_routes(config())


# ------------------------------------------------------------------ explain

def test_explain_match_with_rewrite() -> None:
    text, ok = explain(SHOP, "GET", "http://shop.example.com/products/42?x=1", [])
    assert ok
    assert 'header x-version: expected exact "v2", got absent' in text
    assert "2. products (10, 1, 9, 0): MATCH" in text
    assert 'result: route "products"' in text
    assert "virtual service catalog.svc" in text
    assert "Host: catalog.svc" in text
    assert "path: /42?x=1" in text
    assert "1 later route(s) not evaluated" in text


def test_explain_header_value_mismatch_and_match() -> None:
    text, ok = explain(SHOP, "GET", "/products", [("Host", "shop"), ("X-Version", "v1")])
    assert ok and 'header x-version: expected exact "v2", got "v1"' in text
    text, ok = explain(SHOP, "GET", "/products", [("x-version", "v2")])
    assert ok and 'result: route "products-v2"' in text and "Host: catalog-v2.svc" in text


def test_explain_host_kept_and_normalisation_shown() -> None:
    text, ok = explain(SHOP, "GET", "/a//b/../c?q", [("host", "www.example.com:8080")])
    assert ok
    assert "normalised from /a//b/../c" in text
    assert "Host: www.example.com:8080" in text and "DISABLED" in text
    assert "path: /a/c?q" in text


def test_explain_host_group_404() -> None:
    text, ok = explain(SHOP, "GET", "http://API.example.com:443/health", [])
    assert not ok
    assert 'host group: hostname exact "api.example.com"' in text
    assert "3 route(s) in other host groups are not consulted" in text
    assert 'path: "/health" does not start with prefix "/v1"' in text
    assert "404" in text


def test_explain_grpc_path() -> None:
    cfg = config(grpc_route("colors", service="color.ColorService", target="color.svc"),
                 listeners=((9000, "grpc"),))
    text, ok = explain(cfg, "POST", "/color.ColorService/GetColor", [("host", "g")])
    assert ok and 'route "colors"' in text and "path: /color.ColorService/GetColor" in text
    text, ok = explain(cfg, "POST", "/color.ColorServiceV2/Get", [])
    assert not ok and 'is not a method of service "color.ColorService"' in text


def test_explain_grpc_call_with_metadata_and_status() -> None:
    cfg = config(grpc_route("tenant-a", service="test.Echo", target="a.svc",
                            metadata=(header("x-tenant", "exact", "a"),), host_rewrite="ENABLED"),
                 grpc_route("echo", service="test.Echo", target="echo.svc"),
                 listeners=((9000, "grpc"),))
    text, ok = explain(cfg, "GRPC", "grpc://api.local:9000/test.Echo/Unary", [("x-tenant", "a")])
    assert ok and 'route "tenant-a"' in text
    assert "gRPC call: service test.Echo method Unary" in text
    assert "request: POST http://api.local:9000/test.Echo/Unary" in text
    assert ":authority: a.svc" in text
    text, ok = explain(cfg, "grpc", "/test.Echo/Unary", [("x-tenant", "b")])
    assert ok and 'route "echo"' in text and 'metadata x-tenant' in text
    text, ok = explain(cfg, "GRPC", "/other.Svc/Call", [])
    assert not ok and "grpc-status 12 (UNIMPLEMENTED)" in text and "HTTP 200" in text
    text, ok = explain(cfg, "GRPC", "/not-a-method", [])
    assert not ok and "the path is not /package.Service/Method" in text


def test_explain_grpc_on_an_http_listener_uses_its_http_routes() -> None:
    text, ok = explain(SHOP, "GRPC", "/products/x.Svc/M", [("host", "shop")])
    assert ok and 'route "products"' in text
    assert "matched by its httpRoutes like any request" in text
    text, ok = explain(SHOP, "POST", "http://api.example.com/nothing",
                       [("content-type", "application/grpc+proto")])
    assert not ok and "grpc-status 12" in text      # a gRPC client is recognised by its content-type


def test_explain_chooses_listener() -> None:
    cfg = config(http_route("a", prefix="/", port=8080, target="a"),
                 http_route("b", prefix="/", port=9090, target="b"),
                 listeners=((8080, "http"), (9090, "http")))
    text, ok = explain(cfg, "GET", "/", [], port=9090)
    assert ok and 'route "b"' in text and "chosen with --port" in text
    text, ok = explain(cfg, "GET", "http://h:9090/", [])
    assert ok and 'route "b"' in text
    text, ok = explain(cfg, "GET", "/", [], port=1)
    assert not ok and "no listener on port 1" in text


@pytest.mark.parametrize("url", ["/a\x00", "ftp://x/y", "nopath"])
def test_explain_bad_request(url: str) -> None:
    text, ok = explain(SHOP, "GET", url, [])
    assert not ok and text.startswith("error:")


def test_explain_query_and_method_reasons() -> None:
    cfg = config(http_route("r", prefix="/", method="POST",
                            query_parameters=(query("region", "eu"),)))
    text, ok = explain(cfg, "GET", "/?region=us", [])
    assert not ok
    assert 'method: expected "POST", got "GET"' in text
    assert 'query parameter region: expected exact "eu", got "us"' in text


def test_explain_inverted_absent_header_reason() -> None:
    cfg = config(http_route("r", prefix="/", headers=(header("x-v", "exact", "1", invert=True),)))
    text, ok = explain(cfg, "GET", "/", [])
    assert not ok and "needs the header present" in text


# ------------------------------------------------------------------ lint: host groups

def test_lint_hostless_route_hidden_by_exact_group() -> None:
    cfg = config(http_route("catalog", prefix="/"),
                 http_route("api-v1", prefix="/v1", hostname=host_exact("api.example.com")))
    issues = lint(cfg)
    assert [str(i.message) for i in issues] == [
        'route "catalog" is never used for host "api.example.com": routes with hostname exact '
        '"api.example.com" (e.g. "api-v1") form their own group, and host-less routes are not '
        'consulted for it']
    assert issues[0].severity == "warning"
    assert issues[0].path == "gatewayRoutes[catalog]"
    assert issues[0].source == "test.yaml"


def test_lint_hostless_route_hidden_by_suffix_group_once_per_group() -> None:
    cfg = config(http_route("a", prefix="/"), http_route("b", prefix="/b"),
                 http_route("wild", prefix="/", hostname=host_suffix("example.com")),
                 http_route("wild2", prefix="/x", hostname=host_suffix("example.com")))
    messages = [i.message for i in lint(cfg)]
    assert len(messages) == 2
    # evaluation order: "/b" before "/", "/x" before "/"
    assert messages[0].startswith('route "b" is never used for hosts "*.example.com": routes '
                                  'with hostname suffix "example.com" (e.g. "wild2", "wild")')
    assert messages[1].startswith('route "a" is never used for hosts "*.example.com"')


def test_lint_suffix_group_hidden_by_exact_group() -> None:
    # spec 2.9.2 table, last row: C is never consulted for api.example.com
    cfg = config(http_route("C", prefix="/", hostname=host_suffix("example.com")),
                 http_route("D", prefix="/admin", hostname=host_exact("api.example.com")),
                 http_route("E", prefix="/", hostname=host_exact("example.com")))
    messages = [i.message for i in lint(cfg)]
    assert messages == [
        'route "C" is never used for host "api.example.com": routes with hostname exact '
        '"api.example.com" (e.g. "D") form their own group, and routes with hostname suffix '
        '"example.com" are not consulted for it']


def test_lint_shorter_suffix_hidden_by_longer_suffix() -> None:
    cfg = config(http_route("all", prefix="/", hostname=host_suffix("example.com")),
                 http_route("eu", prefix="/", hostname=host_suffix("eu.example.com")),
                 http_route("other", prefix="/", hostname=host_suffix("ample.com")))
    messages = [i.message for i in lint(cfg)]
    assert len(messages) == 1 and messages[0].startswith(
        'route "all" is never used for hosts "*.eu.example.com"')


def test_lint_no_hostnames_no_host_warnings() -> None:
    assert lint(config(http_route("a", prefix="/a"), http_route("b", prefix="/b"))) == []


# ------------------------------------------------------------------ lint: shadowing

def test_lint_shadowed_by_earlier_prefix() -> None:
    cfg = config(http_route("products", prefix="/products", priority=10),
                 http_route("products-v2", prefix="/products/v2", priority=20,
                            headers=(header("x-version", "exact", "v2"),)))
    issues = lint(cfg)
    assert [i.message for i in issues] == [
        'route "products-v2" can never match: route "products" (priority 10) comes first and '
        'matches every request it would']
    assert issues[0].path == "gatewayRoutes[products-v2]"


@pytest.mark.parametrize("earlier, later", [
    (http_route("e", prefix="/", priority=1), http_route("l", regex="/x.*")),
    (http_route("e", prefix="/", priority=1), http_route("l", exact="/x")),
    (http_route("e", prefix="/a", priority=1), http_route("l", exact="/a/b")),
    (http_route("e", exact="/a", priority=1), http_route("l", exact="/a", method="GET")),
    (http_route("e", regex="/a/[0-9]+", priority=1), http_route("l", exact="/a/42")),
    (http_route("e", prefix="/a", method="GET", priority=1),
     http_route("l", prefix="/a/b", method="GET", query_parameters=(query("q", "1"),))),
    (http_route("e", prefix="/", headers=(header("x"),), priority=1),
     http_route("l", prefix="/", headers=(header("x", "exact", "1", invert=True),))),
    (http_route("e", prefix="/", query_parameters=(query("q"),), priority=1),
     http_route("l", prefix="/z", query_parameters=(query("q", "1"),))),
    (http_route("e", prefix="/same"), http_route("l", prefix="/same")),    # name tie-break
])
def test_lint_shadowing_cases(earlier, later) -> None:
    messages = [i.message for i in lint(config(earlier, later))]
    assert len(messages) == 1 and messages[0].startswith('route "l" can never match: route "e"')


@pytest.mark.parametrize("earlier, later", [
    (http_route("e", prefix="/a", priority=1), http_route("l", prefix="/b")),
    (http_route("e", prefix="/ab", priority=1), http_route("l", prefix="/a")),
    (http_route("e", prefix="/a", priority=1), http_route("l", regex="/a.*")),
    (http_route("e", prefix="/", method="GET", priority=1), http_route("l", prefix="/x")),
    (http_route("e", prefix="/", headers=(header("x", "exact", "1"),), priority=1),
     http_route("l", prefix="/x", headers=(header("x"),))),
    (http_route("e", prefix="/", headers=(header("x"),), priority=1),
     http_route("l", prefix="/x", headers=(header("x", invert=True),))),
    (http_route("e", prefix="/", query_parameters=(query("q", "1"),), priority=1),
     http_route("l", prefix="/x", query_parameters=(query("q"),))),
    (http_route("e", exact="/a", priority=1), http_route("l", prefix="/a")),
    (http_route("e", regex="/a/[0-9]+", priority=1), http_route("l", exact="/a/b")),
    (http_route("e", prefix="/", hostname=host_exact("h"), priority=1),
     http_route("l", prefix="/")),
    (http_route("e", prefix="/x", priority=5), http_route("l", prefix="/x/y", priority=1)),
])
def test_lint_no_false_positives(earlier, later) -> None:
    messages = [i.message for i in lint(config(earlier, later)) if "can never match" in i.message]
    assert messages == []


def test_lint_grpc_shadowing() -> None:
    cfg = config(grpc_route("all", service="s.S", priority=1),
                 grpc_route("canary", service="s.S", metadata=(header("x-canary"),)),
                 grpc_route("other", service="s.T"),
                 listeners=((9000, "grpc"),))
    messages = [i.message for i in lint(cfg)]
    assert messages == ['route "canary" can never match: route "all" (priority 1) comes first '
                        'and matches every request it would']


def test_lint_shadowing_on_one_listener_only() -> None:
    cfg = config(http_route("e", prefix="/", port=8080, priority=1),
                 http_route("l", prefix="/x"),
                 listeners=((8080, "http"), (9090, "http")))
    messages = [i.message for i in lint(cfg)]
    assert messages == ['route "l" can never match on listener 8080: route "e" (priority 1) '
                        'comes first and matches every request it would']
