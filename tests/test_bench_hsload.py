"""The handshake load generator against a real TLS server on loopback.

The server issues session tickets (Python's default), so a client that resumed
would show it: hsload must report every connection as a full handshake.
"""
from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import hsload  # noqa: E402
from bench_procs import tls_resumes  # noqa: E402

from gateway.certs import issue, make_ca  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or not Path("/usr/include/openssl/ssl.h").exists(),
    reason="needs a C compiler and OpenSSL headers")


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    return hsload.build(tmp_path_factory.mktemp("hsload"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[ssl.SSLContext, str]:
    d = tmp_path_factory.mktemp("certs")
    ca = make_ca("test CA")
    cert, key = issue(ca, "bench.local", dns=("bench.local",), ips=("127.0.0.1",)).write(d, "srv")
    ca_file, _ = ca.write(d, "ca")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, ca_file


async def serve(ctx: ssl.SSLContext, status: str):
    body = b"ok\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def run_hsload(binary: Path, port: int, seconds: int = 1) -> hsload.HandshakeResult:
    proc = await asyncio.create_subprocess_exec(
        str(binary), "-p", str(port), "-P", "/x", "-H", "bench.local", "-c", "4",
        "-d", str(seconds), "-s", "bench.local",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 20)
    assert proc.returncode == 0, err
    return hsload.parse(out.decode())


async def test_every_connection_is_a_full_tls13_handshake(binary, tls):
    ctx, ca_file = tls
    server = await serve(ctx, "200 OK")
    port = server.sockets[0].getsockname()[1]
    try:
        # The server really would resume a session offered back to it...
        assert await asyncio.to_thread(tls_resumes, port, ca_file)
        res = await run_hsload(binary, port)
    finally:
        server.close()
        await server.wait_closed()
    # ...and hsload never offers one.
    assert res.requests > 20
    assert res.resumed == 0
    assert res.tls_version == "TLSv1.3"
    assert res.errors == 0, res
    assert 0 < res.latency_ms["p50"] <= res.latency_ms["p99"] <= res.latency_ms["max"]
    assert res.requests_per_sec == pytest.approx(res.requests / (res.duration_ms / 1000))


async def test_non_200_answers_are_errors_not_handshakes(binary, tls):
    ctx, _ = tls
    server = await serve(ctx, "503 Service Unavailable")
    port = server.sockets[0].getsockname()[1]
    try:
        res = await run_hsload(binary, port)
    finally:
        server.close()
        await server.wait_closed()
    assert res.requests == 0
    assert res.non_2xx_3xx > 0
    assert res.errors == res.non_2xx_3xx


async def test_a_plaintext_server_fails_the_handshake(binary):
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        res = await run_hsload(binary, port)
    finally:
        server.close()
        await server.wait_closed()
    assert res.requests == 0
    assert res.socket_errors["handshake"] > 0


def test_output_that_is_not_an_hsload_report_is_rejected():
    with pytest.raises(ValueError, match="not an hsload report"):
        hsload.parse("usage: hsload -p PORT ...\n")
    with pytest.raises(ValueError, match="not an hsload report"):
        hsload.parse('{"completed": 3}')
