"""Active health checks (App Mesh HealthCheckPolicy, 2.14): the probes, the threshold
state machine, and the checker of a virtual service's endpoints.

The probes (`probe()` on a `ProbeTarget`) and the state machine (`Thresholds`) have two
users: `ClusterHealthChecker` below, which probes the endpoints of a virtual service, and
listener/self_check.py, where the gateway probes its own listeners for its readiness.

One `ClusterHealthChecker` per cluster whose backend groups carry a `healthCheck`, run as
one asyncio task; each probe is a short-lived child task of it, so a probe that hangs
until its timeout never delays the probes of other endpoints.

Semantics (README "Health checks"):

- A probe is one fresh connection (TLS when the client policy covers the probe port) and
  one request: `http` GET `path` over HTTP/1.1, `http2` the same over HTTP/2 (h2c, or h2
  over TLS), `grpc` `grpc.health.v1.Health/Check` with an empty service name, `tcp` the
  connect (and handshake) alone.  Success is status 200 (http, http2), `SERVING` with
  grpc-status 0 (grpc), or an established connection (tcp), all within `timeoutMillis`.
- Probes of one endpoint start `intervalMillis` apart plus a jitter of up to 10% of the
  interval, measured start to start, and never overlap: a probe still running when the
  next is due delays it.  So an endpoint is never probed more often than configured.
- An endpoint starts unhealthy (spec 2.14) and is probed at once; its first success makes
  it healthy.  After that it turns unhealthy after `unhealthyThreshold` consecutive
  failures and healthy again after `healthyThreshold` consecutive successes.  While the
  first probes are in flight every endpoint is unhealthy, so the group is in panic mode
  and balances over all of them: start-up behaves as if they were healthy.
- Balancing reads `Endpoint.healthy` (upstream/cluster.py: rotation and panic mode).
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from gateway.config.model import HealthCheckPolicy
from gateway.upstream.tls import verify_peer

if TYPE_CHECKING:
    from gateway.upstream.cluster import Cluster, Endpoint

log = logging.getLogger("gateway.upstream.health")

# Envoy's interval_jitter_percent style: each interval is stretched by a random share of
# up to this much, never shortened, so checks of many endpoints drift apart.
JITTER = 0.10
DEFAULT_PATH = "/"                      # spec 2.14: path default (proposal)
USER_AGENT = b"appmesh-gateway-health-check"
GRPC_HEALTH_PATH = b"/grpc.health.v1.Health/Check"
# HealthCheckRequest{service: ""} is the empty message: a 5-byte gRPC frame of length 0.
GRPC_EMPTY_REQUEST = b"\x00\x00\x00\x00\x00"
GRPC_SERVING = 1                         # grpc.health.v1 HealthCheckResponse.ServingStatus
READ_SIZE = 65536


class ProbeFailed(Exception):
    """A probe got an answer that is not healthy; the message says why."""


def next_due(start: float, interval_millis: int) -> float:
    """When the probe after one started at `start` is due: the interval, stretched by
    the jitter, never shortened."""
    return start + interval_millis / 1000.0 * (1.0 + JITTER * random.random())


# ------------------------------------------------------------------ state machine

class Thresholds:
    """Spec 2.14's state machine of one probed target: unhealthy until its first
    success; then unhealthy after `unhealthy_threshold` consecutive failures and healthy
    again after `healthy_threshold` consecutive successes."""
    __slots__ = ("healthy_threshold", "unhealthy_threshold", "healthy", "successes",
                 "failures", "first", "last_failure")

    def __init__(self, policy: HealthCheckPolicy):
        self.healthy_threshold = policy.healthy_threshold
        self.unhealthy_threshold = policy.unhealthy_threshold
        self.healthy = False
        self.successes = 0
        self.failures = 0
        self.first = True            # no probe has finished yet
        self.last_failure = ""

    def record(self, reason: str | None) -> bool:
        """Count one probe's result (None = success, else why it failed); True when
        it changed `healthy`."""
        first, self.first = self.first, False
        if reason is None:
            self.failures = 0
            self.successes += 1
            if not self.healthy and (first or self.successes >= self.healthy_threshold):
                self.healthy = True
                return True
        else:
            self.successes = 0
            self.failures += 1
            self.last_failure = reason
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False


# ------------------------------------------------------------------------ probes

@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where one probe connects and what it asks for."""
    host: str
    port: int
    tls_context: ssl.SSLContext | None = None     # None: plaintext
    server_hostname: str | None = None            # SNI; None sends none
    # Names the server certificate must carry (upstream/tls.py verify_peer); None: the
    # certificate is not checked here (the context decides).
    expected_names: tuple[str, ...] | None = None
    authority: str = "localhost"                  # Host / :authority
    path: str = DEFAULT_PATH                      # http, http2


async def probe(protocol: str, target: ProbeTarget, timeout_millis: int) -> str | None:
    """Run one probe of `protocol` ("http", "http2", "grpc", "tcp"): None when it
    passed, else why it failed.  Cancellation propagates."""
    try:
        async with asyncio.timeout(timeout_millis / 1000.0):
            await PROBES[protocol](target)
        return None
    except TimeoutError:
        return f"timeout after {timeout_millis} ms"
    except ProbeFailed as exc:
        return str(exc)
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        return f"connection failure: {exc.strerror or exc}"
    except (h2.exceptions.H2Error, ValueError) as exc:
        return f"protocol error: {exc}"


async def _open(target: ProbeTarget) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.tls_context is None:
        return await asyncio.open_connection(target.host, target.port)
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=target.tls_context,
        server_hostname=target.server_hostname)
    if target.expected_names is not None:
        # Checked here rather than through the upstream TLS policy's check(): probes
        # stay out of the request-path TLS counters.
        reason = verify_peer(writer.get_extra_info("ssl_object"), target.expected_names)
        if reason is not None:
            writer.transport.abort()
            raise ProbeFailed(f"upstream TLS: {reason}")
    return reader, writer


async def probe_tcp(target: ProbeTarget) -> None:
    _reader, writer = await _open(target)
    writer.close()


async def probe_http(target: ProbeTarget) -> None:
    reader, writer = await _open(target)
    try:
        path = target.path.encode("latin-1")
        host = target.authority.encode("latin-1")
        writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n"
                     b"Connection: close\r\n\r\n" % (path, host, USER_AGENT))
        line = await reader.readline()
    finally:
        writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProbeFailed("no HTTP/1.1 status line" if not line else
                          f"malformed status line {line[:60]!r}")
    status = int(parts[1])
    if status != 200:
        raise ProbeFailed(f"status {status}")


async def probe_http2(target: ProbeTarget) -> None:
    path = target.path.encode("latin-1")
    status, _headers, _body = await _h2_request(target, [
        (b":method", b"GET"), (b":path", path)], None)
    if status != 200:
        raise ProbeFailed(f"status {status}")


async def probe_grpc(target: ProbeTarget) -> None:
    status, headers, body = await _h2_request(target, [
        (b":method", b"POST"), (b":path", GRPC_HEALTH_PATH),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")], GRPC_EMPTY_REQUEST)
    if status != 200:
        raise ProbeFailed(f"HTTP status {status}")
    grpc_status = headers.get(b"grpc-status")
    if grpc_status != b"0":
        message = headers.get(b"grpc-message", b"").decode("latin-1")
        raise ProbeFailed(f"grpc-status {grpc_status.decode('latin-1') if grpc_status else 'missing'}"
                          + (f": {message}" if message else ""))
    serving = _serving_status(body)
    if serving != GRPC_SERVING:
        raise ProbeFailed(f"serving status {serving} (want SERVING)")


async def _h2_request(target: ProbeTarget, head: list[tuple[bytes, bytes]],
                      body: bytes | None) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/2 request on a fresh connection: (status, headers + trailers, body)."""
    reader, writer = await _open(target)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        scheme = b"https" if target.tls_context is not None else b"http"
        conn.send_headers(sid, [head[0], (b":scheme", scheme),
                                (b":authority", target.authority.encode("latin-1")),
                                *head[1:], (b"user-agent", USER_AGENT)],
                          end_stream=body is None)
        if body is not None:
            conn.send_data(sid, body, end_stream=True)
        writer.write(conn.data_to_send())
        status = 0
        fields: dict[bytes, bytes] = {}
        received = bytearray()
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                raise ProbeFailed("connection closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) \
                        and event.stream_id == sid:
                    for name, value in event.headers:
                        if name == b":status":
                            status = int(value)
                        else:
                            fields[name] = value
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    received += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    return status, fields, bytes(received)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    raise ProbeFailed(f"stream reset (error code {event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ProbeFailed(f"GOAWAY (error code {event.error_code})")
            pending = conn.data_to_send()
            if pending:
                writer.write(pending)
    finally:
        writer.close()


PROBES = {"http": probe_http, "http2": probe_http2, "grpc": probe_grpc, "tcp": probe_tcp}


def _serving_status(body: bytes) -> int:
    """ServingStatus of a HealthCheckResponse in one gRPC message frame (0 = UNKNOWN).

    Hand-decoded: the message is a single enum field, and the protobuf runtime is not
    a dependency of the gateway."""
    if len(body) < 5:
        raise ProbeFailed("no response message")
    if body[0] != 0:
        raise ProbeFailed("compressed response message")
    length = int.from_bytes(body[1:5], "big")
    message = body[5:5 + length]
    if len(message) != length:
        raise ProbeFailed("truncated response message")
    status = 0
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(message, i)
            if field == 1:
                status = value
        elif wire == 2:
            size, i = _varint(message, i)
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ProbeFailed(f"undecodable response message (wire type {wire})")
    if i != len(message):
        raise ProbeFailed("truncated response message")
    return status


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProbeFailed("truncated response message")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


# ------------------------------------------------------- a virtual service's endpoints

class Target(Thresholds):
    """The check state of one endpoint."""
    __slots__ = ("endpoint", "policy", "port", "tls", "peer", "due", "task")

    def __init__(self, endpoint: Endpoint, policy: HealthCheckPolicy, now: float):
        super().__init__(policy)
        self.endpoint = endpoint
        self.policy = policy
        self.port = policy.port or endpoint.port
        cluster = endpoint.cluster
        # The probe goes over the same TLS policy as requests to its port would.
        self.tls = cluster.tls_for(self.port) if self.port != endpoint.port else endpoint.tls
        self.peer = endpoint.tls_peer if self.tls is endpoint.tls else (
            self.tls.peer_for(endpoint.host) if self.tls is not None else None)
        self.due = now               # first probe at once
        self.task: asyncio.Task | None = None

    def probe_target(self) -> ProbeTarget:
        # Built per probe: a rotated client policy swaps its context.
        endpoint = self.endpoint
        tls = self.tls
        return ProbeTarget(
            endpoint.host, self.port,
            tls.context if tls is not None else None,
            (self.peer.server_hostname or None) if tls is not None else None,
            self.peer.expected_names if tls is not None else None,
            endpoint.cluster.name, self.policy.path or DEFAULT_PATH)


class ClusterHealthChecker:
    """Probes every endpoint of the cluster's health-checked groups, in one task."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.loop = cluster.loop
        self.stats = cluster.stats
        self.targets: dict[Endpoint, Target] = {}
        self._wake = asyncio.Event()
        self.sync()

    @staticmethod
    def wanted(cluster: Cluster) -> bool:
        return any(g.spec.health_check is not None for g in cluster.groups)

    # -------------------------------------------------------------- endpoints

    def sync(self) -> None:
        """Follow the cluster's endpoints (DNS replaces them): new ones start unhealthy
        and are probed at once, gone ones stop being probed."""
        now = self.loop.time()
        seen = set()
        for group in self.cluster.groups:
            policy = group.spec.health_check
            if policy is None:
                continue
            for endpoint in group.endpoints:
                seen.add(endpoint)
                if endpoint not in self.targets:
                    self.targets[endpoint] = Target(endpoint, policy, now)
                    endpoint.set_healthy(False)
        for endpoint in [e for e in self.targets if e not in seen]:
            target = self.targets.pop(endpoint)
            if target.task is not None:
                target.task.cancel()
        self._count_healthy()
        self._wake.set()

    def _count_healthy(self) -> None:
        self.stats.health_check_healthy = sum(1 for e in self.targets if e.healthy)

    # ------------------------------------------------------------------- loop

    async def run(self) -> None:
        try:
            while True:
                now = self.loop.time()
                wake_at = None
                for target in list(self.targets.values()):
                    if target.task is not None:
                        continue          # its end wakes us
                    if target.due <= now:
                        self._launch(target, now)
                    elif wake_at is None or target.due < wake_at:
                        wake_at = target.due
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(),
                                           None if wake_at is None else wake_at - now)
                except asyncio.TimeoutError:
                    pass
        finally:
            for target in self.targets.values():
                if target.task is not None:
                    target.task.cancel()

    def _launch(self, target: Target, now: float) -> None:
        target.due = next_due(now, target.policy.interval_millis)
        target.task = self.loop.create_task(self._probe(target))

    async def _probe(self, target: Target) -> None:
        policy = target.policy
        try:
            reason = await probe(policy.protocol, target.probe_target(), policy.timeout_millis)
        except asyncio.CancelledError:
            target.task = None
            raise
        target.task = None
        if self.targets.get(target.endpoint) is target:
            self._record(target, reason)
        self._wake.set()

    def _record(self, target: Target, reason: str | None) -> None:
        endpoint = target.endpoint
        first = target.first
        if reason is None:
            self.stats.health_check_success += 1
        else:
            self.stats.health_check_failure += 1
        if target.record(reason):
            endpoint.set_healthy(target.healthy)
            self._count_healthy()
            if target.healthy:
                log.info("virtual service %s: endpoint %s healthy", self.cluster.name,
                         endpoint.label)
            else:
                log.warning("virtual service %s: endpoint %s unhealthy after %d failed checks: %s",
                            self.cluster.name, endpoint.label, target.failures, reason)
        elif reason is not None and first:
            log.warning("virtual service %s: endpoint %s failed its first health check: %s",
                        self.cluster.name, endpoint.label, reason)
