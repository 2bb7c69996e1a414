"""Clusters (one per virtual service), their endpoints, and each endpoint's pool.

A cluster owns the backend groups of a virtual service (one group, or several
weighted ones for a canary), balances round robin inside a group, and knows the
timeouts that apply to its requests.  An endpoint owns its idle keep-alive
connections (LIFO, so the warmest is reused) and opens new ones on demand.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING

from gateway.config.model import BackendGroup, ConnectionPool, DnsDiscovery, VirtualService
from gateway.observability.stats import ClusterStats, PoolStats
from gateway.proxy.local_reply import UPSTREAM_OVERFLOW
from gateway.proxy.retry import compile_policy as compile_retry_policy
from gateway.upstream.http1 import Http1Upstream
from gateway.upstream.outlier import OutlierDetector
from gateway.upstream.tls import UpstreamTlsRegistry

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway.upstream")

DEFAULT_REQUEST_TIMEOUT = 15.0     # App Mesh perRequest default
DEFAULT_IDLE_TIMEOUT = 300.0       # App Mesh idle default (user guide)
POOL_IDLE_TIMEOUT = 60.0           # pooled connections idle longer than this are closed
CONNECT_TIMEOUT = 5.0
# App Mesh's default maxPendingRequests (spec 2.13): in effect no bound but the deadline.
DEFAULT_MAX_PENDING = 2147483647


class Endpoint:
    """One backend address and its pool of HTTP/1.1 connections."""
    __slots__ = ("cluster", "host", "port", "label", "stats", "idle", "draining", "loop",
                 "tls", "tls_peer", "limit", "group", "healthy", "ejected", "outlier", "pool")

    def __init__(self, cluster: Cluster, host: str, port: int, dns: DnsDiscovery | None = None):
        self.cluster = cluster
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.stats = cluster.stats
        self.idle: list[Http1Upstream] = []
        self.draining = False
        self.loop = cluster.loop
        # Client TLS policy for this port (2.12.3), shared by every endpoint of the service.
        self.tls = cluster.tls_for(port)
        self.tls_peer = self.tls.peer_for(host, dns) if self.tls is not None else None
        self.limit: RequestLimit | None = None   # the group's maxRequests, set by the cluster
        self.group: Group | None = None          # set by the cluster
        self.pool: ConnectionLimit | None = None  # the group's http maxConnections, set by the group
        # Balancing skips an endpoint that active health checks failed or outlier
        # detection ejected; change them through set_healthy / set_ejected.
        self.healthy = True
        self.ejected = False
        self.outlier = None   # upstream/outlier.py Monitor when the group sets outlierDetection

    def set_healthy(self, healthy: bool) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            if self.group is not None:
                self.group.refresh()

    def set_ejected(self, ejected: bool) -> None:
        if ejected != self.ejected:
            self.ejected = ejected
            if self.group is not None:
                self.group.refresh()

    def acquire(self, ex: Exchange) -> None:
        conn = self.pop_idle() if self.idle else None
        if conn is None:
            self.connect_new(ex)
            return
        conn.reused = True
        ex.on_upstream_ready(conn)

    def connect_new(self, ex: Exchange) -> None:
        pool = self.pool
        if pool is not None and not pool.reserve(ex):
            return      # queued, handed an idle connection, or refused
        self.cluster.spawn(self._connect(ex))

    async def _connect(self, ex: Exchange) -> None:
        tls = self.tls
        factory = lambda: Http1Upstream(self)  # noqa: E731
        if tls is None:
            connecting = self.loop.create_connection(factory, self.host, self.port)
        else:
            connecting = self.loop.create_connection(
                factory, self.host, self.port, ssl=tls.context,
                server_hostname=self.tls_peer.server_hostname or None,
                ssl_handshake_timeout=CONNECT_TIMEOUT)
        try:
            transport, conn = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            reason = "connect timeout"
        except (ssl.SSLError, ConnectionResetError) as exc:
            # A refused handshake; under TLS 1.2 a backend that wants a client
            # certificate we lack resets during connect.
            reason = tls.handshake_failed(exc) if tls is not None else f"connection failure: {exc}"
        except OSError as exc:
            reason = f"connection failure: {exc.strerror or exc}"
        else:
            reason = None
        pool = self.pool
        if reason is not None:
            if pool is not None:
                pool.connect_failed()
            ex.on_upstream_connect_failed(reason)
            return
        if pool is not None:
            pool.connected(conn)
        if tls is not None:
            reason = tls.check(transport.get_extra_info("ssl_object"), self.tls_peer)
            if reason is not None:
                conn.abort()
                ex.on_upstream_connect_failed(reason)
                return
        if ex.done:
            conn.release()
            return
        ex.on_upstream_ready(conn)

    def release(self, conn: Http1Upstream) -> None:
        if self.draining or conn.closing:
            conn.abort()
            return
        if conn.reading_paused:
            # Paused for a slow client of the exchange that just ended.
            conn.resume_reading()
        pool = self.pool
        if pool is not None and pool.queue and pool.hand_over(conn):
            return
        conn.in_pool = True
        conn.reused = False
        conn.idle_since = self.cluster.clock.now
        self.idle.append(conn)
        self.stats.upstream_cx_idle += 1

    def forget(self, conn: Http1Upstream) -> None:
        """A connection closed; drop it from the idle list if it was waiting there."""
        if conn.in_pool:
            conn.in_pool = False
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            else:
                self.stats.upstream_cx_idle -= 1
        pool = self.pool
        if pool is not None:
            pool.closed(conn)

    def cancel_wait(self, ex: Exchange) -> None:
        """An exchange gave up waiting (timeout, client gone, retry elsewhere)."""
        pool = self.pool
        if pool is not None:
            pool.cancel(ex)

    def pop_idle(self) -> Http1Upstream | None:
        """The warmest usable idle connection (LIFO); stale and expired ones are dropped."""
        idle = self.idle
        now = self.cluster.clock.now
        expiry = self.cluster.pool_idle_timeout
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            self.stats.upstream_cx_idle -= 1
            if conn.closing or conn.transport.is_closing():
                continue
            if now - conn.idle_since > expiry:
                self.stats.upstream_cx_idle_expired += 1
                conn.abort()
                continue
            return conn
        return None

    def expire_idle(self, now: float) -> None:
        expiry = self.cluster.pool_idle_timeout
        keep = []
        for conn in self.idle:
            if now - conn.idle_since > expiry or conn.closing:
                conn.in_pool = False
                self.stats.upstream_cx_idle -= 1
                self.stats.upstream_cx_idle_expired += 1
                conn.abort()
            else:
                keep.append(conn)
        self.idle[:] = keep

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.idle):
            conn.abort()


def strictest_pool(*pools: ConnectionPool | None) -> ConnectionPool | None:
    """The limits that apply when several pools cover one backend group: a virtual
    service's own connectionPool and those of the listeners its requests arrive on
    (spec 2.13: a listener's pool is counted per upstream target).  Each limit is the
    smallest one set; a limit nobody set stays unset (unlimited)."""
    given = [p for p in pools if p is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def least(field: str) -> int | None:
        values = [getattr(p, field) for p in given if getattr(p, field)]
        return min(values) if values else None

    return ConnectionPool(given[0].protocol, max_connections=least("max_connections"),
                          max_pending_requests=least("max_pending_requests"),
                          max_requests=least("max_requests"))


class RequestLimit:
    """connectionPool http2/grpc maxRequests: requests in flight to one backend group.

    Envoy's max_requests circuit breaker: past the limit a request is refused at
    once (never queued), so a slow backend cannot pile work up in the gateway.
    """
    __slots__ = ("max_requests", "active")

    def __init__(self, max_requests: int):
        self.max_requests = max_requests
        self.active = 0


class ConnectionLimit:
    """connectionPool http maxConnections / maxPendingRequests of one backend group:
    its HTTP/1.1 connections across all its endpoints, and the requests waiting for one.

    Envoy's max_connections and max_pending_requests circuit breakers, but strict:
    Envoy lets a host with no connection open one over the limit; here the group never
    has more than maxConnections open or opening, which is what a backend sized for
    that number can rely on.  A slot is held from the connect attempt until the socket
    closes, idle pooled connections included.  A request that finds no idle connection
    and no free slot waits in a FIFO queue of at most maxPendingRequests (App Mesh's
    default, 2147483647, leaves only its deadline as the bound) and takes the next
    connection handed back to the pool, or the next slot freed; past the queue it is
    refused at once, 503 UO.  Its own deadline (perRequest, grpc-timeout) is the queue
    timeout: 504 UT, and it leaves the queue (Exchange.drop_upstream -> cancel_wait),
    as it does when its client goes away.

    Queued exchanges stay in `queue` after a cancel (removing from the middle of a
    deque is O(n)); `waiting` says which are still there, and the queue is compacted
    when the stale entries outnumber them.
    """
    __slots__ = ("group", "max_connections", "max_pending", "conns", "connecting", "queue",
                 "waiting", "stats", "cluster_stats")

    def __init__(self, group: Group, max_connections: int, max_pending: int | None,
                 stats: PoolStats, cluster_stats: ClusterStats):
        self.group = group
        self.max_connections = max_connections
        self.max_pending = max_pending if max_pending is not None else DEFAULT_MAX_PENDING
        self.conns: set[Http1Upstream] = set()   # open connections holding a slot
        self.connecting = 0                      # connect attempts, a slot each
        self.queue: deque[Exchange] = deque()
        self.waiting: set[Exchange] = set()
        self.stats = stats
        self.cluster_stats = cluster_stats

    def reserve(self, ex: Exchange) -> bool:
        """No idle connection on the exchange's endpoint: True when a slot is taken
        (the caller connects); otherwise the exchange got another endpoint's idle
        connection, was queued, or was refused."""
        if len(self.conns) + self.connecting < self.max_connections:
            self.connecting += 1
            self.stats.upstream_pool_cx_active += 1
            return True
        for endpoint in self.group.endpoints:
            if endpoint.idle:
                conn = endpoint.pop_idle()
                if conn is not None:
                    self._hand(conn, ex)
                    return False
        stats = self.stats
        if len(self.waiting) >= self.max_pending:
            stats.upstream_pool_rq_pending_overflow += 1
            self.cluster_stats.upstream_rq_pending_overflow += 1
            ex._fail(UPSTREAM_OVERFLOW)
            return False
        self.queue.append(ex)
        self.waiting.add(ex)
        stats.upstream_pool_rq_pending += 1
        stats.upstream_pool_rq_queued += 1
        return False

    def hand_over(self, conn: Http1Upstream) -> bool:
        """A connection is back from an exchange: the first waiter takes it."""
        ex = self._next()
        if ex is None:
            return False
        self._hand(conn, ex)
        return True

    def connected(self, conn: Http1Upstream) -> None:
        self.connecting -= 1
        if conn.closing:
            # Lost before the connect task resumed: forget() ran before we knew it.
            self._freed()
        else:
            self.conns.add(conn)

    def connect_failed(self) -> None:
        self.connecting -= 1
        self._freed()

    def closed(self, conn: Http1Upstream) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self._freed()

    def cancel(self, ex: Exchange) -> None:
        waiting = self.waiting
        if ex in waiting:
            waiting.discard(ex)
            self.stats.upstream_pool_rq_pending -= 1
            self.stats.upstream_pool_rq_pending_cancelled += 1
            if len(self.queue) > 2 * len(waiting) + 16:
                self.queue = deque(e for e in self.queue if e in waiting)

    def _freed(self) -> None:
        """A slot is free: the first waiter connects with it."""
        self.stats.upstream_pool_cx_active -= 1
        ex = self._next()
        if ex is None:
            return
        endpoint = ex.endpoint
        if endpoint.draining:
            # DNS dropped the address while the request waited.
            endpoint = self.group.pick() or endpoint
            ex.endpoint = endpoint
            ex.upstream_host = endpoint.label
        self.connecting += 1
        self.stats.upstream_pool_cx_active += 1
        endpoint.cluster.spawn(endpoint._connect(ex))

    def _next(self) -> Exchange | None:
        queue, waiting = self.queue, self.waiting
        while queue:
            ex = queue.popleft()
            if ex in waiting:
                waiting.discard(ex)
                self.stats.upstream_pool_rq_pending -= 1
                if not ex.done:
                    return ex
                self.stats.upstream_pool_rq_pending_cancelled += 1
        return None

    @staticmethod
    def _hand(conn: Http1Upstream, ex: Exchange) -> None:
        endpoint = conn.endpoint
        if ex.endpoint is not endpoint:
            # The group's pool is shared: any of its connections serves the request.
            ex.endpoint = endpoint
            ex.upstream_host = endpoint.label
        conn.reused = True
        ex.on_upstream_ready(conn)


# Envoy's default healthy panic threshold: below this share of usable endpoints a
# group balances over all of them, so losing most endpoints at once (or a bad health
# check) spreads load instead of crushing the few that are left.
PANIC_THRESHOLD = 0.5


class Group:
    """The endpoints of one backend group, balanced round robin over the usable ones."""
    __slots__ = ("spec", "weight", "_endpoints", "rotation", "next", "dns", "limit", "panic",
                 "outlier", "pool", "connection_pool")

    def __init__(self, spec: BackendGroup, protocol: str,
                 listener_pool: ConnectionPool | None = None):
        self.spec = spec
        self.weight = spec.weight
        self._endpoints: list[Endpoint] = []
        self.rotation: list[Endpoint] = []   # what pick() cycles through
        self.panic = False
        self.outlier = None   # upstream/outlier.py OutlierDetector, set by the cluster
        self.next = 0
        self.dns = spec.dns
        pool = self.connection_pool = strictest_pool(spec.connection_pool, listener_pool)
        # maxRequests comes from an http2 or grpc pool shape (the virtual service's own,
        # or the listener's when the requests arrive on an http2/grpc listener).
        self.limit = (RequestLimit(pool.max_requests)
                      if pool is not None and pool.max_requests else None)
        self.pool: ConnectionLimit | None = None   # http maxConnections, set by the cluster

    @property
    def endpoints(self) -> list[Endpoint]:
        return self._endpoints

    @endpoints.setter
    def endpoints(self, endpoints: list[Endpoint]) -> None:
        self._endpoints = endpoints
        for endpoint in endpoints:
            endpoint.group = self
            endpoint.pool = self.pool
            if self.outlier is not None and endpoint.outlier is None:
                endpoint.outlier = self.outlier.monitor(endpoint)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the rotation after an endpoint's health or ejection changed."""
        everyone = self._endpoints
        usable = [e for e in everyone if e.healthy and not e.ejected]
        self.panic = bool(everyone) and len(usable) < PANIC_THRESHOLD * len(everyone)
        self.rotation = everyone if self.panic else usable

    def pick(self) -> Endpoint | None:
        endpoints = self.rotation
        n = len(endpoints)
        if n == 0:
            return None
        i = self.next
        if i >= n:
            i = 0
        self.next = i + 1
        return endpoints[i]


class Cluster:
    """The runtime side of one virtual service."""

    def __init__(self, spec: VirtualService, stats: ClusterStats, loop, clock, *,
                 backend_tls=None, tls_registry: UpstreamTlsRegistry | None = None,
                 listener_pool: ConnectionPool | None = None):
        self.spec = spec
        self.backend_tls = backend_tls          # backendDefaults.clientPolicy.tls of the gateway
        self.tls_registry = tls_registry or UpstreamTlsRegistry()
        self.name = spec.name
        self.stats = stats
        self.loop = loop
        self.clock = clock
        timeout = spec.timeout
        self.request_timeout = DEFAULT_REQUEST_TIMEOUT if timeout.per_request is None else timeout.per_request
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT if timeout.idle is None else timeout.idle
        self.pool_idle_timeout = min(POOL_IDLE_TIMEOUT, self.idle_timeout or POOL_IDLE_TIMEOUT)
        # proxy/retry.py: the policy and retry budget (None: retries switched off).
        self.retry = compile_retry_policy(spec.retry_policy, stats)
        self.tasks: set[asyncio.Task] = set()
        self.health = None    # upstream/health.py ClusterHealthChecker, set by the Gateway
        # HTTP/2 and gRPC backends get multiplexed connections (upstream/http2.py).
        self.h2 = spec.protocol in ("http2", "grpc")
        if self.h2:
            from gateway.upstream.http2 import Http2Endpoint
            self.endpoint_class = Http2Endpoint
        else:
            self.endpoint_class = Endpoint
        self.groups = [Group(g, spec.protocol, listener_pool) for g in spec.groups if g.weight > 0]
        self.pool_stats: list[PoolStats] = []
        for group in self.groups:
            pool = group.connection_pool
            if pool is not None and pool.max_connections and not self.h2:
                target = next(i for i, g in enumerate(spec.groups) if g is group.spec)
                stats = PoolStats(spec.name, str(target))
                self.pool_stats.append(stats)
                group.pool = ConnectionLimit(group, pool.max_connections,
                                             pool.max_pending_requests, stats, self.stats)
            if group.spec.outlier_detection is not None:
                group.outlier = OutlierDetector(group, group.spec.outlier_detection, stats, loop)
            group.endpoints = [self.endpoint_class(self, a.host, a.port) for a in group.spec.endpoints]
            for endpoint in group.endpoints:
                endpoint.limit = group.limit
        # :scheme of HTTP/2 requests upstream: https when the client policy covers the ports.
        self.scheme = b"https" if any(e.tls is not None for e in self.endpoints()) else b"http"
        self.total_weight = sum(g.weight for g in self.groups)
        self.single = self.groups[0] if len(self.groups) == 1 else None

    def tls_for(self, port: int):
        """The compiled client TLS policy for connections to `port`, or None for plaintext."""
        if self.h2:
            return self.tls_registry.get(self.spec, self.backend_tls, port, alpn=("h2",))
        return self.tls_registry.get(self.spec, self.backend_tls, port)

    def pick(self) -> Endpoint | None:
        group = self.single
        if group is None:
            if not self.groups:
                return None
            r = random.random() * self.total_weight
            for group in self.groups:
                r -= group.weight
                if r < 0:
                    break
        return group.pick()

    def spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def endpoints(self):
        for group in self.groups:
            yield from group.endpoints

    def expire_idle(self, now: float) -> None:
        for endpoint in self.endpoints():
            if endpoint.idle:
                endpoint.expire_idle(now)

    # ------------------------------------------------------------------ DNS

    async def refresh_dns(self) -> None:
        """Resolve every DNS-discovered group now, keeping endpoints whose address stays."""
        for group in self.groups:
            dns = group.dns
            if dns is None:
                continue
            try:
                infos = await self.loop.getaddrinfo(dns.hostname, dns.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("virtual service %s: DNS lookup of %s failed: %s (keeping %d endpoints)",
                            self.name, dns.hostname, exc, len(group.endpoints))
                continue
            addresses = _order_addresses(infos, dns.ip_preference)
            if dns.response_type == "LOADBALANCER":
                addresses = addresses[:1]
            current = {(e.host, e.port): e for e in group.endpoints}
            fresh = []
            for host in addresses:
                endpoint = current.pop((host, dns.port), None) \
                    or self.endpoint_class(self, host, dns.port, dns)
                endpoint.limit = group.limit
                fresh.append(endpoint)
            for gone in current.values():
                gone.drain()
            group.endpoints = fresh
            if self.health is not None:
                self.health.sync()

    async def run_dns(self) -> None:
        interval = min((g.dns.refresh_seconds for g in self.groups if g.dns), default=0)
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            await self.refresh_dns()

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for endpoint in self.endpoints():
            endpoint.drain()


def _order_addresses(infos, preference: str) -> list[str]:
    v4 = []
    v6 = []
    for family, _, _, _, sockaddr in infos:
        host = sockaddr[0]
        target = v6 if family == socket.AF_INET6 else v4
        if host not in target:
            target.append(host)
    if preference == "IPv4_ONLY":
        return v4
    if preference == "IPv6_ONLY":
        return v6
    if preference == "IPv6_PREFERRED":
        return v6 + v4
    return v4 + v6
