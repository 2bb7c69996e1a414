"""Path normalisation and request-target splitting (appmesh-gateway.md 2.1, A22)."""
from __future__ import annotations

import pytest

from gateway.routing.normalize import normalize_path, split_target


@pytest.mark.parametrize("raw, expected", [
    # 2.1 step 1: backslash -> slash
    ("/a\\b", "/a/b"),
    ("/a\\..\\admin", "/admin"),
    # step 2: unreserved escapes decoded, hex case-insensitive
    ("/%7E", "/~"),
    ("/%7e", "/~"),
    ("/%41%5a%61%7A%30%39", "/AZaz09"),
    ("/a%2Db%5Fc%2E", "/a-b_c."),
    ("/%2e", "/"),
    # ... every other escape kept exactly as sent
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2fb", "/a%2fb"),
    ("/a%5Cb", "/a%5Cb"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb", "/a%3fb"),
    ("/%252e%252e/x", "/%252e%252e/x"),     # decoded once, never twice
    ("/%zz/%4", "/%zz/%4"),                # invalid escapes pass through
    ("/a%", "/a%"),
    # step 3: slash runs collapse
    ("//a///b", "/a/b"),
    ("//", "/"),
    ("/a//", "/a/"),
    # step 4: dot segments (RFC 3986 5.2.4)
    ("/a/./b/../c", "/a/c"),
    ("/../x", "/x"),
    ("/..", "/"),
    ("/.", "/"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/../", "/a/"),
    ("/a/../../../b", "/b"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2e/admin", "/admin"),
    ("/public/.%2e/admin", "/admin"),
    ("/x/../chapter/page", "/chapter/page"),
    ("//chapter///page", "/chapter/page"),
    ("/a//../b", "/b"),                     # collapse first, then dots (2.1 order)
    # not dot segments
    ("/.well-known/acme", "/.well-known/acme"),
    ("/a/..b/c.", "/a/..b/c."),
    ("/a/...", "/a/..."),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["/", "/api/orders/42", "/a-b_c~d/e.f", "/caf\u00e9", "/a;b=c"])
def test_fast_path_returns_the_same_string(raw: str) -> None:
    assert normalize_path(raw) is raw


@pytest.mark.parametrize("raw", ["", "a/b", "*", "http://h/x", "%2F"])
def test_path_must_start_with_slash(raw: str) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        normalize_path(raw)


@pytest.mark.parametrize("raw", ["/a\x00b", "/a\nb", "/a\rb", "/a\tb", "/a\x7fb", "/a/%2e\x01"])
def test_control_characters_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        normalize_path(raw)


def test_latin1_decoded_utf8_bytes_are_not_control_characters() -> None:
    # "€" in UTF-8 read as latin-1 contains \x82, a C1 control: not rejected
    raw = "/\u20ac".encode("utf-8").decode("latin-1")
    assert normalize_path(raw) == raw


@pytest.mark.parametrize("target, expected", [
    ("/p", (None, "/p", "")),
    ("/p?q=1", (None, "/p", "q=1")),
    ("/p?", (None, "/p", "")),
    ("/p?a=1?b=2", (None, "/p", "a=1?b=2")),
    ("/chapter/page?x=1", (None, "/chapter/page", "x=1")),
    ("*", (None, "*", "")),
    ("http://shop.example.com/products/42?x=1", ("shop.example.com", "/products/42", "x=1")),
    ("HTTPS://Shop.example.com:8443/a", ("Shop.example.com:8443", "/a", "")),
    ("http://h", ("h", "/", "")),
    ("http://h?x", ("h", "/", "x")),
    ("http://[::1]:8080/a?b", ("[::1]:8080", "/a", "b")),
    ("http://h/a#frag", ("h", "/a", "")),
])
def test_split_target(target: str, expected: tuple) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["", "p", "ftp://h/x", "http:///x", "http://user@h/x", "://h/"])
def test_split_target_rejects(target: str) -> None:
    with pytest.raises(ValueError):
        split_target(target)
