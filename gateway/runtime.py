"""The running gateway: compiled config, listeners, clusters, admin, and the tick.

`Gateway` turns a validated `GatewayConfig` into runtime objects once:
routers (per listener), clusters (per virtual service), per-route info the
request path needs (stats slot object, rewritten Host bytes, cluster), and one
`ListenerContext` per listener that every connection on it shares.  A
once-a-second tick keeps the coarse clock and the Date header current and
enforces idle and header timeouts, so the request path needs no timer per read.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from email.utils import formatdate
from typing import NamedTuple

from gateway.config.model import ConnectionPool, GatewayConfig, Limits
from gateway.h2.connection import H2Settings
from gateway.listener.accept import start_server as start_tls_server
from gateway.listener.http1 import Http1Downstream
from gateway.listener.self_check import SelfCheck
from gateway.listener.tls import TlsConfigError, TlsStats, termination_for
from gateway.observability.stats import NO_ROUTE, ClusterStats, ListenerStats, RouteStats, Stats
from gateway.proxy.rate_limit import RateLimits, RouteLimiter
from gateway.upstream.cluster import Cluster, strictest_pool
from gateway.upstream.health import ClusterHealthChecker
from gateway.upstream.tls import UpstreamTlsRegistry

log = logging.getLogger("gateway")

TICK_SECONDS = 0.1          # request deadlines are checked this often
IDLE_CHECK_EVERY = 10       # ticks between keep-alive / header timeout sweeps
TLS_RELOAD_EVERY = 20       # ticks between checks of certificate files for rotation


class RouteInfo(NamedTuple):
    """What the request path needs for a matched route, found with one lookup."""
    stats: RouteStats
    host: bytes | None       # rewritten Host, or None to keep the client's
    cluster: Cluster
    rate_limit: RouteLimiter | None = None   # proxy/rate_limit.py, None = no rule applies


class Clock:
    """Coarse time shared by every connection; updated by the tick."""
    __slots__ = ("now", "date_header")

    def __init__(self, loop):
        self.now = loop.time()
        self.date_header = formatdate(usegmt=True).encode()


class ListenerContext:
    """Everything the connections of one listener share."""
    __slots__ = ("loop", "port", "router", "clusters", "route_info", "stats", "no_route_stats",
                 "access_log", "forwarded_headers", "forwarded_https", "limits", "connections",
                 "busy", "now", "date_header", "tls", "forwarded_pairs", "forwarded_https_pairs",
                 "h2_settings", "decisions")

    def __init__(self, loop, port: int, router, clusters: dict[str, Cluster],
                 route_info: dict[str, RouteInfo], stats: ListenerStats,
                 no_route_stats: RouteStats, access_log, limits: Limits, tls=None):
        self.loop = loop
        self.port = port
        self.router = router
        self.clusters = clusters
        self.route_info = route_info
        self.stats = stats
        self.no_route_stats = no_route_stats
        self.access_log = access_log
        self.forwarded_headers = b"x-forwarded-proto: http\r\nx-forwarded-port: %d\r\n" % port
        self.forwarded_https = b"x-forwarded-proto: https\r\nx-forwarded-port: %d\r\n" % port
        # The same two fields as HTTP/2 header pairs.
        self.forwarded_pairs = ((b"x-forwarded-proto", b"http"), (b"x-forwarded-port", b"%d" % port))
        self.forwarded_https_pairs = ((b"x-forwarded-proto", b"https"), (b"x-forwarded-port", b"%d" % port))
        # The HTTP/2 codec's settings: the same header budget as HTTP/1.1 (as HPACK
        # counts it: name + value + 32 per field), WebSocket by extended CONNECT.
        self.h2_settings = H2Settings(enable_connect_protocol=True,
                                      max_header_list_size=limits.max_request_header_bytes)
        self.tls = tls      # TlsTermination, or None for a plaintext listener
        self.limits = limits
        self.connections: set[Http1Downstream] = set()
        self.busy: set[Http1Downstream] = set()   # connections with an exchange in flight
        self.now = loop.time()
        self.date_header = b""
        # (method, target, Host) -> routing decision (proxy/exchange.py Exchange._route);
        # a new configuration builds new contexts, so a memo never outlives its routes.
        self.decisions: dict[tuple, tuple] = {}


def listener_pools_by_target(config: GatewayConfig) -> dict[str, ConnectionPool]:
    """Spec 2.13: a listener's connectionPool is counted per upstream target, as the
    Envoy circuit breakers App Mesh configured from it were per cluster.  So it becomes
    a pool of every virtual service a route of that listener targets; where several
    listeners (or the virtual service itself) set one, the strictest limits apply."""
    from gateway.routing.table import listener_routes

    pools: dict[str, ConnectionPool] = {}
    for listener in config.virtual_gateway.listeners:
        pool = listener.connection_pool
        if pool is None:
            continue
        for route in listener_routes(config, listener.port, listener.protocol):
            name = route.target.virtual_service_name
            pools[name] = strictest_pool(pools.get(name), pool)
    return pools


class Gateway:
    """One worker's worth of gateway: `await start()`, serve, `await stop()`."""

    def __init__(self, config: GatewayConfig, *, listen_host: str | None = None,
                 admin: bool = True):
        self.config = config
        self.listen_host = listen_host
        self.admin_enabled = admin
        self.stats = Stats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clock: Clock | None = None
        self.clusters: dict[str, Cluster] = {}
        self.contexts: list[ListenerContext] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.admin = None
        self.access_log = None
        self.ready = False
        self.tasks: set[asyncio.Task] = set()
        self._ticks = 0
        self.outliers: list = []     # upstream/outlier.py OutlierDetector of every group using one
        self.upstream_tls = UpstreamTlsRegistry()
        self.self_check: SelfCheck | None = None   # listeners probing themselves (healthCheck)

    # ----------------------------------------------------------------- build

    def _build(self) -> None:
        from gateway.routing.table import compile_routers

        config = self.config
        loop = self.loop
        self.clock = Clock(loop)
        backend_tls = config.virtual_gateway.backend_tls
        listener_pools = listener_pools_by_target(config)
        for vs in config.virtual_services:
            self.clusters[vs.name] = Cluster(vs, self.stats.cluster(vs.name), loop, self.clock,
                                             backend_tls=backend_tls, tls_registry=self.upstream_tls,
                                             listener_pool=listener_pools.get(vs.name))
            self.stats.pools += self.clusters[vs.name].pool_stats
        self.outliers = [g.outlier for c in self.clusters.values() for g in c.groups
                         if g.outlier is not None]
        route_info: dict[str, RouteInfo] = {}
        rate_limits = RateLimits(config.settings.rate_limits,
                                 config.settings.trusted_forwarded_hops, loop.time())
        for route in config.gateway_routes:
            target = route.target.virtual_service_name
            enabled = route.rewrite is None or route.rewrite.default_target_hostname != "DISABLED"
            stats = self.stats.route(route.name, target)
            route_info[route.name] = RouteInfo(
                stats,
                target.encode("latin-1") if enabled else None,
                self.clusters[target],
                rate_limits.for_route(route.name, stats))
        access = config.virtual_gateway.access_log
        if access is not None:
            from gateway.observability.access_log import AccessLogger
            self.access_log = AccessLogger(access, stats=self.stats)
        routers = compile_routers(config)
        no_route = self.stats.route(NO_ROUTE, "")
        limits = config.settings.limits
        for listener in config.virtual_gateway.listeners:
            tls = termination_for(listener)
            if tls is not None:
                self.stats.listener_tls[listener.port] = tls.stats
            ctx = ListenerContext(
                loop, listener.port, routers[listener.port], self.clusters, route_info,
                self.stats.listener(listener.port), no_route, self.access_log, limits, tls)
            self.contexts.append(ctx)
        self.stats.upstream_tls = self.upstream_tls

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._build()
        self._tick()
        for ctx in self.contexts:
            ctx.date_header = self.clock.date_header
        for cluster in self.clusters.values():
            if any(g.dns for g in cluster.groups):
                await cluster.refresh_dns()
                self._spawn(cluster.run_dns())
            if ClusterHealthChecker.wanted(cluster):
                cluster.health = ClusterHealthChecker(cluster)
                self._spawn(cluster.health.run())
        host = self.listen_host or self.config.settings.listen_address
        for ctx in self.contexts:
            factory = lambda ctx=ctx: Http1Downstream(ctx)  # noqa: E731
            if ctx.tls is None:
                server = await self.loop.create_server(factory, host, ctx.port,
                                                       reuse_address=True, backlog=2048)
            else:
                # Our own accept loop: it sees handshake failures (to count them), applies
                # the SAN rule before any byte is read, and sniffs PERMISSIVE connections.
                server = await start_tls_server(self.loop, host, ctx.port, factory, tls=ctx.tls,
                                                backlog=2048)
            self.servers.append(server)
            log.info("listening on %s:%d%s", host, ctx.port,
                     "" if ctx.tls is None else " (TLS %s)" % ("PERMISSIVE" if ctx.tls.permissive else "STRICT"))
        if self.admin_enabled:
            from gateway.admin.server import start_admin
            from gateway.config.load import config_to_json
            settings = self.config.settings
            self.admin = await start_admin(
                settings.admin_address, settings.admin_port,
                stats_provider=lambda: [self.stats],
                config_provider=lambda: config_to_json(self.config),
                is_ready=lambda: self.ready and (self.self_check is None
                                                 or self.self_check.ready()),
                not_ready_detail=lambda: self.self_check.describe() if self.self_check else "")
            log.info("admin on %s:%d", settings.admin_address, self.admin.port)
        if SelfCheck.wanted(self.config):
            # Not ready until every listener with a healthCheck has passed a probe.
            self.self_check = SelfCheck(self.config, host,
                                        {ctx.port: ctx.router for ctx in self.contexts}, self.stats)
            self._spawn(self.self_check.run())
        self.ready = True

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _tick(self) -> None:
        clock = self.clock
        now = clock.now = self.loop.time()
        self._ticks += 1
        sweep = self._ticks % IDLE_CHECK_EVERY == 0
        if sweep:
            clock.date_header = formatdate(usegmt=True).encode()
        for ctx in self.contexts:
            ctx.now = now
            ctx.date_header = clock.date_header
            if ctx.busy:
                for conn in list(ctx.busy):
                    conn.check_exchange(now)
            if sweep:
                for conn in list(ctx.connections):
                    conn.check_idle(now)
        # Outlier sweeps run on their own interval (often under a second), checked here
        # rather than with a timer per ejection.
        for detector in self.outliers:
            detector.tick(now)
        if sweep:
            for cluster in self.clusters.values():
                cluster.expire_idle(now)
            if self.access_log is not None:
                self.access_log.flush()
            if self._ticks % TLS_RELOAD_EVERY == 0:
                # Certificate rotation (cert-manager, mounted secrets): new handshakes
                # use the new files, established connections keep theirs.
                for ctx in self.contexts:
                    if ctx.tls is not None:
                        ctx.tls.reload_if_changed()
                self.upstream_tls.reload_if_changed()
        self._tick_handle = self.loop.call_later(TICK_SECONDS, self._tick)

    # ------------------------------------------------------------------ stop

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close."""
        self.ready = False
        if self.self_check is not None:
            self.self_check.stop()      # its listeners are closing: no failures to report
        for server in self.servers:
            server.close()
        for ctx in self.contexts:
            for conn in list(ctx.connections):
                goaway = getattr(conn, "close", None)
                if goaway is not None:
                    goaway()    # HTTP/2: GOAWAY with the last stream taken; no new streams
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and any(
                c.active is not None for ctx in self.contexts for c in ctx.connections):
            await asyncio.sleep(0.05)
        for ctx in self.contexts:
            for conn in list(ctx.connections):
                if conn.transport is not None:
                    conn.transport.close()
        handle = getattr(self, "_tick_handle", None)
        if handle is not None:
            handle.cancel()
        for task in list(self.tasks):
            task.cancel()
        for cluster in self.clusters.values():
            cluster.close()
        if self.admin is not None:
            await self.admin.close()
        if self.access_log is not None:
            self.access_log.flush()
            self.access_log.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:   # pragma: no cover - uvloop is a hard dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# The collector's thresholds while serving (CPython's default is 700, 10, 10).
# Every request allocates a few dozen objects that die young; at the default, a
# full collection every ~70k allocations walks every live connection and stream,
# a pause of 10-15 ms under load that was the whole p99 of the gRPC benchmark
# (28 ms, against 14 ms with these settings).
GC_THRESHOLDS = (20000, 50, 100)


def settle_garbage_collector() -> None:
    """Once the configuration is compiled and the listeners are up: those objects
    live as long as the process, so move them out of the collector's sight, and
    collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(config: GatewayConfig) -> None:
    gateway = Gateway(config)
    await gateway.start()
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    await gateway.stop(config.settings.drain_timeout)


def serve(config_path: str | list[str]) -> int:
    """Load, validate and serve until SIGINT/SIGTERM.  Returns the exit code."""
    from gateway.config.errors import ConfigError
    from gateway.config.load import load_config

    try:
        config, warnings = load_config(config_path)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, flush=True)
        print(f"refusing to start: {len(err.issues)} configuration error(s)", flush=True)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    install_uvloop()
    try:
        asyncio.run(_serve(config))
    except (OSError, ValueError, TlsConfigError) as exc:
        # Ports in use, unusable certificate files.
        log.error("cannot start: %s", exc)
        return 1
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (tests and the benchmark use it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
