"""Single-condition semantics: path, hostname, headers, query, method, port, gRPC (2.2-2.8)."""
from __future__ import annotations

import pytest
from routing_helpers import (config, grpc_route, header, host_exact, host_suffix, http_route,
                             query, router, select)

from gateway.routing import compile_routers
from gateway.routing.matchers import host_key

# ------------------------------------------------------------------ 2.2 path

PATH_ROUTES = {
    "prefix": http_route("r", prefix="/chapter"),
    "exact": http_route("r", exact="/chapter/page"),
    "regex": http_route("r", regex="/chapter/[a-z]+"),
}

# (request target, prefix /chapter, path.exact /chapter/page, path.regex /chapter/[a-z]+)
PATH_TABLE = [
    ("/chapter", True, False, False),
    ("/chapter/", True, False, False),
    ("/chapter/page?x=1", True, True, True),
    ("/chapter1", True, False, False),
    ("/Chapter/page", False, False, False),
    ("/chapter/page/2", True, False, False),
    ("//chapter///page", True, True, True),
    ("/x/../chapter/page", True, True, True),
]


@pytest.mark.parametrize("column", ["prefix", "exact", "regex"])
@pytest.mark.parametrize("row", PATH_TABLE, ids=[r[0] for r in PATH_TABLE])
def test_spec_2_2_path_table(row: tuple, column: str) -> None:
    target = row[0]
    expected = row[1 + ["prefix", "exact", "regex"].index(column)]
    assert (select(router(PATH_ROUTES[column]), target) == "r") is expected


def test_prefix_slash_matches_every_path() -> None:
    rt = router(http_route("all", prefix="/"))
    for target in ("/", "/a", "/a/b/c?d", "/%2F"):
        assert select(rt, target) == "all"


def test_exact_trailing_slash_is_significant() -> None:
    rt = router(http_route("r", exact="/a/"))
    assert select(rt, "/a/") == "r"
    assert select(rt, "/a") is None


def test_regex_is_anchored_at_both_ends_a6() -> None:
    rt = router(http_route("r", regex="/img/[a-z]+\\.png"))
    assert select(rt, "/img/cat.png") == "r"
    assert select(rt, "/x/img/cat.png") is None
    assert select(rt, "/img/cat.pngx") is None


# ------------------------------------------------------------------ 2.3 hostname

HOST_ROUTES = {
    "exact": host_exact("shop.example.com"),
    "suffix": host_suffix("example.com"),
    "dot-suffix": host_suffix(".example.com"),
}

# (request host, exact shop.example.com, suffix example.com, suffix .example.com)
HOST_TABLE = [
    ("shop.example.com", True, True, True),
    ("SHOP.Example.COM", True, True, True),
    ("shop.example.com:8443", True, True, True),
    ("a.b.example.com", False, True, True),
    ("example.com", False, False, False),
    ("myexample.com", False, False, False),
]


@pytest.mark.parametrize("column", ["exact", "suffix", "dot-suffix"])
@pytest.mark.parametrize("row", HOST_TABLE, ids=[r[0] for r in HOST_TABLE])
def test_spec_2_3_hostname_table(row: tuple, column: str) -> None:
    host = row[0]
    expected = row[1 + ["exact", "suffix", "dot-suffix"].index(column)]
    rt = router(http_route("r", hostname=HOST_ROUTES[column]))
    assert (select(rt, "/", host=host) == "r") is expected


@pytest.mark.parametrize("host, expected", [
    ("[::1]:8080", "[::1]"),
    ("[::1]", "[::1]"),
    ("[2001:DB8::1]:443", "[2001:db8::1]"),
    ("Example.COM:80", "example.com"),
    ("example.com:", "example.com"),
    ("example.com", "example.com"),
    ("", ""),
    (None, ""),
])
def test_host_key_strips_port_and_lowers_a4_a5(host: str | None, expected: str) -> None:
    assert host_key(host) == expected


def test_bracketed_ipv6_host_matches_exact() -> None:
    rt = router(http_route("v6", hostname=host_exact("[::1]")))
    assert select(rt, "/", host="[::1]:8080") == "v6"
    assert select(rt, "/", host="[::2]:8080") is None


def test_suffix_needs_a_non_empty_label_in_front_a3() -> None:
    rt = router(http_route("r", hostname=host_suffix("example.com")))
    assert select(rt, "/", host=".example.com") is None
    assert select(rt, "/", host="x.example.com") == "r"


def test_no_host_never_matches_a_hostname_route() -> None:
    rt = router(http_route("r", hostname=host_suffix("example.com")))
    assert select(rt, "/", host=None) is None


# ------------------------------------------------------------------ 2.4 headers

HEADER_CONDITIONS = {
    "range": header("v", "range", (100, 150)),
    "range-invert": header("v", "range", (100, 150), invert=True),
    "regex": header("v", "regex", "redor.*"),
    "prefix-invert": header("v", "prefix", "redor", invert=True),
    "presence": header("v"),
    "absence": header("v", invert=True),
}
HEADER_VALUES = [None, "100", "150", "abc", "redorgreen"]

# condition: results for (absent, 100, 150, abc, redorgreen)
HEADER_TABLE = {
    "range": (False, True, False, False, False),
    "range-invert": (False, False, True, True, True),
    "regex": (False, False, False, False, True),
    "prefix-invert": (False, True, True, True, False),
    "presence": (False, True, True, True, True),
    "absence": (True, False, False, False, False),
}


@pytest.mark.parametrize("value_index", range(5), ids=["absent", "100", "150", "abc", "redorgreen"])
@pytest.mark.parametrize("condition", list(HEADER_TABLE))
def test_spec_2_4_header_table(condition: str, value_index: int) -> None:
    rt = router(http_route("r", prefix="/", headers=(HEADER_CONDITIONS[condition],)))
    value = HEADER_VALUES[value_index]
    headers = [("x-other", "1")] + ([("v", value)] if value is not None else [])
    assert (select(rt, "/", headers=headers) == "r") is HEADER_TABLE[condition][value_index]


@pytest.mark.parametrize("kind, pattern, value, expected", [
    ("exact", "v2", "v2", True),
    ("exact", "v2", "V2", False),          # values are case-sensitive
    ("exact", "v2", "v2 ", False),
    ("prefix", "ab", "abc", True),
    ("prefix", "ab", "xab", False),
    ("suffix", "bc", "abc", True),
    ("suffix", "bc", "bcd", False),
    ("regex", "v[0-9]", "v2", True),
    ("regex", "v[0-9]", "xv2", False),     # full match, not search (A6)
    ("regex", "v[0-9]", "v23", False),
    ("range", (1, 100), "1", True),
    ("range", (1, 100), "99", True),
    ("range", (1, 100), "100", False),     # end excluded
    ("range", (1, 100), "0", False),
    ("range", (1, 100), " 42\t", True),    # ASCII whitespace trimmed
    ("range", (1, 100), "+42", True),
    ("range", (-10, 0), "-5", True),
    ("range", (1, 100), "4 2", False),
    ("range", (1, 100), "4_2", False),     # int() would accept this
    ("range", (1, 100), "\u0664\u0662", False),   # Arabic-Indic digits: not base-10 ASCII
    ("range", (1, 100), "42.0", False),
    ("range", (1, 100), "0x10", False),
    ("range", (1, 100), "", False),
    ("range", (-(2 ** 63), 2 ** 63 - 1), str(2 ** 63), False),   # not a signed 64-bit integer
    ("range", (-(2 ** 63), 2 ** 63 - 1), str(-(2 ** 63)), True),
])
def test_header_value_tests(kind: str, pattern: object, value: str, expected: bool) -> None:
    rt = router(http_route("r", prefix="/", headers=(header("x-h", kind, pattern),)))
    assert (select(rt, "/", headers=[("x-h", value)]) == "r") is expected


def test_header_names_are_case_insensitive() -> None:
    rt = router(http_route("r", prefix="/", headers=(header("X-Version", "exact", "v2"),)))
    assert select(rt, "/", headers=[("x-VERSION", "v2")]) == "r"


def test_repeated_header_values_are_joined_with_comma() -> None:
    rt = router(http_route("admin", prefix="/", headers=(header("x-role", "exact", "user,admin"),)))
    headers = [("x-role", "user"), ("other", "x"), ("x-role", "admin")]
    assert select(rt, "/", headers=headers) == "admin"
    assert select(rt, "/", headers=[("x-role", "admin"), ("x-role", "user")]) is None


def test_joined_value_slips_past_inverted_exact() -> None:
    # The documented trade-off of 2.1: "user" + "admin" is tested as "user,admin".
    rt = router(http_route("not-admin", prefix="/",
                           headers=(header("x-role", "exact", "admin", invert=True),)))
    assert select(rt, "/", headers=[("x-role", "admin")]) is None
    assert select(rt, "/", headers=[("x-role", "user"), ("x-role", "admin")]) == "not-admin"


def test_all_header_conditions_must_hold() -> None:
    rt = router(http_route("r", prefix="/", headers=(header("a", "exact", "1"),
                                                     header("b", "exact", "2"))))
    assert select(rt, "/", headers=[("a", "1"), ("b", "2")]) == "r"
    assert select(rt, "/", headers=[("a", "1")]) is None


def test_host_and_authority_conditions_test_the_request_host() -> None:
    for name in ("host", ":authority"):
        rt = router(http_route("r", prefix="/", headers=(header(name, "suffix", ":8443"),)))
        assert select(rt, "/", host="shop.example.com:8443") == "r"
        assert select(rt, "/", host="shop.example.com") is None
        assert select(rt, "/", host=None) is None


def test_pseudo_header_conditions() -> None:
    rt = router(http_route("r", prefix="/", headers=(header(":method", "exact", "PATCH"),)))
    assert select(rt, "/", method="PATCH") == "r"
    assert select(rt, "/", method="GET") is None
    rt = router(http_route("r", prefix="/", headers=(header(":path", "regex", "/a\\?x=.*"),)))
    assert select(rt, "//a?x=1") == "r"          # normalised path plus raw query
    assert select(rt, "/a") is None
    r = compile_routers(config(http_route("r", prefix="/",
                                          headers=(header(":scheme", "exact", "https"),))))[8080]
    assert r.select("GET", "/", "", None, [], scheme="https").name == "r"
    assert r.select("GET", "/", "", None, []) is None


def test_utf8_header_values_compare_with_config_strings() -> None:
    rt = router(http_route("r", prefix="/", headers=(header("x-city", "exact", "Z\u00fcrich"),)))
    wire = [(b"x-city", "Z\u00fcrich".encode())]
    assert rt.select("GET", "/", "", None, wire).name == "r"
    assert rt.select("GET", "/", "", None, [(b"x-city", b"Z\xfcrich")]) is None


class _Untouchable(list):
    def __iter__(self):
        raise AssertionError("headers read by a route without header conditions")


def test_routes_without_conditions_never_read_headers() -> None:
    rt = router(http_route("a", exact="/a"), http_route("b", prefix="/b", method="GET"),
                http_route("c", regex="/c.*", priority=0), http_route("d", prefix="/"))
    for path, name in (("/a", "a"), ("/b/x", "b"), ("/cat", "c"), ("/z", "d")):
        assert rt.select("GET", path, "q=1", "h", _Untouchable()).name == name


# ------------------------------------------------------------------ 2.5 query

QUERY_ROUTES = {
    "region": query("region", "eu"),
    "debug": query("debug"),
}

# (query string, {name: region, match: {exact: eu}}, {name: debug})
QUERY_TABLE = [
    ("?region=eu", True, False),
    ("?region=EU", False, False),
    ("?region=eu&region=us", True, False),
    ("?region=us&region=eu", False, False),
    ("?Region=eu", False, False),
    ("?region=e%75", False, False),
    ("?debug", False, True),
    ("?debug=", False, True),
    ("?debug=0", False, True),
    ("", False, False),
]


@pytest.mark.parametrize("column", ["region", "debug"])
@pytest.mark.parametrize("row", QUERY_TABLE, ids=[r[0] or "(none)" for r in QUERY_TABLE])
def test_spec_2_5_query_table(row: tuple, column: str) -> None:
    rt = router(http_route("r", prefix="/", query_parameters=(QUERY_ROUTES[column],)))
    expected = row[1 + ["region", "debug"].index(column)]
    assert (select(rt, "/" + row[0]) == "r") is expected


def test_query_no_plus_to_space() -> None:
    rt = router(http_route("r", prefix="/", query_parameters=(query("q", "a b"),)))
    assert select(rt, "/?q=a+b") is None
    rt = router(http_route("r", prefix="/", query_parameters=(query("q", "a+b"),)))
    assert select(rt, "/?q=a+b") == "r"


def test_query_never_takes_part_in_path_matching() -> None:
    rt = router(http_route("r", exact="/a"))
    assert select(rt, "/a?/b") == "r"


# ------------------------------------------------------------------ 2.6 method, 2.7 port


def test_method_is_exact() -> None:
    rt = router(http_route("get", prefix="/", method="GET"))
    assert select(rt, "/", method="GET") == "get"
    assert select(rt, "/", method="HEAD") is None
    assert select(rt, "/", method="get") is None


def test_match_port_limits_route_to_that_listener() -> None:
    cfg = config(http_route("only-8080", prefix="/", port=8080, priority=0),
                 http_route("any", prefix="/"),
                 listeners=((8080, "http"), (9090, "http")))
    routers = compile_routers(cfg)
    assert routers[8080].select("GET", "/", "", None, []).name == "only-8080"
    assert routers[9090].select("GET", "/", "", None, []).name == "any"


def test_listener_protocol_selects_route_type() -> None:
    cfg = config(http_route("h1", prefix="/"),
                 http_route("h2", prefix="/", route_type="http2Route"),
                 grpc_route("g", service="pkg.Svc"),
                 listeners=((8080, "http"), (8081, "http2"), (8082, "grpc")))
    routers = compile_routers(cfg)
    assert routers[8080].select("POST", "/pkg.Svc/M", "", None, []).name == "h1"
    assert routers[8081].select("POST", "/pkg.Svc/M", "", None, []).name == "h2"
    assert routers[8082].select("POST", "/pkg.Svc/M", "", None, []).name == "g"
    assert routers[8082].route_count() == 1


# ------------------------------------------------------------------ 2.8 gRPC


@pytest.mark.parametrize("path, expected", [
    ("/color.ColorService/GetColor", True),
    ("/color.ColorService/SetColor", True),
    ("/color.ColorServiceV2/Get", False),
    ("/other.Svc/GetColor", False),
    ("/color.colorservice/GetColor", False),
    ("/color.ColorService", False),
])
def test_grpc_service_name(path: str, expected: bool) -> None:
    rt = router(grpc_route("g", service="color.ColorService"), protocol="grpc")
    assert (rt.select("POST", path, "", "h", []) is not None) is expected


def test_grpc_metadata_uses_header_rules() -> None:
    rt = router(grpc_route("canary", service="s.S", metadata=(header("x-canary", "exact", "1"),)),
                grpc_route("stable", service="s.S"),
                grpc_route("absent", hostname=host_exact("h"),
                           metadata=(header("x-tenant", "prefix", "a", invert=True),)),
                protocol="grpc")
    assert rt.select("POST", "/s.S/M", "", None, [(b"x-canary", b"1")]).name == "canary"
    assert rt.select("POST", "/s.S/M", "", None, [(b"x-canary", b"2")]).name == "stable"
    assert rt.select("POST", "/s.S/M", "", "h", []) is None       # inverted value test, absent
    assert rt.select("POST", "/s.S/M", "", "h", [(b"x-tenant", b"b")]).name == "absent"


def test_grpc_hostname_only_route() -> None:
    rt = router(grpc_route("g", hostname=host_suffix("example.com")), protocol="grpc")
    assert rt.select("POST", "/any.Svc/Do", "", "api.example.com:443", []).name == "g"
    assert rt.select("POST", "/any.Svc/Do", "", "example.com", []) is None


# ------------------------------------------------------------------ section 4 items


def test_a7_inverted_value_test_fails_on_missing_header_presence_does_not() -> None:
    rt = router(http_route("not-v2", prefix="/", priority=0,
                           headers=(header("x-version", "exact", "v2", invert=True),)),
                http_route("no-header", prefix="/", priority=1,
                           headers=(header("x-version", invert=True),)))
    assert select(rt, "/", headers=[("x-version", "v1")]) == "not-v2"
    assert select(rt, "/") == "no-header"            # "absent or not v2" needs two routes
    assert select(rt, "/", headers=[("x-version", "v2")]) is None


def test_a8_query_raw_and_first_occurrence() -> None:
    rt = router(http_route("r", prefix="/", query_parameters=(query("k", "a%20b"),)))
    assert select(rt, "/?k=a%20b&k=x") == "r"
    assert select(rt, "/?k=a b") is None
    assert select(rt, "/?k=x&k=a%20b") is None
