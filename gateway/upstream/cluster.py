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
from typing import TYPE_CHECKING

from gateway.config.model import BackendGroup, DnsDiscovery, VirtualService
from gateway.observability.stats import ClusterStats
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


class Endpoint:
    """One backend address and its pool of HTTP/1.1 connections."""
    __slots__ = ("cluster", "host", "port", "label", "stats", "idle", "draining", "loop",
                 "tls", "tls_peer", "limit", "group", "healthy", "ejected", "outlier")

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
            conn.reused = True
            ex.on_upstream_ready(conn)
            return
        self.connect_new(ex)

    def connect_new(self, ex: Exchange) -> None:
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
            ex.on_upstream_connect_failed("connect timeout")
            return
        except (ssl.SSLError, ConnectionResetError) as exc:
            # A refused handshake; under TLS 1.2 a backend that wants a client
            # certificate we lack resets during connect.
            reason = tls.handshake_failed(exc) if tls is not None else f"connection failure: {exc}"
            ex.on_upstream_connect_failed(reason)
            return
        except OSError as exc:
            ex.on_upstream_connect_failed(f"connection failure: {exc.strerror or exc}")
            return
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

    def cancel_wait(self, ex: Exchange) -> None:
        """An exchange gave up waiting (timeout); nothing is queued per endpoint yet."""

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


class RequestLimit:
    """connectionPool http2/grpc maxRequests: requests in flight to one backend group.

    Envoy's max_requests circuit breaker: past the limit a request is refused at
    once (never queued), so a slow backend cannot pile work up in the gateway.
    """
    __slots__ = ("max_requests", "active")

    def __init__(self, max_requests: int):
        self.max_requests = max_requests
        self.active = 0


# Envoy's default healthy panic threshold: below this share of usable endpoints a
# group balances over all of them, so losing most endpoints at once (or a bad health
# check) spreads load instead of crushing the few that are left.
PANIC_THRESHOLD = 0.5


class Group:
    """The endpoints of one backend group, balanced round robin over the usable ones."""
    __slots__ = ("spec", "weight", "_endpoints", "rotation", "next", "dns", "limit", "panic",
                 "outlier")

    def __init__(self, spec: BackendGroup, protocol: str):
        self.spec = spec
        self.weight = spec.weight
        self._endpoints: list[Endpoint] = []
        self.rotation: list[Endpoint] = []   # what pick() cycles through
        self.panic = False
        self.outlier = None   # upstream/outlier.py OutlierDetector, set by the cluster
        self.next = 0
        self.dns = spec.dns
        pool = spec.connection_pool
        # Only the http2 and grpc pool shapes carry maxRequests in App Mesh.
        self.limit = (RequestLimit(pool.max_requests)
                      if pool is not None and pool.max_requests and protocol in ("http2", "grpc")
                      else None)

    @property
    def endpoints(self) -> list[Endpoint]:
        return self._endpoints

    @endpoints.setter
    def endpoints(self, endpoints: list[Endpoint]) -> None:
        self._endpoints = endpoints
        for endpoint in endpoints:
            endpoint.group = self
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
                 backend_tls=None, tls_registry: UpstreamTlsRegistry | None = None):
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
        self.groups = [Group(g, spec.protocol) for g in spec.groups if g.weight > 0]
        for group in self.groups:
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
