"""Load-time check that a regex is in the RE2 subset App Mesh accepted (spec 2.2, A6).

Matching uses Python's `re` with fullmatch, so a pattern must compile there
too; constructs Python has but RE2 lacks are refused so that a configuration
valid here was valid in App Mesh, and RE2 spellings Python reads differently
are refused rather than silently changing meaning.
"""
from __future__ import annotations

import re
import warnings

_QUANTIFIER_END = set("*+?}")


def regex_problem(pattern: str) -> str | None:
    """An error message for `pattern`, or None when it is acceptable."""
    problem = _re2_problem(pattern)
    if problem:
        return problem
    with warnings.catch_warnings():
        # "Possible nested set" etc. are RE2/Python divergences: treat as errors.
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
        except (re.error, FutureWarning, DeprecationWarning) as exc:
            return f"invalid regular expression: {exc}"
    return None


def _re2_problem(p: str) -> str | None:
    i, n = 0, len(p)
    in_class = False
    prev_quantifier = False   # the previous token was a quantifier (for possessive `a++`)
    while i < n:
        c = p[i]
        if c == "\\" and i + 1 < n:
            nxt = p[i + 1]
            if not in_class and nxt in "123456789":
                return f"backreference \\{nxt} is not supported (RE2 syntax)"
            if nxt in "pP":
                return "Unicode classes \\p / \\P are not supported"
            if nxt == "z":
                return "\\z is not supported here; the whole value is always matched"
            if nxt in "CQE":
                return f"\\{nxt} is not supported"
            i += 2
            prev_quantifier = False
            continue
        if in_class:
            if c == "[" and p.startswith("[:", i):
                return "POSIX character classes ([:alpha:]) are not supported"
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 1
            # a leading "]" (after an optional "^") is a literal in the class
            if i < n and p[i] == "^":
                i += 1
            if i < n and p[i] == "]":
                i += 1
            prev_quantifier = False
            continue
        if c == "(" and p.startswith("(?", i):
            rest = p[i + 2:i + 4]
            if rest.startswith(("=", "!")) or rest in ("<=", "<!"):
                return "lookaround assertions are not supported (RE2 syntax)"
            if rest.startswith(">"):
                return "atomic groups (?>...) are not supported (RE2 syntax)"
            if rest.startswith("P="):
                return "named backreferences (?P=name) are not supported (RE2 syntax)"
            if rest.startswith("("):
                return "conditional groups are not supported (RE2 syntax)"
            if rest.startswith("#"):
                return "comment groups (?#...) are not supported (RE2 syntax)"
        if c == "+" and prev_quantifier:
            return "possessive quantifiers (such as a++) are not supported (RE2 syntax)"
        prev_quantifier = c in _QUANTIFIER_END and not (c == "?" and prev_quantifier)
        if c == "}" and not _closes_repeat(p, i):
            prev_quantifier = False
        i += 1
    return None


def _closes_repeat(p: str, i: int) -> bool:
    """Whether the `}` at i ends a {n}, {n,} or {n,m} repeat."""
    j = p.rfind("{", 0, i)
    return j >= 0 and re.fullmatch(r"\d+(,\d*)?", p[j + 1:i]) is not None
