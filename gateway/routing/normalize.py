"""Request-target parsing and path normalisation (appmesh-gateway.md 2.1, A22).

App Mesh turned on Envoy's `normalize_path` and `merge_slashes` for every
gateway route, so the path that is matched (and sent upstream) is the
normalised one: a client cannot hide `..` or `//` from the router and have a
backend resolve it afterwards.
"""
from __future__ import annotations

import re

# RFC 3986 2.3: only these may be decoded without changing the meaning of a URI.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLASH_RUN = re.compile(r"/{2,}")


def normalize_path(raw_path: str) -> str:
    """The normalised form of a path (no query string) that starts with "/".

    Raises ValueError for a path that does not start with "/" or that contains
    control characters; the asterisk form "*" is the caller's business.
    """
    if not raw_path.startswith("/"):
        raise ValueError(f"request path must start with '/': {raw_path[:80]!r}")
    # isprintable() is a fast pre-check; it is also False for harmless non-ASCII
    # (e.g. UTF-8 bytes read as latin-1), so the exact test only runs then.
    if not raw_path.isprintable() and _CONTROL.search(raw_path):
        raise ValueError("request path contains control characters")
    if ("\\" not in raw_path and "%" not in raw_path and "//" not in raw_path
            and "/." not in raw_path):
        return raw_path
    path = raw_path.replace("\\", "/")
    if "%" in path:
        path = _decode_unreserved(path)
    if "//" in path:
        path = _SLASH_RUN.sub("/", path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path


def _decode_unreserved(path: str) -> str:
    # Escapes of anything else (notably %2F and %5C) are kept exactly as sent,
    # and an invalid escape ("%zz", a trailing "%") is passed through untouched.
    out: list[str] = []
    i = 0
    n = len(path)
    start = 0
    while True:
        i = path.find("%", i)
        if i < 0 or i + 2 >= n:
            break
        h1, h2 = path[i + 1], path[i + 2]
        if h1 in _HEX and h2 in _HEX:
            ch = chr(int(h1 + h2, 16))
            if ch in _UNRESERVED:
                out.append(path[start:i])
                out.append(ch)
                i += 3
                start = i
                continue
        i += 1
    if not out:
        return path
    out.append(path[start:])
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path whose slash runs are already collapsed."""
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "." or seg == "..":
            if seg == ".." and out:
                out.pop()
            if i == last:
                # "/a/b/.." ends in a directory: RFC 3986 keeps the trailing "/".
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def split_target(target: str) -> tuple[str | None, str, str]:
    """Split a request target into (authority, path, query).

    Origin form "/p?q" gives (None, "/p", "q"); absolute form
    "http://host:8080/p?q" gives ("host:8080", "/p", "q") (an empty path becomes
    "/"); the asterisk form "*" gives (None, "*", ""). The query is everything
    after the first "?", without it ("" when there is none). The path is not
    normalised here. Raises ValueError for anything else.
    """
    if target.startswith("/"):
        q = target.find("?")
        if q < 0:
            return None, target, ""
        return None, target[:q], target[q + 1:]
    if target == "*":
        return None, "*", ""
    scheme_end = target.find("://")
    if scheme_end <= 0 or target[:scheme_end].lower() not in ("http", "https"):
        raise ValueError(f"unsupported request target: {target[:80]!r}")
    rest = target[scheme_end + 3:]
    cut = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, remainder = rest[:cut], rest[cut:]
    if not authority or "@" in authority:
        # userinfo in a request target is forbidden (RFC 9110 4.2.4)
        raise ValueError(f"invalid authority in request target: {target[:80]!r}")
    hash_at = remainder.find("#")
    if hash_at >= 0:
        remainder = remainder[:hash_at]
    q = remainder.find("?")
    if q < 0:
        path, query = remainder, ""
    else:
        path, query = remainder[:q], remainder[q + 1:]
    return authority, path or "/", query
