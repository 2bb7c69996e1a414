"""The h2c and gRPC workloads' origin and proxy configurations.

h2c: the client speaks HTTP/2 with prior knowledge to the proxy, which does the
same rewrite as in the http workload (/bench/hello -> /hello, Host origin.local)
and forwards over HTTP/1.1 keep-alive to the existing HTTP/1.1 origin. The
direct row is h2load against an nginx serving the same echo over h2c.

grpc: unary calls to /bench.Echo/Unary; each proxy forwards them over h2c to an
nginx that answers every call with one fixed length-prefixed message, HTTP 200
and the trailer grpc-status: 0, after reading the whole request as a gRPC server
does. (A bare `return` answers on the request headers and then resets the
half-open stream with NO_ERROR, which is legal but which nginx's grpc_pass
mistakes for a frame of the next call on the reused connection: 502s. `mirror`
makes nginx read the body first; the static handler then refuses the POST (405,
or 404/403 when it finds no readable file) and error_page hands it to the
`return`.) That nginx serves the call only under the
:authority origin.local, so a proxy that skips the host rewrite (the only
rewrite App Mesh does for gRPC) gets a 404 at the sanity check instead of being
measured. Its default concurrent-stream limit (128) is kept: a proxy
multiplexing 256 streams must open a second upstream connection, as it would
against a real gRPC server.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bench_targets as bt
from bench_procs import ManagedProcess, free_port
from h2load import H2Request

GRPC_SERVICE = "bench.Echo"
GRPC_PATH = f"/{GRPC_SERVICE}/Unary"
GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))


def grpc_frame(payload: bytes) -> bytes:
    """One uncompressed gRPC message: flag 0, 4-byte big-endian length, the bytes."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


# Protobuf field 1 (a string) each way: a small unary call, as in a typical RPC benchmark.
GRPC_REQUEST = grpc_frame(b"\x0a\x04ping")
GRPC_RESPONSE = grpc_frame(b"\x0a\x04pong")


def nginx_literal(data: bytes) -> str:
    """Bytes that nginx can hold in a double-quoted string as they are.

    nginx's config reader is length-based, so NUL and newline pass through a
    `return 200 "..."` untouched (checked with a gRPC client); only the quote,
    the escape, the variable sign and non-ASCII (the file is written as text)
    cannot.
    """
    bad = sorted({b for b in data if b >= 0x80 or b in b'"\\$\r'})
    if bad:
        raise ValueError(f"bytes {bad} cannot be embedded in an nginx string literal")
    return data.decode("ascii")


# ------------------------------------------------------------------ origin


@dataclass
class H2Origin:
    """One nginx on the load CPU: the h2c echo (direct h2c row) and the gRPC responder."""
    process: ManagedProcess
    h2c_port: int
    grpc_port: int

    def direct(self, workload: str) -> bt.Target:
        if workload == "grpc":
            return bt.Target("direct", self.process, self.grpc_port, GRPC_PATH, bt.ORIGIN_HOST)
        return bt.Target("direct", self.process, self.h2c_port, bt.ORIGIN_PATH, bt.ORIGIN_HOST)

    def upstream_port(self, workload: str, http1_origin_port: int) -> int:
        """Where the proxies send this workload's requests."""
        return self.grpc_port if workload == "grpc" else http1_origin_port


def origin_h2(workdir: Path, cpu: str) -> H2Origin:
    h2c_port, grpc_port = free_port(), free_port()
    conf = bt.nginx_common(workdir, "origin-h2") + f"""\
    server {{
        listen 127.0.0.1:{h2c_port} http2 backlog=4096;
        location / {{ return 200 "origin path=$uri host=$host\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{grpc_port} http2 backlog=4096 default_server;
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{grpc_port} http2;
        server_name {bt.ORIGIN_HOST};
        default_type application/grpc;
        location = {GRPC_PATH} {{
            mirror /_read_body;
            error_page 403 404 405 = @reply;
        }}
        location = /_read_body {{ internal; return 204; }}
        location @reply {{
            add_trailer grpc-status 0 always;
            return 200 "{nginx_literal(GRPC_RESPONSE)}";
        }}
    }}
}}
"""
    return H2Origin(bt.nginx_process("origin-h2", conf, workdir, cpu), h2c_port, grpc_port)


# ------------------------------------------------------------------ nginx


def nginx(workload: str, workdir: Path, cpu: str, upstream_port: int) -> bt.Target:
    port = free_port()
    # 256 streams in flight need as many idle upstream connections kept, or
    # nginx closes and reopens connections under load (nginx never multiplexes
    # upstream: one request per connection, gRPC included).
    upstream = f"""\
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
"""
    if workload == "grpc":
        locations = f"""\
        location /{GRPC_SERVICE}/ {{
            grpc_pass grpc://origin;
            grpc_set_header Host {bt.ORIGIN_HOST};
            grpc_set_header X-Forwarded-For $remote_addr;
            grpc_set_header X-Forwarded-Proto $scheme;
            grpc_set_header X-Request-ID $request_id;
        }}
"""
        path = GRPC_PATH
    else:
        locations = f"""\
        location {bt.BENCH_PREFIX}/ {{
{bt.NGINX_PROXY}
        }}
        location = {bt.BENCH_PREFIX} {{
{bt.NGINX_PROXY}
        }}
"""
        path = bt.BENCH_PREFIX + bt.ORIGIN_PATH
    name = f"nginx-{workload}"
    conf = bt.nginx_common(workdir, name) + upstream + f"""\
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
{locations}\
    }}
}}
"""
    return bt.Target("nginx", bt.nginx_process(name, conf, workdir, cpu), port, path,
                     "bench.local")


# ------------------------------------------------------------------ Envoy

_ENVOY_GRPC_ROUTES = f"""\
              - match: {{prefix: "/{GRPC_SERVICE}/"}}
                route: {{cluster: origin, host_rewrite_literal: {bt.ORIGIN_HOST}}}
"""


def envoy(workload: str, workdir: Path, cpu: str, upstream_port: int) -> bt.Target:
    if workload == "grpc":
        return bt.envoy(workdir, cpu, upstream_port, codec="HTTP2", routes=_ENVOY_GRPC_ROUTES,
                        cluster_extra=bt.ENVOY_UPSTREAM_H2, name="envoy-grpc", path=GRPC_PATH)
    return bt.envoy(workdir, cpu, upstream_port, codec="HTTP2", name="envoy-h2c")


# ------------------------------------------------------------------ this gateway

SHAPES = {
    "h2c": bt.GatewayShape("http2", "http2Route", f"{{prefix: {bt.BENCH_PREFIX}}}", "http",
                           bt.BENCH_PREFIX + bt.ORIGIN_PATH, name="gateway-h2c"),
    "grpc": bt.GatewayShape("grpc", "grpcRoute", f"{{serviceName: {GRPC_SERVICE}}}", "grpc",
                            GRPC_PATH, name="gateway-grpc"),
}


def gateway(workload: str, workdir: Path, cpu: str, upstream_port: int, repo: Path,
            workers: int) -> bt.Target:
    return bt.gateway(workdir, cpu, upstream_port, repo, workers, shape=SHAPES[workload])


# ------------------------------------------------------------------ what the load sends


def grpc_request_file(workdir: Path) -> Path:
    path = workdir / "grpc-request.bin"
    if not path.exists():
        path.write_bytes(GRPC_REQUEST)
    return path


def load_request(workload: str, target: bt.Target, workdir: Path) -> H2Request:
    if workload == "grpc":
        return H2Request(target.host, tuple(f"{k}: {v}" for k, v in GRPC_HEADERS),
                         grpc_request_file(workdir))
    return H2Request(target.host)
