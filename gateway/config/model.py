"""The typed, immutable configuration model.

Everything the loader accepts ends up as these frozen dataclasses; nothing after
the loader reads a dict.  Field names follow the App Mesh API shapes (snake_case
here, camelCase on the wire) so a reader can map each one back to
../shared/spec/appmesh-gateway.md.  Enum values are kept exactly as App Mesh
spells them ("ENABLED", "STRICT", "http2", ...).  Durations are converted to
float seconds at load time; ``None`` means "not configured" and the consumer
applies the App Mesh default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class MatchRange:
    """Half-open integer interval [start, end)."""
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """HeaderMatchMethod / GrpcMetadataMatchMethod: exactly one kind."""
    kind: str                     # "exact" | "prefix" | "suffix" | "regex" | "range"
    value: str | MatchRange


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """One `headers[]` (or gRPC `metadata[]`) entry."""
    name: str                     # lower-cased
    match: ValueMatch | None      # None: presence test
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryCondition:
    name: str                     # case-sensitive
    exact: str | None             # None: presence test


@dataclass(frozen=True, slots=True)
class HostnameMatch:
    exact: str | None = None      # lower-cased
    suffix: str | None = None     # lower-cased, leading "." removed


@dataclass(frozen=True, slots=True)
class PathMatch:
    exact: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class HttpRouteMatch:
    """HttpGatewayRouteMatch (httpRoute and http2Route)."""
    prefix: str | None = None
    path: PathMatch | None = None
    hostname: HostnameMatch | None = None
    headers: tuple[HeaderCondition, ...] = ()
    query_parameters: tuple[QueryCondition, ...] = ()
    method: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class GrpcRouteMatch:
    """GrpcGatewayRouteMatch."""
    service_name: str | None = None
    method_name: str | None = None
    hostname: HostnameMatch | None = None
    metadata: tuple[HeaderCondition, ...] = ()
    port: int | None = None


@dataclass(frozen=True, slots=True)
class PrefixRewrite:
    default_prefix: str | None = None   # "ENABLED" | "DISABLED" | None (= ENABLED)
    value: str | None = None            # starts and ends with "/"


@dataclass(frozen=True, slots=True)
class RouteRewrite:
    """HttpGatewayRouteRewrite / GrpcGatewayRouteRewrite (grpc: only hostname)."""
    default_target_hostname: str | None = None  # "ENABLED" | "DISABLED" | None (= ENABLED)
    prefix: PrefixRewrite | None = None
    path_exact: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTarget:
    virtual_service_name: str
    port: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    name: str
    route_type: str                      # "httpRoute" | "http2Route" | "grpcRoute"
    match: HttpRouteMatch | GrpcRouteMatch
    target: RouteTarget
    rewrite: RouteRewrite | None = None  # None: every default applies
    priority: int | None = None
    source: str = ""                     # file the route came from, for messages


# ----------------------------------------------------------------------- gateway


@dataclass(frozen=True, slots=True)
class TlsFileCertificate:
    certificate_chain: str
    private_key: str


@dataclass(frozen=True, slots=True)
class TlsValidation:
    trust_chain: str                          # PEM CA bundle path
    subject_alternative_names: tuple[str, ...] = ()  # exact matches; empty = any


@dataclass(frozen=True, slots=True)
class ListenerTls:
    mode: str                                 # "STRICT" | "PERMISSIVE" | "DISABLED"
    certificate: TlsFileCertificate | None
    validation: TlsValidation | None = None


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """Extension beyond App Mesh: a certificate served to clients asking for these names."""
    server_names: tuple[str, ...]             # lower-cased; "*.example.com" covers one label
    certificate: TlsFileCertificate


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Virtual gateway / virtual node connection pool (one protocol key)."""
    protocol: str                             # "http" | "http2" | "grpc" | "tcp"
    max_connections: int | None = None
    max_pending_requests: int | None = None   # default 2147483647
    max_requests: int | None = None


@dataclass(frozen=True, slots=True)
class HealthCheckPolicy:
    protocol: str                             # "http" | "http2" | "grpc" | "tcp"
    interval_millis: int
    timeout_millis: int
    healthy_threshold: int
    unhealthy_threshold: int
    path: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Listener:
    port: int
    protocol: str                             # "http" | "http2" | "grpc"
    connection_pool: ConnectionPool | None = None
    health_check: HealthCheckPolicy | None = None
    tls: ListenerTls | None = None
    proxy_protocol: str = "off"               # "off" | "optional" | "required"
    sni_certificates: tuple[SniCertificate, ...] = ()   # listeners[].sniCertificates


@dataclass(frozen=True, slots=True)
class ClientPolicyTls:
    validation: TlsValidation
    enforce: bool = True
    ports: tuple[int, ...] = ()               # empty = every port
    certificate: TlsFileCertificate | None = None


@dataclass(frozen=True, slots=True)
class AccessLog:
    path: str
    text_format: str | None = None            # Envoy format string
    json_format: tuple[tuple[str, str], ...] | None = None  # (key, format string) in order


@dataclass(frozen=True, slots=True)
class VirtualGateway:
    name: str
    listeners: tuple[Listener, ...]
    backend_tls: ClientPolicyTls | None = None
    access_log: AccessLog | None = None


# ------------------------------------------------------------- virtual services


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DnsDiscovery:
    hostname: str
    port: int
    response_type: str = "LOADBALANCER"       # "LOADBALANCER" | "ENDPOINTS"
    ip_preference: str = "IPv4_PREFERRED"
    refresh_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    max_server_errors: int
    interval: float                           # seconds
    base_ejection_duration: float             # seconds
    max_ejection_percent: int


@dataclass(frozen=True, slots=True)
class Timeouts:
    per_request: float | None = None          # seconds; None = default 15 s; 0 = disabled
    idle: float | None = None                 # seconds; None = default 300 s; 0 = disabled


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    per_retry_timeout: float                  # seconds
    http_retry_events: tuple[str, ...] = ()
    tcp_retry_events: tuple[str, ...] = ()
    grpc_retry_events: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendGroup:
    """Where a virtual service's traffic goes: a static list or a DNS name.

    A plain virtual service has one group of weight 1; `weightedTargets`
    gives several (canaries)."""
    weight: int
    endpoints: tuple[Address, ...] = ()
    dns: DnsDiscovery | None = None
    connection_pool: ConnectionPool | None = None
    health_check: HealthCheckPolicy | None = None
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True, slots=True)
class VirtualService:
    name: str
    protocol: str                             # "http" | "http2" | "grpc": the backends' protocol
    groups: tuple[BackendGroup, ...]
    timeout: Timeouts = field(default_factory=Timeouts)
    retry_policy: RetryPolicy | None = None
    tls: ClientPolicyTls | None = None
    source: str = ""


# ------------------------------------------------------------ process settings


@dataclass(frozen=True, slots=True)
class Limits:
    """Downstream protections (not App Mesh)."""
    max_request_header_bytes: int = 60 * 1024
    max_request_headers: int = 100
    downstream_idle_timeout: float = 300.0    # keep-alive idle, below the NLB's 350 s
    request_header_timeout: float = 60.0
    http2_keepalive_interval: float = 60.0    # PING an HTTP/2 client silent this long; 0 = never
    http2_keepalive_timeout: float = 20.0     # ... and close its connection if no frame answers


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One local token-bucket limit (gateway.rateLimits[], not App Mesh)."""
    requests_per_second: float
    burst: float                              # bucket size: requests admitted at once
    route: str | None = None                  # a gateway route name; None = every route
    per: str = "route"                        # "route": one bucket per route | "client": per address


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    workers: int | None = None                # None = CPU count
    drain_delay: float = 5.0
    drain_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    listen_address: str = "0.0.0.0"           # where listeners bind (gateway.listenAddress)
    # X-Forwarded-For entries (from the right) added by proxies we trust: Envoy's
    # xff_num_trusted_hops, used to find the client address of per-client rate limits.
    trusted_forwarded_hops: int = 0
    rate_limits: tuple[RateLimit, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    virtual_gateway: VirtualGateway
    gateway_routes: tuple[GatewayRoute, ...]
    virtual_services: tuple[VirtualService, ...]
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    sources: tuple[str, ...] = ()

    def virtual_service(self, name: str) -> VirtualService | None:
        for vs in self.virtual_services:
            if vs.name == name:
                return vs
        return None
