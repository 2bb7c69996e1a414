"""The sanity request of the h2c and grpc workloads, against real servers on loopback.

Small servers built on the h2 library answer in each way a proxy under test
might: correctly, without the grpc-status trailer, with a reset, in HTTP/1.1,
or by hanging up. The probe must tell "not served" (no HTTP/2) from a wrong
answer, and the workload check must refuse what h2load alone would count as a
success.
"""
from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import bench_h2  # noqa: E402
import bench_targets as bt  # noqa: E402
import bench_targets_h2 as bt2  # noqa: E402
import h2_probe  # noqa: E402

Responder = Callable[[h2.connection.H2Connection, int, dict[str, str], bytes], None]


def serve(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.1)       # closing a socket does not wake a thread blocked in accept()
    port = lsock.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                try:
                    handle(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        lsock.close()


def h2_handler(respond: Responder) -> Callable[[socket.socket], None]:
    """Collects each request's headers and body, then lets `respond` answer it."""
    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        heads: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytearray] = {}
        while data := sock.recv(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    heads[ev.stream_id] = dict(ev.headers)
                    bodies[ev.stream_id] = bytearray()
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded):
                    respond(conn, ev.stream_id, heads[ev.stream_id], bytes(bodies[ev.stream_id]))
            sock.sendall(conn.data_to_send())
    return handle


def grpc_ok(conn, sid, headers, body) -> None:
    # Answers only what a correct proxy forwards: the call, its message, :authority rewritten.
    good = (headers[":path"] == bt2.GRPC_PATH and body == bt2.GRPC_REQUEST
            and headers.get("content-type") == "application/grpc")
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    conn.send_data(sid, bt2.GRPC_RESPONSE if good else b"")
    conn.send_headers(sid, [("grpc-status", "0" if good else "3")], end_stream=True)


def grpc_no_trailer(conn, sid, headers, body) -> None:
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    conn.send_data(sid, bt2.GRPC_RESPONSE, end_stream=True)


def echo_body(conn, sid, headers, body) -> None:
    text = f"origin path={headers[':path'].removeprefix('/bench')} host=origin.local\n".encode()
    conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(text)))])
    conn.send_data(sid, text, end_stream=True)


def reset(conn, sid, headers, body) -> None:
    conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)


@pytest.fixture
def server(request) -> Iterator[int]:
    yield from serve(request.param)


def target(port: int, path: str) -> bt.Target:
    return bt.Target("gateway", None, port, path, "bench.local")


@pytest.mark.parametrize("server", [h2_handler(grpc_ok)], indirect=True)
def test_grpc_call_passes_with_message_and_trailer(server: int):
    got = bench_h2.check("grpc", target(server, bt2.GRPC_PATH))
    assert got == {"status": 200, "grpc_status": "0", "trailers": {"grpc-status": "0"}}


@pytest.mark.parametrize("server", [h2_handler(grpc_no_trailer)], indirect=True)
def test_grpc_call_without_grpc_status_fails_though_http_200(server: int):
    with pytest.raises(RuntimeError, match="grpc-status None"):
        bench_h2.check("grpc", target(server, bt2.GRPC_PATH))


@pytest.mark.parametrize("server", [h2_handler(grpc_ok)], indirect=True)
def test_grpc_call_to_the_wrong_method_reports_each_problem(server: int):
    with pytest.raises(RuntimeError, match=r"message b'', expected .*grpc-status '3'"):
        bench_h2.check("grpc", target(server, "/bench.Echo/Other"))


@pytest.mark.parametrize("server", [h2_handler(echo_body)], indirect=True)
def test_h2c_check_reads_the_rewritten_body(server: int):
    assert bench_h2.check("h2c", target(server, "/bench/hello")) == {"status": 200}
    with pytest.raises(RuntimeError, match="expected 200"):
        bench_h2.check("h2c", target(server, "/bench/other"))


@pytest.mark.parametrize("server", [h2_handler(reset)], indirect=True)
def test_reset_stream_is_not_served(server: int):
    with pytest.raises(h2_probe.NotServed, match="reset the stream"):
        h2_probe.request(server, "GET", "/", "x")


def http1_400(sock: socket.socket) -> None:
    sock.recv(65536)
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def hang_up(sock: socket.socket) -> None:
    sock.recv(65536)


@pytest.mark.parametrize("server", [http1_400], indirect=True)
def test_http1_answer_is_not_served(server: int):
    with pytest.raises(h2_probe.NotServed, match=r"HTTP/1.x \('HTTP/1.1 400 Bad Request'\)"):
        h2_probe.request(server, "GET", "/", "x")


@pytest.mark.parametrize("server", [hang_up], indirect=True)
def test_closed_connection_is_not_served(server: int):
    with pytest.raises(h2_probe.NotServed, match="closed the connection"):
        h2_probe.request(server, "GET", "/", "x")


def test_nothing_listening_is_a_plain_connection_error():
    # Not "not served": the target is not up at all, which the bench reports as skipped.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]     # bound, never listening: connect is refused
        with pytest.raises(ConnectionRefusedError):
            h2_probe.request(port, "GET", "/", "x", timeout=2)


def silent(sock: socket.socket) -> None:
    sock.recv(65536)
    sock.recv(65536)        # until the client gives up and closes


@pytest.mark.parametrize("server", [silent], indirect=True)
def test_silence_times_out_as_not_served(server: int):
    with pytest.raises(h2_probe.NotServed, match="within 1s"):
        h2_probe.request(server, "GET", "/", "x", timeout=1.0)
