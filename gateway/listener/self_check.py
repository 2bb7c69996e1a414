"""The gateway probing its own listeners (VirtualGatewayHealthCheckPolicy, spec 2.14).

A listener with a `healthCheck` is probed by the gateway itself, with the probes and
the threshold state machine of upstream/health.py, and /ready (admin/server.py)
answers 503 while any such listener is unhealthy, so a load balancer that follows
readiness (an NLB target group, a Kubernetes readiness probe) follows the listener.

What a probe is (README "Listener health checks"):

- Address: the listener's port on loopback (127.0.0.1 when the gateway listens on
  0.0.0.0 or 127.0.0.1, ::1 for ::), else the listen address itself.
- It is an ordinary client request: it goes through the listener's routing, its route
  and its backend like any other, shows up in the access log and the route metrics,
  and a probe path without a route is a 404, a failure.
- Host / :authority: the first of "localhost", then the listener's route hostnames
  (exact ones, then "health.<suffix>" for suffix matches, in routing order) whose
  routes route the probe; "localhost" when none does.
- TLS: a STRICT or PERMISSIVE listener is probed over TLS, with SNI = the first DNS
  name of its certificate (then of its sniCertificates), ALPN h2 for http2/grpc
  probes.  The certificate is not verified: this is the gateway talking to itself.
  A listener that asks for client certificates cannot be sent a request (the probe has
  no certificate): PERMISSIVE ones are probed in plaintext, which they accept; STRICT
  ones get a TLS 1.3 handshake alone as the probe (the client side of a 1.3 handshake
  completes before the server judges the missing certificate), which the listener then
  counts as a refused handshake (no_client_certificate).
- Schedule: at once when the listeners are up, then every intervalMillis stretched by
  up to 10% (never shortened), start to start, never overlapping; each probe fails
  after timeoutMillis.  State: unhealthy until the first success, then per the
  thresholds (upstream/health.py Thresholds).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from gateway.config.model import GatewayConfig, HealthCheckPolicy, Listener
from gateway.observability.stats import ListenerCheckStats, Stats
from gateway.upstream.health import (DEFAULT_PATH, GRPC_HEALTH_PATH, USER_AGENT, ProbeTarget,
                                     Thresholds, next_due, probe)

log = logging.getLogger("gateway.listener.self_check")

DEFAULT_AUTHORITY = "localhost"
# The listen addresses that also accept loopback connections, and the loopback to use.
LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "127.0.0.1": "127.0.0.1",
            "::": "::1", "::1": "::1"}


def probe_host(listen_host: str | None) -> str:
    host = listen_host or ""
    return LOOPBACK.get(host, host)


class ListenerCheck(Thresholds):
    """One listener's probes of itself and their state."""
    __slots__ = ("port", "policy", "protocol", "target", "stats", "what")

    def __init__(self, listener: Listener, host: str, router, stats: ListenerCheckStats):
        policy: HealthCheckPolicy = listener.health_check
        super().__init__(policy)
        self.port = listener.port
        self.policy = policy
        self.stats = stats
        self.protocol = policy.protocol
        path = policy.path or DEFAULT_PATH
        tls = listener.tls if listener.tls is not None and listener.tls.mode != "DISABLED" else None
        context = server_name = None
        if tls is not None and tls.validation is not None and tls.mode == "PERMISSIVE":
            tls = None              # plaintext: the one way a request gets through
        if tls is not None:
            handshake_only = tls.validation is not None
            if handshake_only:
                self.protocol = "tcp"
            context = _client_context(self.protocol, handshake_only)
            server_name = _server_name(listener)
        # listeners[].proxyProtocol is parsed but not served yet; once `required` is, the
        # probe will have to send a PROXY header before anything else.
        authority = _authority(router, self.protocol, path, context is not None)
        self.target = ProbeTarget(host, listener.port, context, server_name, None, authority, path)
        if self.protocol == "tcp":
            self.what = "TLS handshake (the listener wants client certificates)"
        elif self.protocol == "grpc":
            self.what = f"grpc {GRPC_HEALTH_PATH.decode()} :authority {authority}"
        else:
            self.what = (f"{self.protocol} GET {path} "
                         f"{'Host' if self.protocol == 'http' else ':authority'} {authority}")
        if context is not None and self.protocol != "tcp":
            self.what += " over TLS"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        log.info("listener %d: health check %s every %d ms", self.port, self.what,
                 policy.interval_millis)
        while True:
            started = loop.time()
            reason = await probe(self.protocol, self.target, policy.timeout_millis)
            self._record(reason)
            await asyncio.sleep(max(0.0, next_due(started, policy.interval_millis) - loop.time()))

    def _record(self, reason: str | None) -> None:
        first = self.first
        stats = self.stats
        if reason is None:
            stats.listener_health_check_success += 1
        else:
            stats.listener_health_check_failure += 1
        if self.record(reason):
            stats.listener_health_check_healthy = int(self.healthy)
            if self.healthy:
                log.info("listener %d: healthy (health check %s passes)", self.port, self.what)
            else:
                log.warning("listener %d: unhealthy after %d failed health checks: %s",
                            self.port, self.failures, reason)
        elif reason is not None and first:
            log.warning("listener %d: first health check failed: %s", self.port, reason)

    def describe(self) -> str:
        """Why this listener is not healthy (a line of the /ready body)."""
        if self.first:
            state = "waiting for its first health check"
        elif self.stats.listener_health_check_success == 0:
            state = f"no health check has passed yet; last failure: {self.last_failure}"
        elif self.successes:
            state = (f"unhealthy, {self.successes} of {self.healthy_threshold} consecutive "
                     f"successes so far; last failure: {self.last_failure}")
        else:
            state = (f"unhealthy after {self.failures} consecutive failed health checks; "
                     f"last failure: {self.last_failure}")
        return f"listener {self.port} ({self.what}): {state}"


class SelfCheck:
    """Every listener's self check: `run()` as one task, `ready()` for /ready."""

    def __init__(self, config: GatewayConfig, listen_host: str | None, routers: dict,
                 stats: Stats):
        host = probe_host(listen_host)
        self.checks: list[ListenerCheck] = []
        for listener in config.virtual_gateway.listeners:
            if listener.health_check is None:
                continue
            slot = stats.listener_checks[listener.port] = ListenerCheckStats(listener.port)
            self.checks.append(ListenerCheck(listener, host, routers[listener.port], slot))
        self._tasks: list[asyncio.Task] = []

    @staticmethod
    def wanted(config: GatewayConfig) -> bool:
        return any(lst.health_check is not None for lst in config.virtual_gateway.listeners)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(check.run()) for check in self.checks]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop probing (the gateway is stopping: its listeners are closing)."""
        for task in self._tasks:
            task.cancel()

    def ready(self) -> bool:
        return all(check.healthy for check in self.checks)

    def describe(self) -> str:
        """One line per unhealthy listener: which, what its probe is, the last failure."""
        return "\n".join(check.describe() for check in self.checks if not check.healthy)


def _client_context(protocol: str, handshake_only: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # We are probing ourselves: the certificate is our own, and whether clients trust it
    # is a matter for them, not for this listener's health.  So nothing is verified.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"] if protocol in ("http2", "grpc") else ["http/1.1"])
    if handshake_only:
        # In TLS 1.3 the client is done with the handshake before the server reads its
        # (empty) certificate message, so a listener that then refuses us still proves
        # it accepts connections and serves its certificate.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _server_name(listener: Listener) -> str | None:
    """SNI for the probe: the first DNS name of the listener's certificate that is not a
    wildcard, else the first exact name of its sniCertificates; None to send none."""
    try:
        with open(listener.tls.certificate.certificate_chain, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        for name in sans.value.get_values_for_type(x509.DNSName):
            if "*" not in name:
                return name
    except (OSError, ValueError, x509.ExtensionNotFound):
        pass                # the listener itself reports unusable files
    for sni in listener.sni_certificates:
        for name in sni.server_names:
            if not name.startswith("*."):
                return name
    return None


def _authority(router, protocol: str, path: str, tls: bool) -> str:
    """The Host / :authority the probe sends: the first candidate whose host group
    routes the probe request (the listener's own routing decides), else "localhost"."""
    if protocol == "tcp":
        return DEFAULT_AUTHORITY
    if protocol == "grpc":
        method, target = "POST", GRPC_HEALTH_PATH.decode()
        headers = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    else:
        method, target = "GET", path
        headers = []
    headers.append((b"user-agent", USER_AGENT))
    route_path, _, query = target.partition("?")
    candidates = [DEFAULT_AUTHORITY]
    for group in router.groups:
        if group.kind == "exact":
            candidates.append(group.value)
        elif group.kind == "suffix":
            candidates.append(f"health.{group.value}")
    for host in candidates:
        group = router.group_for(host)
        if group is not None and group.select(method, route_path, query, host, headers,
                                              "https" if tls else "http") is not None:
            return host
    return DEFAULT_AUTHORITY
