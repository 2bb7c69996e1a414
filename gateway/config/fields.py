"""Typed readers for decoded YAML/JSON values that record problems instead of raising.

Every reader takes the `Checker` of the file being read, the field path used in
messages and the raw value; it returns the checked value, or ``None`` after
recording an error.  Callers compare `Checker.errors` before and after a block to
know whether the block as a whole is usable, so one bad field never hides the
next one: the loader reports every problem in one pass.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway.config.errors import ConfigIssue

INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)
PORT = (1, 65535)


class Checker:
    """Collects the issues found in one source file."""

    def __init__(self, source: str, issues: list[ConfigIssue]):
        self.source = source
        self._issues = issues
        self.errors = 0

    def error(self, path: str, message: str) -> None:
        self.errors += 1
        self._issues.append(ConfigIssue(self.source, path, message))

    def warn(self, path: str, message: str) -> None:
        self._issues.append(ConfigIssue(self.source, path, message, "warning"))


def describe(value: Any) -> str:
    """How a wrong value is shown in a message: its YAML/JSON type and, if short, itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'string "{shown}"'
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def obj(ck: Checker, path: str, value: Any, fields: Mapping[str, bool],
        ignored: Collection[str] = ()) -> dict[str, Any] | None:
    """A JSON object whose keys are exactly `fields` (name -> required).

    Unknown keys are errors: App Mesh rejected them, and a typo must never
    silently change routing.  `ignored` keys are accepted and dropped."""
    if not isinstance(value, Mapping):
        ck.error(path, f"must be an object (got {describe(value)})")
        return None
    for key in value:
        if key not in fields and key not in ignored:
            allowed = ", ".join(fields) or "none"
            ck.error(f"{path}.{key}", f"unknown field (allowed: {allowed})")
    for key, required in fields.items():
        if required and value.get(key) is None:
            ck.error(f"{path}.{key}", "required field missing")
    return {k: v for k, v in value.items() if k in fields and v is not None}


def one_of(ck: Checker, path: str, d: Mapping[str, Any], members: tuple[str, ...]) -> str | None:
    """A union: exactly one of `members` is set; returns it."""
    present = [m for m in members if d.get(m) is not None]
    if len(present) == 1:
        return present[0]
    got = ", ".join(present) if present else "none"
    ck.error(path, f"exactly one of {'|'.join(members)} (got {got})")
    return None


def string(ck: Checker, path: str, value: Any, min_len: int | None = None,
           max_len: int | None = None) -> str | None:
    if not isinstance(value, str):
        ck.error(path, f"must be a string (got {describe(value)})")
        return None
    n = len(value)
    if (min_len is not None and n < min_len) or (max_len is not None and n > max_len):
        if max_len is None:
            ck.error(path, f"length must be at least {min_len} characters (got {n})")
        else:
            ck.error(path, f"length must be between {min_len or 0} and {max_len} characters (got {n})")
        return None
    return value


def integer(ck: Checker, path: str, value: Any, lo: int | None = INT32[0],
            hi: int | None = INT32[1]) -> int | None:
    # bool is a subclass of int in Python; `port: true` must not become port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        ck.error(path, f"must be an integer (got {describe(value)})")
        return None
    return _in_range(ck, path, value, lo, hi)


def number(ck: Checker, path: str, value: Any, lo: float | None = None,
           hi: float | None = None, lo_exclusive: bool = False) -> float | None:
    """A plain number of seconds (process settings, not App Mesh shapes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ck.error(path, f"must be a number (got {describe(value)})")
        return None
    if value != value or value in (float("inf"), float("-inf")):
        ck.error(path, "must be a finite number")
        return None
    if lo_exclusive and lo is not None and value <= lo:
        ck.error(path, f"must be greater than {_num(lo)} (got {_num(value)})")
        return None
    checked = _in_range(ck, path, value, lo, hi)
    return None if checked is None else float(checked)


def _in_range(ck: Checker, path: str, value: Any, lo: Any, hi: Any) -> Any:
    too_low = lo is not None and value < lo
    too_high = hi is not None and value > hi
    if not (too_low or too_high):
        return value
    # Bounds that only express the wire type's width are not worth quoting as a range.
    lo_real = lo is not None and lo not in (INT32[0], INT64[0])
    hi_real = hi is not None and hi not in (INT32[1], INT64[1])
    if lo_real and hi_real:
        ck.error(path, f"must be between {_num(lo)} and {_num(hi)} (got {_num(value)})")
    elif too_low:
        ck.error(path, f"must be at least {_num(lo)} (got {_num(value)})")
    else:
        ck.error(path, f"must be at most {_num(hi)} (got {_num(value)})")
    return None


def _num(x: int | float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def boolean(ck: Checker, path: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        ck.error(path, f"must be a boolean (got {describe(value)})")
        return None
    return value


def enum(ck: Checker, path: str, value: Any, choices: tuple[str, ...]) -> str | None:
    # Case-sensitive, as App Mesh: "HTTP" is not "http".
    if isinstance(value, str) and value in choices:
        return value
    ck.error(path, f"must be one of {', '.join(choices)} (got {describe(value)})")
    return None


def items(ck: Checker, path: str, value: Any, min_items: int | None = None,
          max_items: int | None = None) -> list[Any] | None:
    if not isinstance(value, list):
        ck.error(path, f"must be a list (got {describe(value)})")
        return None
    n = len(value)
    if (min_items is not None and n < min_items) or (max_items is not None and n > max_items):
        if max_items is None:
            ck.error(path, f"must have at least {min_items} item{'s' if min_items != 1 else ''} (got {n})")
        else:
            ck.error(path, f"must have between {min_items or 0} and {max_items} items (got {n})")
        return None
    return value


def name_key(value: Any, index: int) -> str:
    """How an element of a named list appears in paths: its name, else its index."""
    if isinstance(value, Mapping):
        for key in ("gatewayRouteName", "virtualServiceName", "virtualGatewayName"):
            name = value.get(key)
            if isinstance(name, str) and name:
                return name
    return str(index)
