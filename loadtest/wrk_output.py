"""Parse the text report of `wrk --latency` into numbers.

wrk prints durations with whatever unit reads best (us, ms, s, m, h), so every
latency is normalised to milliseconds here; a report missing a field we rely on
raises ValueError instead of yielding a silent zero.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

_DURATION = r"([0-9.]+)(us|ms|s|m|h)"
_RE_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_RE_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+" + _DURATION + r"\s*$", re.M)
_RE_TOTAL = re.compile(r"^\s*(\d+) requests in " + _DURATION, re.M)
_RE_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_RE_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_sec: float
    requests: int
    duration_ms: float
    latency_ms: dict[str, float]            # "p50", "p75", "p90", "p99"
    socket_errors: dict[str, int] = field(default_factory=dict)   # connect/read/write/timeout
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def to_json(self) -> dict:
        d = asdict(self)
        d["errors"] = self.errors
        return d


def duration_ms(value: str, unit: str) -> float:
    try:
        return float(value) * _TIME_UNITS_MS[unit]
    except KeyError:
        raise ValueError(f"unknown wrk time unit {unit!r}") from None


def parse(text: str) -> WrkResult:
    rps = _RE_RPS.search(text)
    total = _RE_TOTAL.search(text)
    if rps is None or total is None:
        raise ValueError("not a wrk report (no 'Requests/sec' or 'N requests in' line)")
    latency = {f"p{m.group(1)}": duration_ms(m.group(2), m.group(3))
               for m in _RE_PERCENTILE.finditer(text)}
    if "p50" not in latency or "p99" not in latency:
        raise ValueError("wrk report has no latency distribution (run wrk with --latency)")
    sock = _RE_SOCKET.search(text)
    socket_errors = ({} if sock is None else
                     dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))))
    non = _RE_NON_2XX.search(text)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        requests=int(total.group(1)),
        duration_ms=duration_ms(total.group(2), total.group(3)),
        latency_ms=latency,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non.group(1)) if non else 0,
    )
