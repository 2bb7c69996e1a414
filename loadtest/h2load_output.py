"""Parse what h2load reports: its text summary and its per-request --log-file.

The summary has the rate, the request counters and the status classes but no
latency percentiles (only min/max/mean/sd of "time for request"), so p50/p99
come from the log file, one row per request finished in the measured duration
(warm-up excluded): start time in us since the epoch, HTTP status (-1 for a
stream that failed), microseconds until the end of the response.

h2load counts 3xx as success; the benchmark does not (a gRPC call or a proxied
GET must get 200), so `errors` adds the 3xx responses to h2load's "failed"
(which already holds 4xx/5xx and streams that errored). A report lacking a line
we rely on raises ValueError rather than yield a silent zero.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}

_RE_FINISHED = re.compile(r"^finished in ([0-9.]+)(us|ms|s), ([0-9.]+) req/s", re.M)
_RE_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.M)
_RE_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_RE_TIMING = re.compile(r"Timing-based test with ([0-9.]+)(us|ms|s) of warm-up time and "
                        r"([0-9.]+)(us|ms|s) of main duration")
_DUR = r"([0-9.]+)(us|ms|s)"
_RE_REQUEST_TIME = re.compile(r"^time for request:\s+" + r"\s+".join([_DUR] * 4), re.M)
_RE_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.M)

PERCENTILES = (50, 75, 90, 99)


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


@dataclass(frozen=True, slots=True)
class LogStats:
    rows: int
    statuses: dict[int, int]            # HTTP status (-1: stream failed) -> rows
    latency_ms: dict[str, float]        # p50, p75, p90, p99, max over completed streams


def parse_log(text: str) -> LogStats:
    """Read h2load's --log-file rows (tab-separated: start_us, status, duration_us, ...)."""
    statuses: dict[int, int] = {}
    durations: list[int] = []
    rows = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        cols = line.split("\t")
        try:
            status, duration_us = int(cols[1]), int(cols[2])
        except (IndexError, ValueError):
            raise ValueError(f"h2load log line {lineno} is not 'start<TAB>status<TAB>"
                             f"duration_us': {line[:80]!r}") from None
        rows += 1
        statuses[status] = statuses.get(status, 0) + 1
        if status != -1:    # a failed stream's time says nothing about a response
            durations.append(duration_us)
    latency: dict[str, float] = {}
    if durations:
        durations.sort()
        n = len(durations)
        for q in PERCENTILES:
            # nearest rank: the smallest value with at least q % of the rows at or below it
            latency[f"p{q}"] = durations[max(0, math.ceil(q * n / 100) - 1)] / 1000.0
        latency["max"] = durations[-1] / 1000.0
    return LogStats(rows, statuses, latency)


@dataclass(frozen=True, slots=True)
class H2LoadResult:
    requests_per_sec: float             # h2load's req/s: streams finished per measured second
    requests: int                       # streams finished ("done") in the measured duration
    duration_ms: float                  # the measured duration (warm-up excluded)
    warmup_ms: float
    latency_ms: dict[str, float | None]  # p50..p99 and max from the log; mean from the summary
    succeeded: int = 0                  # h2load's count: 2xx and 3xx
    failed: int = 0                     # 4xx/5xx and errored streams
    errored: int = 0                    # reset streams, dropped connections
    timeout: int = 0
    status_classes: dict[str, int] = field(default_factory=dict)    # "2xx".."5xx"
    log_statuses: dict[str, int] = field(default_factory=dict)      # from the log, by status
    protocol: str = ""                  # "h2c" when prior knowledge was spoken

    @property
    def non_2xx(self) -> int:
        return sum(v for k, v in self.status_classes.items() if k != "2xx")

    @property
    def errors(self) -> int:
        return self.failed + self.status_classes.get("3xx", 0)

    def to_json(self) -> dict:
        d = asdict(self)
        d["errors"] = self.errors
        d["non_2xx"] = self.non_2xx
        return d


def parse(text: str, log_text: str | None = None) -> H2LoadResult:
    """The summary h2load prints on stdout, plus its --log-file for the percentiles.

    Without a log, p50..p99 are None and only the summary's mean and max remain.
    """
    fin = _RE_FINISHED.search(text)
    req = _RE_REQUESTS.search(text)
    st = _RE_STATUS.search(text)
    if fin is None or req is None or st is None:
        raise ValueError("not an h2load report (no 'finished in', 'requests:' or "
                         f"'status codes:' line): {text.strip()[-300:]!r}")
    _total, _started, done, succeeded, failed, errored, timeout = map(int, req.groups())
    if done == 0:
        raise ValueError("h2load finished no request in the measured duration "
                         f"(the server answered nothing usable): {text.strip()[-300:]!r}")
    timing = _RE_TIMING.search(text)
    if timing:
        warmup_ms, duration = _ms(*timing.group(1, 2)), _ms(*timing.group(3, 4))
    else:
        warmup_ms, duration = 0.0, _ms(*fin.group(1, 2))
    latency: dict[str, float | None] = {f"p{q}": None for q in PERCENTILES}
    rt = _RE_REQUEST_TIME.search(text)
    if rt:
        latency["max"] = _ms(rt.group(3), rt.group(4))
        latency["mean"] = _ms(rt.group(5), rt.group(6))
    log_statuses: dict[str, int] = {}
    if log_text is not None:
        stats = parse_log(log_text)
        if stats.rows == 0:
            raise ValueError(f"h2load reported {done} finished requests but its log is empty")
        latency.update(stats.latency_ms)
        log_statuses = {str(k): v for k, v in sorted(stats.statuses.items())}
    proto = _RE_PROTOCOL.search(text)
    return H2LoadResult(
        requests_per_sec=float(fin.group(3)), requests=done, duration_ms=duration,
        warmup_ms=warmup_ms, latency_ms=latency, succeeded=succeeded, failed=failed,
        errored=errored, timeout=timeout,
        status_classes=dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, st.groups()))),
        log_statuses=log_statuses, protocol=proto.group(1) if proto else "")
