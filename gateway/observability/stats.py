"""Every counter, gauge and histogram the gateway keeps, in one table.

The request path only does plain attribute increments on the slot objects
below (``cluster.upstream_rq_total += 1``); the Prometheus exposition
(`prometheus.py`) reads these objects at scrape time and builds the metric
families from `METRICS`.  Names follow Envoy's grammar (downstream/upstream,
cx = connection, rq = request) so App Mesh dashboards keep their meaning.
"""
from __future__ import annotations

from bisect import bisect_left

PREFIX = "gateway_"

# Latency buckets in seconds (upper bounds); +Inf is implicit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# (kind, name, help, scope) where scope names the slot object holding the field:
# "listener" (label listener=port), "route" (labels route, virtual_service),
# "cluster" (label virtual_service), "pool" (labels virtual_service, target: the
# index of the weighted target, 0 for a plain virtual service), "listener_check"
# (label listener=port, only listeners with a healthCheck), "gateway" (a field
# of `Stats` itself, no labels).  Counters first, then gauges, then histograms.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("counter", "downstream_cx_total", "Downstream connections accepted.", "listener"),
    ("counter", "downstream_cx_protocol_error", "Downstream connections closed for a malformed request (400).", "listener"),
    ("counter", "downstream_cx_idle_timeout", "Downstream keep-alive connections closed after the idle timeout.", "listener"),
    ("counter", "downstream_cx_keepalive_timeout", "HTTP/2 connections closed: no answer to a keepalive PING.", "listener"),
    ("counter", "downstream_cx_http2_total", "Downstream connections that speak HTTP/2 (ALPN h2 or h2c prior knowledge).", "listener"),
    ("counter", "downstream_rq_total", "Downstream requests received.", "listener"),
    ("counter", "downstream_rq_header_too_large", "Requests refused with 431 (header section over the limit).", "listener"),
    ("counter", "downstream_rq_no_route", "Requests answered 404 because no gateway route matched.", "listener"),
    ("counter", "downstream_rq_upgrade", "Requests tunnelled after an Upgrade (e.g. WebSocket).", "listener"),
    ("counter", "route_rq", "Requests completed per route, by status class.", "route"),
    ("counter", "route_rq_rate_limited", "Requests refused by a local rate limit (429, gRPC RESOURCE_EXHAUSTED).", "route"),
    ("counter", "upstream_cx_total", "Upstream connections opened.", "cluster"),
    ("counter", "upstream_cx_connect_fail", "Upstream connection attempts that failed.", "cluster"),
    ("counter", "upstream_cx_idle_expired", "Pooled upstream connections closed after the idle timeout.", "cluster"),
    ("counter", "upstream_cx_reused", "Requests sent on a pooled (reused) upstream connection.", "cluster"),
    ("counter", "upstream_rq_total", "Requests sent upstream.", "cluster"),
    ("counter", "upstream_rq_retry_stale", "Requests retried once on a fresh connection after a stale pooled one.", "cluster"),
    ("counter", "upstream_rq_timeout", "Requests that hit the per-request or idle timeout (504).", "cluster"),
    ("counter", "upstream_rq_reset", "Requests whose upstream reset or sent an invalid response (502).", "cluster"),
    ("counter", "upstream_rq_no_endpoint", "Requests answered 503: no endpoint or connection refused.", "cluster"),
    ("counter", "upstream_rq_retry", "Retries sent (proxy/retry.py: retryPolicy or App Mesh's default policy).", "cluster"),
    ("counter", "upstream_rq_retry_success", "Requests answered without a retriable failure after one or more retries.", "cluster"),
    ("counter", "upstream_rq_retry_overflow", "Retries not sent because the retry budget (20% of active requests, at least 3) was used up.", "cluster"),
    ("counter", "upstream_rq_pending_overflow", "Requests refused at once (503, gRPC UNAVAILABLE): the pool's maxRequests in flight, or its maxPendingRequests queue full.", "cluster"),
    ("counter", "health_check_success", "Active health check probes that passed.", "cluster"),
    ("counter", "health_check_failure", "Active health check probes that failed (bad status, timeout, connection error).", "cluster"),
    ("counter", "listener_health_check_success", "Probes of a listener's own healthCheck (listener/self_check.py) that passed.", "listener_check"),
    ("counter", "listener_health_check_failure", "Probes of a listener's own healthCheck that failed (bad status, no route, timeout, connection error).", "listener_check"),
    ("counter", "outlier_ejections_total", "Endpoints ejected by outlier detection (consecutive 5xx or connect failures).", "cluster"),
    ("counter", "outlier_ejections_overflow", "Ejections refused because maxEjectionPercent of the endpoints were already out.", "cluster"),
    ("counter", "upstream_pool_rq_queued", "Requests that queued for a connection: the backend group had maxConnections open.", "pool"),
    ("counter", "upstream_pool_rq_pending_overflow", "Requests refused at once (503 UO): the group's maxPendingRequests queue was full.", "pool"),
    ("counter", "upstream_pool_rq_pending_cancelled", "Queued requests that left without a connection (timeout, client gone).", "pool"),
    ("counter", "access_log_write_errors", "Access-log lines dropped because writing them failed.", "gateway"),
    ("gauge", "downstream_cx_active", "Downstream connections open.", "listener"),
    ("gauge", "upstream_cx_active", "Upstream connections open.", "cluster"),
    ("gauge", "upstream_cx_idle", "Upstream connections idle in the pool.", "cluster"),
    ("gauge", "upstream_rq_active", "Requests in flight to a virtual service that sets maxRequests.", "cluster"),
    ("gauge", "health_check_healthy", "Health-checked endpoints currently passing their checks.", "cluster"),
    ("gauge", "listener_health_check_healthy", "1 while a listener passes its own healthCheck, else 0; /ready answers 503 while any is 0.", "listener_check"),
    ("gauge", "outlier_ejected", "Endpoints currently ejected by outlier detection.", "cluster"),
    ("gauge", "upstream_pool_cx_active", "Upstream connections open or opening in a backend group that sets maxConnections.", "pool"),
    ("gauge", "upstream_pool_rq_pending", "Requests queued for a connection of that backend group.", "pool"),
    ("histogram", "route_rq_duration_seconds", "Request duration per route, first byte in to last byte out.", "route"),
)


# TLS metrics carry a label beyond their scope's (reason, result, path), so they
# are exposed by their own rule in prometheus.py from the listeners' TlsStats and
# the upstream TLS policies' UpstreamTlsStats.
TLS_METRICS: tuple[tuple[str, str, str], ...] = (
    ("counter", "downstream_tls_handshake", "TLS handshakes completed on a listener."),
    ("counter", "downstream_tls_handshake_error", "TLS handshakes that failed or were refused, by reason."),
    ("counter", "downstream_tls_reload", "Certificate file reloads on a listener, by result."),
    ("counter", "downstream_tls_plaintext_cx", "Plaintext connections accepted by a PERMISSIVE listener."),
    ("gauge", "downstream_tls_certificate_expiry_timestamp_seconds",
     "notAfter of each certificate a listener serves, as Unix time."),
    ("counter", "upstream_tls_handshake", "TLS handshakes with backends that passed chain and SAN checks."),
    ("counter", "upstream_tls_handshake_error", "TLS handshakes with backends that failed, by reason."),
)


class ListenerStats:
    __slots__ = ("port", "downstream_cx_total", "downstream_cx_protocol_error",
                 "downstream_cx_idle_timeout", "downstream_rq_total",
                 "downstream_rq_header_too_large", "downstream_rq_no_route",
                 "downstream_rq_upgrade", "downstream_cx_active", "downstream_cx_http2_total",
                 "downstream_cx_keepalive_timeout")

    def __init__(self, port: int):
        self.port = port
        for name in self.__slots__[1:]:
            setattr(self, name, 0)


class ClusterStats:
    __slots__ = ("virtual_service", "upstream_cx_total", "upstream_cx_connect_fail",
                 "upstream_cx_idle_expired", "upstream_cx_reused", "upstream_rq_total",
                 "upstream_rq_retry_stale", "upstream_rq_timeout", "upstream_rq_reset",
                 "upstream_rq_no_endpoint", "upstream_rq_pending_overflow", "upstream_cx_active",
                 "upstream_cx_idle", "upstream_rq_active", "upstream_rq_retry",
                 "upstream_rq_retry_success", "upstream_rq_retry_overflow", "health_check_success",
                 "health_check_failure", "health_check_healthy", "outlier_ejections_total",
                 "outlier_ejections_overflow", "outlier_ejected")

    def __init__(self, virtual_service: str):
        self.virtual_service = virtual_service
        for name in self.__slots__[1:]:
            setattr(self, name, 0)


class PoolStats:
    """One backend group's connectionPool http limits (upstream/cluster.py ConnectionLimit)."""
    __slots__ = ("virtual_service", "target", "upstream_pool_rq_queued",
                 "upstream_pool_rq_pending_overflow", "upstream_pool_rq_pending_cancelled",
                 "upstream_pool_cx_active", "upstream_pool_rq_pending")
    LABELS = 2      # the first two slots are the labels

    def __init__(self, virtual_service: str, target: str):
        self.virtual_service = virtual_service
        self.target = target
        for name in self.__slots__[2:]:
            setattr(self, name, 0)


class ListenerCheckStats:
    """A listener's probes of itself (listener/self_check.py); only listeners with a healthCheck."""
    __slots__ = ("port", "listener_health_check_success", "listener_health_check_failure",
                 "listener_health_check_healthy")

    def __init__(self, port: int):
        self.port = port
        for name in self.__slots__[1:]:
            setattr(self, name, 0)


class RouteStats:
    """Per-route request counts by status class and a latency histogram."""
    __slots__ = ("route", "virtual_service", "by_class", "buckets", "duration_sum", "duration_count",
                 "rate_limited")

    def __init__(self, route: str, virtual_service: str):
        self.route = route
        self.virtual_service = virtual_service
        self.by_class = [0, 0, 0, 0, 0, 0]      # index = status // 100 (0 unused)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # last = +Inf
        self.duration_sum = 0.0
        self.duration_count = 0
        self.rate_limited = 0       # refused by proxy/rate_limit.py

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100
        self.by_class[cls if 0 < cls < 6 else 5] += 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1


NO_ROUTE = ""  # route label for requests that matched no route


class Stats:
    """All stats of one worker process."""

    def __init__(self) -> None:
        self.listeners: dict[int, ListenerStats] = {}
        self.clusters: dict[str, ClusterStats] = {}
        self.routes: dict[tuple[str, str], RouteStats] = {}
        self.pools: list[PoolStats] = []            # backend groups with an http connectionPool
        self.listener_checks: dict[int, ListenerCheckStats] = {}   # listeners with a healthCheck
        self.listener_tls: dict[int, object] = {}   # port -> listener.tls.TlsStats
        self.upstream_tls = ()                      # iterable of upstream.tls.UpstreamTls
        self.access_log_write_errors = 0

    def listener(self, port: int) -> ListenerStats:
        s = self.listeners.get(port)
        if s is None:
            s = self.listeners[port] = ListenerStats(port)
        return s

    def cluster(self, virtual_service: str) -> ClusterStats:
        s = self.clusters.get(virtual_service)
        if s is None:
            s = self.clusters[virtual_service] = ClusterStats(virtual_service)
        return s

    def route(self, route: str, virtual_service: str) -> RouteStats:
        key = (route, virtual_service)
        s = self.routes.get(key)
        if s is None:
            s = self.routes[key] = RouteStats(route, virtual_service)
        return s
