"""Outlier detection: passive ejection of failing endpoints (App Mesh OutlierDetection, 2.14).

One `OutlierDetector` per backend group that sets `outlierDetection`, one `Monitor` per
endpoint of it (`Endpoint.outlier`; None when the group has no outlier detection, so the
request path pays one attribute test).

Semantics (README "Outlier detection"), Envoy's consecutive_5xx detector with
split_external_local_origin_errors off:

- Every finished exchange reports its endpoint's result once (`Exchange.finish`): a 5xx
  from the backend, or a failure of our own making toward it (connect failure, reset,
  invalid response, timeout: the UF, UC, UR, UPE and UT replies, which Envoy maps to 503,
  502 and 504) counts one error; any other response (1xx-4xx, or a gRPC response whose
  headers carry no server-error grpc-status) resets the count.  Exchanges that got no
  answer for another reason (the client went away, an overflow) report nothing.
- At `maxServerErrors` consecutive errors the endpoint is ejected at once (Envoy ejects
  inline, not at the sweep) for `baseEjectionDuration x n`, n being how many times it has
  been ejected, capped at Envoy's default max_ejection_time (300 s, or the base when
  larger).  Each sweep that finds an endpoint back in service for a whole interval lowers
  n by one (Envoy's backoff decay), so an endpoint that behaves is forgiven over time.
- Ejected endpoints return at the first sweep after their time is up; sweeps run every
  `interval`, driven by the gateway's 100 ms tick (no timer per ejection).
- maxEjectionPercent: a new ejection is allowed when ejected+1 endpoints are at most that
  share of the group's endpoints, exactly Envoy's `100 * (ejected + 1) / hosts <= max`
  test (no rounding: with 3 endpoints and 50%, one may be ejected, not two).  The App
  Mesh API adds "will eject at least one host regardless of the value" (Envoy's
  always_eject_one_host): when nothing is ejected, one endpoint always may be, even at 0%.
  An endpoint refused for that reason stays counting and is ejected at its next error
  once there is room (Envoy would wait for a success and another full run of errors).
- Counters are per worker process, like Envoy's per-cluster detector in one process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.model import OutlierDetection

if TYPE_CHECKING:
    from gateway.observability.stats import ClusterStats
    from gateway.proxy.exchange import Exchange
    from gateway.upstream.cluster import Endpoint, Group

MAX_EJECTION_TIME = 300.0        # Envoy's max_ejection_time default, seconds

# Local replies that stand for the endpoint failing (Envoy's locally originated
# connect failures, resets and timeouts, counted as 5xx when not split out).
LOCAL_FAILURES = frozenset(("UF", "UC", "UR", "UPE", "UT"))
# Envoy's grpcToHttpStatus for the codes it maps to 5xx: UNKNOWN, DEADLINE_EXCEEDED,
# UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
GRPC_SERVER_ERRORS = frozenset((b"2", b"4", b"12", b"13", b"14", b"15"))


class Monitor:
    """The outlier state of one endpoint."""
    __slots__ = ("detector", "endpoint", "errors", "ejections", "until", "returned_at")

    def __init__(self, detector: OutlierDetector, endpoint: Endpoint):
        self.detector = detector
        self.endpoint = endpoint
        self.errors = 0             # consecutive errors
        self.ejections = 0          # the backoff multiplier: times ejected, decayed
        self.until = 0.0            # loop time the current ejection ends; 0 = not ejected
        self.returned_at = 0.0

    def observe(self, ex: Exchange) -> None:
        """An exchange on this endpoint finished: count its result."""
        flags = ex.response_flags
        if flags in LOCAL_FAILURES:
            self.failure()
        elif flags != "-":
            return      # not the endpoint's doing (client gone, overflow, ...)
        elif ex.status >= 500 or (ex.grpc and _grpc_server_error(ex.response_headers)):
            self.failure()
        elif ex.status:
            self.errors = 0

    def success(self) -> None:
        self.errors = 0

    def failure(self) -> None:
        self.errors += 1
        if self.errors >= self.detector.max_errors and not self.until:
            self.detector.try_eject(self)


def _grpc_server_error(headers) -> bool:
    # Envoy reads grpc-status for outlier detection from the response headers only,
    # that is from trailers-only responses (errors before any message).
    if headers:
        for name, value in headers:
            if name == b"grpc-status":
                return value in GRPC_SERVER_ERRORS
    return False


class OutlierDetector:
    """Ejections of one backend group."""
    __slots__ = ("group", "spec", "stats", "loop", "max_errors", "interval", "base",
                 "max_time", "max_percent", "ejected", "due")

    def __init__(self, group: Group, spec: OutlierDetection, stats: ClusterStats, loop):
        self.group = group
        self.spec = spec
        self.stats = stats
        # Ejections read the loop's clock, not the tick's coarse one (up to 100 ms
        # behind), so an ejection never ends early.
        self.loop = loop
        self.max_errors = spec.max_server_errors
        self.interval = spec.interval
        self.base = spec.base_ejection_duration
        self.max_time = max(MAX_EJECTION_TIME, self.base)
        self.max_percent = spec.max_ejection_percent
        self.ejected: list[Monitor] = []
        self.due = loop.time() + self.interval

    def monitor(self, endpoint: Endpoint) -> Monitor:
        return Monitor(self, endpoint)

    def try_eject(self, m: Monitor) -> None:
        hosts = len(self.group.endpoints)
        active = len(self.ejected)
        if active and 100 * (active + 1) > self.max_percent * hosts:
            self.stats.outlier_ejections_overflow += 1
            return
        now = self.loop.time()
        m.ejections += 1
        m.until = now + min(self.base * m.ejections, self.max_time)
        self.ejected.append(m)
        self.stats.outlier_ejections_total += 1
        self.stats.outlier_ejected += 1
        m.endpoint.set_ejected(True)

    def tick(self, now: float) -> None:
        """Called by the gateway tick; sweeps once per interval."""
        if now < self.due:
            return
        self.due = now + self.interval
        if self.ejected:
            keep = []
            for m in self.ejected:
                if now >= m.until or m.endpoint.draining:
                    self._uneject(m, now)
                else:
                    keep.append(m)
            self.ejected = keep
        for endpoint in self.group.endpoints:
            m = endpoint.outlier
            if (m is not None and not m.until and m.ejections
                    and now - m.returned_at >= self.interval):
                m.ejections -= 1

    def _uneject(self, m: Monitor, now: float) -> None:
        m.until = 0.0
        m.errors = 0
        m.returned_at = now
        self.stats.outlier_ejected -= 1
        m.endpoint.set_ejected(False)
