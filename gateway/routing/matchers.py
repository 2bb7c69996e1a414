"""Compiled request conditions: host keys, header/metadata and query tests (2.1-2.5).

Each condition is compiled once into an object whose `test(view)` is the hot
path and whose `why_not(view)` explains a failure for the route tools; both
use the same value test, so the explanation cannot disagree with routing.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from gateway.config.model import HeaderCondition, MatchRange, QueryCondition, ValueMatch

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
_ASCII_WS = " \t\n\v\f\r"
# [0-9], not \d: int() and \d also accept non-ASCII digits and "1_000".
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def host_key(host: str | None) -> str:
    """Host as compared by hostname conditions: port stripped, lower-cased (2.3)."""
    if not host:
        return ""
    if host[0] == "[":
        end = host.find("]")
        if end > 0:
            host = host[:end + 1]
    elif host.count(":") == 1:
        host = host[:host.find(":")]
    return host.lower()


class RequestView:
    """The request attributes conditions look at; built only when a route has any.

    Repeated headers are joined lazily, and only for the names a route tests.
    """
    __slots__ = ("method", "path", "query", "host", "headers", "scheme", "_joined", "_params")

    def __init__(self, method: str, path: str, query: str, host: str | None,
                 headers: list[tuple[bytes, bytes]], scheme: str = "http") -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.headers = headers
        self.scheme = scheme
        self._joined: dict[bytes, str | None] | None = None
        self._params: dict[str, str] | None = None

    def header(self, name: bytes) -> str | None:
        """The values of `name` joined with "," in arrival order, None when absent (2.1)."""
        joined = self._joined
        if joined is None:
            joined = self._joined = {}
        elif name in joined:
            return joined[name]
        values = [v for n, v in self.headers if n == name]
        if not values:
            value = None
        else:
            # surrogateescape: UTF-8 values compare equal to UTF-8 config strings,
            # other bytes survive without matching anything by accident.
            value = b",".join(values).decode("utf-8", "surrogateescape")
        joined[name] = value
        return value

    def param(self, name: str) -> str | None:
        """First value of query parameter `name`, raw; "" for `?name`; None if absent (2.5)."""
        params = self._params
        if params is None:
            params = self._params = {}
            if self.query:
                for piece in self.query.split("&"):
                    key, _, value = piece.partition("=")
                    if key not in params:
                        params[key] = value
        return params.get(name)


# ------------------------------------------------------------------ value tests


def value_test(match: ValueMatch) -> Callable[[str], bool]:
    """The predicate of a HeaderMatchMethod / GrpcMetadataMatchMethod (2.4)."""
    kind, value = match.kind, match.value
    if kind == "exact":
        return value.__eq__  # type: ignore[union-attr,return-value]
    if kind == "prefix":
        return lambda v, p=value: v.startswith(p)
    if kind == "suffix":
        return lambda v, s=value: v.endswith(s)
    if kind == "regex":
        fullmatch = re.compile(value).fullmatch  # type: ignore[arg-type]
        return lambda v: fullmatch(v) is not None
    if kind == "range":
        assert isinstance(value, MatchRange)
        return _range_test(value.start, value.end)
    raise ValueError(f"unknown header match kind {kind!r}")


def _range_test(start: int, end: int) -> Callable[[str], bool]:
    def test(v: str) -> bool:
        s = v.strip(_ASCII_WS)
        if _DECIMAL.fullmatch(s) is None:
            return False
        n = int(s)
        return INT64_MIN <= n <= INT64_MAX and start <= n < end
    return test


def describe_value_match(match: ValueMatch) -> str:
    if match.kind == "range":
        r = match.value
        assert isinstance(r, MatchRange)
        return f"range [{r.start}, {r.end})"
    return f'{match.kind} "{match.value}"'


def describe_header_condition(cond: HeaderCondition, label: str = "header") -> str:
    if cond.match is None:
        return f"{label} {cond.name} {'absent' if cond.invert else 'present'}"
    return f"{label} {cond.name} {'not ' if cond.invert else ''}{describe_value_match(cond.match)}"


# ------------------------------------------------------------------ conditions


def _header_getter(name: str) -> Callable[[RequestView], str | None]:
    # 2.1: Envoy keeps Host as :authority, and pseudo-headers name request attributes.
    if name in ("host", ":authority"):
        return lambda view: view.host
    if name == ":method":
        return lambda view: view.method
    if name == ":path":
        return lambda view: view.path + "?" + view.query if view.query else view.path
    if name == ":scheme":
        return lambda view: view.scheme
    name_b = name.encode("latin-1")
    return lambda view: view.header(name_b)


class HeaderTest:
    """One `headers[]` / `metadata[]` entry with the absent-header rule of 2.4."""
    __slots__ = ("cond", "label", "_get", "_value_test", "_invert", "test")

    def __init__(self, cond: HeaderCondition, label: str = "header") -> None:
        self.cond = cond
        self.label = label
        self._get = _header_getter(cond.name)
        self._value_test = value_test(cond.match) if cond.match is not None else None
        self._invert = cond.invert
        self.test: Callable[[RequestView], bool] = (
            self._presence if self._value_test is None else self._value)

    def _presence(self, view: RequestView) -> bool:
        return (self._get(view) is None) == self._invert

    def _value(self, view: RequestView) -> bool:
        v = self._get(view)
        if v is None:
            return False          # absent: a value test fails, inverted or not (A7)
        return self._value_test(v) != self._invert  # type: ignore[misc]

    def why_not(self, view: RequestView) -> str | None:
        if self.test(view):
            return None
        v = self._get(view)
        got = "absent" if v is None else f'"{v}"'
        c = self.cond
        if c.match is None:
            expected = "absent" if c.invert else "present"
        else:
            expected = ("not " if c.invert else "") + describe_value_match(c.match)
            if v is None and c.invert:
                expected += " (an inverted value test needs the header present)"
        return f"{self.label} {c.name}: expected {expected}, got {got}"


class QueryTest:
    """One `queryParameters[]` entry: raw value, first occurrence wins (2.5, A8)."""
    __slots__ = ("cond", "test")

    def __init__(self, cond: QueryCondition) -> None:
        self.cond = cond
        name, exact = cond.name, cond.exact
        if exact is None:
            self.test: Callable[[RequestView], bool] = lambda view: view.param(name) is not None
        else:
            self.test = lambda view: view.param(name) == exact

    def why_not(self, view: RequestView) -> str | None:
        if self.test(view):
            return None
        v = view.param(self.cond.name)
        got = "absent" if v is None else f'"{v}"'
        expected = "present" if self.cond.exact is None else f'exact "{self.cond.exact}"'
        return f"query parameter {self.cond.name}: expected {expected}, got {got}"
