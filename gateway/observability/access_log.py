"""Envoy-style access log: one line per finished exchange.

The format string is compiled once into a list of small callables (literal
text becomes a callable returning a constant), so formatting a line is one
pass over that list.  Lines are buffered in memory and written by `flush()`,
which the runtime calls once a second and at shutdown; a failed write is
counted and the lines are dropped, never raised into the request path.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from ..config.model import AccessLog
from .stats import Stats

log = logging.getLogger(__name__)

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

FLUSH_THRESHOLD = 64 * 1024
MISSING = "-"

Getter = Callable[[Any], str]


class FormatError(ValueError):
    """An access-log format string that cannot be compiled."""


# Envoy's command grammar: NAME, optional (ARG) without ')', optional :LENGTH.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_HEADER_NAME = re.compile(r":?[A-Za-z0-9!#$&'*+.^_`|~-]+")


# ----------------------------------------------------------------- value helpers

def _dash(v: str | None) -> str:
    return MISSING if v is None else v


def _decode(v: bytes) -> str:
    # backslashreplace keeps non-UTF-8 bytes visible instead of losing them.
    return v.decode("utf-8", "backslashreplace")


def _ms(seconds: float | None) -> str:
    # Envoy truncates durations to whole milliseconds.
    return MISSING if seconds is None else str(int(seconds * 1000))


def _address(addr: tuple | None, *, port: bool = True, host: bool = True) -> str:
    if not addr:
        return MISSING
    h, p = str(addr[0]), addr[1]
    if not port:
        return h
    if not host:
        return str(p)
    return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"


def _find_header(headers: list | None, name: bytes, fold_case: bool) -> str | None:
    """All values of `name`, joined with ',' (HTTP list semantics), or None."""
    if not headers:
        return None
    if fold_case:
        values = [v for n, v in headers if n.lower() == name]
    else:
        values = [v for n, v in headers if n == name]
    if not values:
        return None
    return _decode(values[0]) if len(values) == 1 else ",".join(map(_decode, values))


# ------------------------------------------------------------ header operators

def _request_getter(name: str) -> Callable[[Any], str | None]:
    if name == ":method":
        return lambda ex: ex.method
    if name == ":path":
        # As forwarded; an exchange never forwarded (e.g. no route) kept the original.
        return lambda ex: ex.original_path if ex.path is None else ex.path
    if name == "x-envoy-original-path":
        # Only set when a rewrite changed the path; a client-sent header is not trusted.
        return lambda ex: (ex.original_path
                           if ex.path is not None and ex.path != ex.original_path else None)
    if name == ":authority":
        return lambda ex: (_find_header(ex.request_headers, b":authority", False)
                           or _find_header(ex.request_headers, b"host", False))
    key = name.encode("latin-1")
    # The request path hands request header names over already lower-cased.
    return lambda ex: _find_header(ex.request_headers, key, False)


def _response_getter(name: str) -> Callable[[Any], str | None]:
    if name == ":status":
        return lambda ex: str(ex.status) if ex.status else None
    key = name.encode("latin-1")
    return lambda ex: _find_header(ex.response_headers, key, True)


def _trailer_getter(name: str) -> Callable[[Any], str | None]:
    key = name.encode("latin-1")
    return lambda ex: _find_header(ex.trailers, key, True)


def _header_operator(lookup: Callable[[str], Callable[[Any], str | None]]):
    def build(op: str, arg: str | None, length: int | None) -> Getter:
        if not arg:
            raise FormatError(f"%{op}(...)% needs a header name, e.g. %{op}(USER-AGENT)%")
        names = arg.split("?")
        if len(names) > 2:
            raise FormatError(f"%{op}({arg})%: at most one alternative header (H1?H2)")
        for n in names:
            if not _HEADER_NAME.fullmatch(n):
                raise FormatError(f"%{op}({arg})%: {n!r} is not a valid header name")
        getters = [lookup(n.lower()) for n in names]

        if len(getters) == 1:
            (g,) = getters

            def value(ex: Any) -> str:
                v = g(ex)
                if v is None:
                    return MISSING
                return v if length is None else v[:length]
        else:
            g1, g2 = getters

            def value(ex: Any) -> str:
                v = g1(ex)
                if v is None:
                    v = g2(ex)
                    if v is None:
                        return MISSING
                return v if length is None else v[:length]
        return value
    return build


# ------------------------------------------------------------- other operators

def _start_time(op: str, arg: str | None, length: int | None) -> Getter:
    _no_length(op, length)
    if not arg:
        last = [-1, ""]          # strftime only when the second changes

        def default(ex: Any) -> str:
            us = round(ex.start_time * 1_000_000)
            sec, us = divmod(us, 1_000_000)
            if sec != last[0]:
                last[0], last[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            return f"{last[1]}.{us // 1000:03d}Z"
        return default
    return _custom_start_time(arg)


_TIME_SPECIAL = re.compile(r"%(%|[1-9]?f|s)")


def _custom_start_time(fmt: str) -> Getter:
    """Envoy's START_TIME(fmt): strftime plus %[1-9]f (fraction digits) and %s (epoch)."""
    parts: list[str | tuple[str, int]] = []
    pos = 0
    for m in _TIME_SPECIAL.finditer(fmt):
        code = m.group(1)
        if code == "%":
            continue                    # strftime handles %% itself
        parts.append(fmt[pos:m.start()])
        parts.append(("s", 0) if code == "s" else ("f", int(code[:-1] or 9)))
        pos = m.end()
    parts.append(fmt[pos:])

    def custom(ex: Any) -> str:
        us = round(ex.start_time * 1_000_000)
        sec, us = divmod(us, 1_000_000)
        tm = time.gmtime(sec)
        out = []
        for p in parts:
            if isinstance(p, str):
                if p:
                    out.append(time.strftime(p, tm))
            elif p[0] == "s":
                out.append(str(sec))
            else:
                out.append(f"{us * 1000:09d}"[:p[1]])
        return "".join(out)

    try:
        custom(_ProbeTime)
    except ValueError as e:
        raise FormatError(f"%START_TIME({fmt})%: {e}") from None
    return custom


class _ProbeTime:
    """Stands in for an exchange when a START_TIME format is tried at compile time."""
    start_time = 0.0


_GRPC_CAMEL = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
               "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
               "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
               "Unauthenticated")
_GRPC_SNAKE = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
               "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
               "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
               "UNAUTHENTICATED")


def _grpc_status_of(ex: Any) -> str | None:
    """The gateway's own status, else the backend's from its trailers, else from a
    trailers-only head; looked up only when a log line asks for it."""
    if ex.grpc_status is not None:
        return ex.grpc_status
    for fields in (ex.trailers, ex.response_headers):
        for name, value in fields or ():
            if name == b"grpc-status":
                return value.decode("latin-1")
    return None


def _grpc_status(op: str, arg: str | None, length: int | None) -> Getter:
    _no_length(op, length)
    style = arg or "CAMEL_STRING"
    if style == "NUMBER":
        return lambda ex: _dash(_grpc_status_of(ex))
    if style not in ("CAMEL_STRING", "SNAKE_STRING"):
        raise FormatError(f"%GRPC_STATUS({arg})%: expected CAMEL_STRING, SNAKE_STRING or NUMBER")
    names = _GRPC_CAMEL if style == "CAMEL_STRING" else _GRPC_SNAKE

    def value(ex: Any) -> str:
        s = _grpc_status_of(ex)
        if s is None:
            return MISSING
        if s.isdigit() and int(s) < len(names):
            return names[int(s)]
        return s
    return value


def _local_reply_body(ex: Any) -> str:
    body = ex.local_reply_body
    # Local reply bodies end with a newline for curl users; the log line must not.
    return MISSING if body is None else body.rstrip("\r\n")


_HOSTNAME = socket.gethostname()

_SIMPLE: dict[str, Getter] = {
    "RESPONSE_CODE": lambda ex: str(ex.status or 0),
    "RESPONSE_FLAGS": lambda ex: ex.response_flags or MISSING,
    "BYTES_RECEIVED": lambda ex: str(ex.bytes_received or 0),
    "BYTES_SENT": lambda ex: str(ex.bytes_sent or 0),
    "DURATION": lambda ex: _ms(ex.duration),
    "RESPONSE_DURATION": lambda ex: _ms(ex.response_duration),
    "PROTOCOL": lambda ex: ex.protocol or MISSING,
    "UPSTREAM_HOST": lambda ex: _dash(ex.upstream_host),
    "UPSTREAM_CLUSTER": lambda ex: _dash(ex.cluster),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda ex: _address(ex.downstream_remote),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda ex: _address(ex.downstream_remote, port=False),
    "DOWNSTREAM_REMOTE_PORT": lambda ex: _address(ex.downstream_remote, host=False),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda ex: _address(ex.downstream_local),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda ex: _address(ex.downstream_local, port=False),
    "DOWNSTREAM_LOCAL_PORT": lambda ex: _address(ex.downstream_local, host=False),
    "REQUESTED_SERVER_NAME": lambda ex: ex.requested_server_name or MISSING,
    "ROUTE_NAME": lambda ex: ex.route_name or MISSING,
    "LOCAL_REPLY_BODY": _local_reply_body,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda ex: ex.upstream_failure_reason or MISSING,
    "HOSTNAME": lambda ex: _HOSTNAME,
}


def _no_length(op: str, length: int | None) -> None:
    if length is not None:
        raise FormatError(f"%{op}%: a :N length limit applies only to REQ, RESP and TRAILER")


def _simple(getter: Getter):
    def build(op: str, arg: str | None, length: int | None) -> Getter:
        if arg is not None:
            raise FormatError(f"%{op}% takes no argument, got %{op}({arg})%")
        _no_length(op, length)
        return getter
    return build


_BUILDERS: dict[str, Callable[[str, str | None, int | None], Getter]] = {
    "START_TIME": _start_time,
    "REQ": _header_operator(_request_getter),
    "RESP": _header_operator(_response_getter),
    "TRAILER": _header_operator(_trailer_getter),
    "GRPC_STATUS": _grpc_status,
    **{name: _simple(g) for name, g in _SIMPLE.items()},
}


# ---------------------------------------------------------------------- compile

def _constant(text: str) -> Getter:
    return lambda ex: text


def compile_format(fmt: str) -> list[Getter]:
    """The format string as a list of callables; raises FormatError."""
    pieces: list[Getter] = []
    literal: list[str] = []

    def close_literal() -> None:
        if literal:
            pieces.append(_constant("".join(literal)))
            literal.clear()

    i, n = 0, len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            literal.append(fmt[i:])
            break
        literal.append(fmt[i:j])
        if fmt.startswith("%%", j):
            literal.append("%")
            i = j + 2
            continue
        m = _COMMAND.match(fmt, j)
        if m is None:
            snippet = fmt[j:j + 40]
            raise FormatError(f"malformed operator at position {j}: {snippet!r} "
                              "(expected %NAME%, %NAME(arg)% or %NAME(arg):N%; write %% for a literal %)")
        op, arg, length = m.group(1), m.group(2), m.group(3)
        build = _BUILDERS.get(op)
        if build is None:
            raise FormatError(f"unknown operator %{op}% at position {j}")
        close_literal()
        pieces.append(build(op, arg, int(length) if length is not None else None))
        i = m.end()
    close_literal()
    return pieces


def check_format(fmt: str) -> str | None:
    """None if `fmt` compiles, else a message naming the first bad operator."""
    try:
        compile_format(fmt)
    except FormatError as e:
        return str(e)
    return None


def _line_formatter(config: AccessLog) -> Callable[[Any], str]:
    """One callable producing a whole line, newline included."""
    if config.json_format is not None:
        fields = []
        for key, value_fmt in config.json_format:
            try:
                getters = compile_format(value_fmt)
            except FormatError as e:
                raise FormatError(f"json key {key!r}: {e}") from None
            fields.append((json.dumps(key, ensure_ascii=False) + ":", getters))
        dumps = json.dumps

        def json_line(ex: Any) -> str:
            return "{" + ",".join(
                k + dumps("".join([g(ex) for g in gs]), ensure_ascii=False)
                for k, gs in fields) + "}\n"
        return json_line

    fmt = config.text_format if config.text_format is not None else DEFAULT_FORMAT
    if not fmt.endswith("\n"):
        fmt += "\n"
    getters = compile_format(fmt)

    def text_line(ex: Any) -> str:
        return "".join([g(ex) for g in getters])
    return text_line


# ----------------------------------------------------------------------- writer

def _open(path: str) -> int:
    # Opening /dev/stdout fails with ENXIO when stdout is a socket (systemd,
    # some container runtimes); duplicating the descriptor always works.
    if path == "/dev/stdout":
        return os.dup(1)
    if path == "/dev/stderr":
        return os.dup(2)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


class AccessLogger:
    """Formats exchanges into an in-memory buffer; `flush()` appends it to the file."""

    def __init__(self, config: AccessLog, *, stats: Stats | None = None,
                 flush_threshold: int = FLUSH_THRESHOLD) -> None:
        self.path = config.path
        self._format = _line_formatter(config)     # raises FormatError
        self._stats = stats
        self._threshold = flush_threshold
        self._buffer: list[str] = []
        self._buffered = 0
        self._failing = False
        self.write_errors = 0      # lines dropped; mirrored into stats if given
        try:
            self._fd = _open(self.path)
        except OSError as e:
            raise OSError(e.errno, f"cannot open access log {self.path!r}: {e.strerror}") from e

    def format(self, exchange: Any) -> str:
        """The line `log()` would write, newline included."""
        return self._format(exchange)

    def log(self, exchange: Any) -> None:
        line = self._format(exchange)
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered > self._threshold:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8", "backslashreplace")
        self._buffer.clear()
        self._buffered = 0
        view = memoryview(data)
        try:
            if self._fd < 0:
                raise OSError("access log is closed")
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            # Lines cut short count as lost too: each ends with the newline.
            self._count_lost(bytes(view).count(b"\n") or 1, e)
            return
        if self._failing:
            self._failing = False
            log.warning("access log %s: writing works again", self.path)

    def _count_lost(self, lines: int, error: OSError) -> None:
        self.write_errors += lines
        if self._stats is not None:
            self._stats.access_log_write_errors += lines
        if not self._failing:
            # Once per failure episode, not per line: a full disk must not flood stderr.
            self._failing = True
            log.warning("access log %s: write failed (%s); dropping lines until it recovers",
                        self.path, error)

    def reopen(self) -> None:
        """Reopen the path (after log rotation); keeps the old file on failure."""
        self.flush()
        try:
            fd = _open(self.path)
        except OSError as e:
            log.warning("access log %s: reopen failed (%s); keeping the old file", self.path, e)
            return
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
