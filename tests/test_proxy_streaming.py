"""Large bodies through a real gateway process: bounded memory and backpressure both ways.

The gateway runs as a subprocess (`gateway run -c FILE`) so its memory can be read
from /proc without the test's own buffers in the count.  Backends and clients are
raw asyncio sockets in this process; every body is generated piece by piece and
checked with a running byte count and CRC-32, so neither side ever holds a body.

Memory bound: the gateway keeps at most one socket read (256 KiB in uvloop) plus a
write buffer that pauses its peer at 64 KiB per direction, the 256 KiB pre-connect
request buffer and the 64 KiB replay copy -- well under 1 MiB of payload per
transfer.  PEAK_GROWTH_MIB above the idle process's RSS leaves room for allocator
slack while staying far below the 200 MiB .. 1 GiB that a gateway buffering the
body would need.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zlib
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httptools
import pytest
import yaml

from harness import free_port, gateway_doc, route, service

GATEWAY_BIN = Path(sys.executable).with_name("gateway")
MiB = 1 << 20
GiB = 1 << 30
PEAK_GROWTH_MIB = 32
# Kernel socket buffers are not gateway memory, but they bound how far a peer gets
# ahead of a paused reader: loopback autotuning allows a few MiB up to tcp_rmem max
# (32 MiB here) per socket, and there are four sockets between backend and client.
IN_FLIGHT_LIMIT = 100 * MiB

BLOCK = random.Random(20240601).randbytes(MiB + 13)   # odd size: pieces never align with reads
BLOCK_VIEW = memoryview(BLOCK)


def pieces(total: int, size: int = len(BLOCK)):
    """The test body -- BLOCK repeated, cut at `total` -- as views of at most `size` bytes."""
    left = total
    offset = 0
    while left > 0:
        n = min(size, left, len(BLOCK) - offset)
        yield BLOCK_VIEW[offset:offset + n]
        offset = (offset + n) % len(BLOCK)
        left -= n


def expected_crc(total: int) -> int:
    crc = 0
    for piece in pieces(total):
        crc = zlib.crc32(piece, crc)
    return crc


# ------------------------------------------------------------------ gateway process

def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    pids += _tree(int(child))
    except OSError:
        pass
    return pids


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.baseline_mib = 0.0

    def rss_mib(self) -> float:
        # Workers, if the runtime ever forks any, are measured too: the largest counts.
        return max(_status_kib(p, "VmRSS") for p in _tree(self.proc.pid)) / 1024

    def peak_mib(self) -> float:
        return max(_status_kib(p, "VmHWM") for p in _tree(self.proc.pid)) / 1024

    @property
    def bound_mib(self) -> float:
        return self.baseline_mib + PEAK_GROWTH_MIB

    def assert_bounded(self, what: str) -> float:
        assert self.proc.poll() is None, f"gateway exited:\n{self.log_path.read_text()}"
        peak = self.peak_mib()
        print(f"[{what}] gateway peak RSS {peak:.1f} MiB (idle {self.baseline_mib:.1f}, "
              f"bound {self.bound_mib:.1f})")
        assert peak < self.bound_mib, (
            f"{what}: gateway peak RSS {peak:.1f} MiB exceeds {self.bound_mib:.1f} MiB "
            f"(idle {self.baseline_mib:.1f} MiB + {PEAK_GROWTH_MIB})")
        return peak


async def _wait_listening(port: int, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway did not listen:\n{log_path.read_text()}")
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


@asynccontextmanager
async def gateway_process(tmp_path: Path, doc: dict):
    port = doc["virtualGateway"]["spec"]["listeners"][0]["portMapping"]["port"]
    doc["gateway"].update({"workers": 1, "drain": {"delaySeconds": 0, "timeoutSeconds": 1}})
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(GATEWAY_BIN), "--log-level", "WARNING", "run", "-c", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT)
    gw = GatewayProcess(proc, port, log_path)
    try:
        await _wait_listening(port, proc, log_path)
        admin_port = doc["gateway"]["admin"]["port"]
        if admin_port:
            await _wait_listening(admin_port, proc, log_path)
        await asyncio.sleep(0.2)   # let start-up allocations settle before the baseline
        gw.baseline_mib = gw.rss_mib()
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def streaming_doc(gport: int, bport: int, *, second_bport: int | None = None) -> dict:
    # The default 15 s perRequest deadline covers the whole exchange (spec 2.16); the
    # big transfers get room so a slow machine fails on the assertions, not on a 504.
    timeout = {"perRequest": {"value": 120, "unit": "s"}}
    routes = [route("big", "/", "big.local")]
    services = [service("big.local", bport, timeout=timeout)]
    if second_bport is not None:
        routes.insert(0, route("other", "/other", "other.local"))
        services.append(service("other.local", second_bport, timeout=timeout))
    return gateway_doc(gport, routes, services, admin_port=free_port())


# ------------------------------------------------------------------------ backend

class Backend:
    """A raw HTTP/1.1 backend, keep-alive, speaking only what these tests need.

    POST/PUT any path: a sink that counts the body (Content-Length or chunked) and
    answers {"bytes": n, "crc": c}.  GET /source?size=N[&chunked=1][&die=M&how=abort|close]:
    streams N bytes of the test body as fast as the peer takes them, optionally
    dying after M bytes.
    """

    def __init__(self):
        self.sent = 0            # response body bytes handed to the kernel (after drain)
        self.received = 0        # request body bytes read by the sink
        self.slow = asyncio.Event()   # while set, the sink reads 16 KiB every 10 ms
        self.peer_gone = asyncio.Event()
        self.requests = 0
        self.connections = 0
        self.errors: list[BaseException] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests += 1
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                if method in ("POST", "PUT"):
                    await self._sink(reader, writer, headers)
                else:
                    if not await self._source(reader, writer, target):
                        return
        except (ConnectionError, OSError):
            self.peer_gone.set()
        except BaseException as exc:   # a backend bug must fail the test, not hang it
            self.errors.append(exc)
            raise
        finally:
            writer.close()

    async def _read_counted(self, reader, n: int, crc: int) -> int:
        while n:
            size = min(n, 16384 if self.slow.is_set() else 262144)
            data = await reader.read(size)
            if not data:
                raise ConnectionError("request body cut short")
            n -= len(data)
            self.received += len(data)
            crc = zlib.crc32(data, crc)
            if self.slow.is_set():
                await asyncio.sleep(0.01)
        return crc

    async def _sink(self, reader, writer, headers) -> None:
        start = self.received
        crc = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                crc = await self._read_counted(reader, size, crc)
                assert await reader.readexactly(2) == b"\r\n"
        else:
            crc = await self._read_counted(reader, int(headers.get("content-length", "0")), crc)
        body = json.dumps({"bytes": self.received - start, "crc": crc}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def _source(self, reader, writer, target) -> bool:
        query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        size = int(query.get("size", "0"))
        chunked = query.get("chunked") == "1"
        die = int(query["die"]) if "die" in query else None
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        sent = 0
        for piece in pieces(size, 256 * 1024):
            if die is not None and sent >= die:
                await writer.drain()
                if query.get("how") == "abort":
                    writer.transport.abort()
                else:
                    writer.close()
                return False
            if chunked:
                writer.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
            else:
                writer.write(piece)
            await writer.drain()
            sent += len(piece)
            self.sent += len(piece)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@asynccontextmanager
async def backend_server(backend: Backend):
    port = free_port()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        assert not backend.errors, backend.errors


# ------------------------------------------------------------------------- client

class BodyCounter:
    """httptools response callbacks that keep a byte count and CRC instead of the body.

    One read can hold the end of one pipelined response and the start of the next: the
    parser carries on into it, so what follows this message goes to `following()`, a
    counter that shares the parser, never into this one's count.
    """

    def __init__(self, parser=None):
        self.parser = parser or httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.count = 0
        self.crc = 0
        self.small_body = b""
        self.complete = False
        self.next: BodyCounter | None = None

    def following(self) -> "BodyCounter":
        """The counter of the next response on the same connection."""
        if self.next is None:
            self.next = BodyCounter(self.parser)
        return self.next

    def on_message_begin(self):
        if self.complete:
            self.following().on_message_begin()

    def on_header(self, name, value):
        if self.complete:
            return self.following().on_header(name, value)
        self.headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self):
        if self.complete:
            return self.following().on_headers_complete()
        self.status = self.parser.get_status_code()

    def on_body(self, body):
        if self.complete:
            return self.following().on_body(body)
        self.count += len(body)
        self.crc = zlib.crc32(body, self.crc)
        if len(self.small_body) < 4096:
            self.small_body += body[:4096]

    def on_message_complete(self):
        if self.complete:
            return self.following().on_message_complete()
        self.complete = True

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)


async def connect(port: int, *, rcvbuf: int | None = None):
    """A client connection; a small receive buffer makes a slow reader's backlog visible."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=65536)


async def read_response(reader, counter: BodyCounter, *, stop_at: int | None = None) -> bool:
    """Feed the response into `counter` until it completes; False if the peer cut it."""
    while not counter.complete:
        if stop_at is not None and counter.count >= stop_at:
            return True
        try:
            data = await reader.read(262144)
        except ConnectionError:
            return False
        if not data:
            return False
        counter.feed(data)
    return True


async def download(port: int, target: str, *, timeout: float = 60.0) -> BodyCounter:
    reader, writer = await connect(port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
        counter = BodyCounter()
        async with asyncio.timeout(timeout):
            await read_response(reader, counter)
        return counter
    finally:
        writer.close()


async def upload(port: int, total: int, *, chunked: bool = False, progress: list | None = None,
                 timeout: float = 60.0) -> BodyCounter:
    """POST `total` bytes from the generator; `progress[0]` tracks bytes past drain().

    The body waits for the gateway's 100 Continue (as curl does for big bodies), so the
    head is always parsed on its own; test_upload_head_and_body_in_one_read covers a
    client that sends both at once.
    """
    reader, writer = await connect(port)
    try:
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n%s\r\n\r\n"
                     % framing)
        counter = BodyCounter()
        async with asyncio.timeout(timeout):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            for piece in pieces(total):
                if chunked:
                    writer.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
                else:
                    writer.write(piece)
                await writer.drain()
                if progress is not None:
                    progress[0] += len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
            await read_response(reader, counter)
        return counter
    finally:
        writer.close()


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB:.0f} MiB in {seconds:.2f} s = {nbytes / MiB / seconds:.0f} MiB/s"


async def assert_still_serving(gw: GatewayProcess) -> None:
    """A fresh request after the transfer: proves the gateway (and its pool) still work."""
    counter = await download(gw.port, "/source?size=100000", timeout=5)
    assert counter.status == 200 and counter.complete
    assert (counter.count, counter.crc) == (100000, expected_crc(100000))


# -------------------------------------------------------------------- 1: big bodies

@pytest.mark.parametrize("total,chunked", [(GiB, False), (256 * MiB, True)],
                         ids=["content-length-1GiB", "chunked-256MiB"])
async def test_large_upload_streams_with_bounded_memory(tmp_path, total, chunked):
    backend = Backend()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        start = time.perf_counter()
        counter = await upload(gport, total, chunked=chunked)
        elapsed = time.perf_counter() - start
        print(f"upload {'chunked' if chunked else 'content-length'}: {rate(total, elapsed)}")
        assert counter.status == 200 and counter.complete
        assert json.loads(counter.small_body) == {"bytes": total, "crc": expected_crc(total)}
        gw.assert_bounded(f"upload {total // MiB} MiB")


@pytest.mark.parametrize("total,chunked", [(GiB, False), (256 * MiB, True)],
                         ids=["content-length-1GiB", "chunked-256MiB"])
async def test_large_download_streams_with_bounded_memory(tmp_path, total, chunked):
    backend = Backend()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        start = time.perf_counter()
        counter = await download(gport, f"/source?size={total}&chunked={int(chunked)}")
        elapsed = time.perf_counter() - start
        print(f"download {'chunked' if chunked else 'content-length'}: {rate(total, elapsed)}")
        assert counter.status == 200 and counter.complete
        if chunked:
            assert counter.headers.get("transfer-encoding") == "chunked"
        else:
            assert counter.headers.get("content-length") == str(total)
        assert (counter.count, counter.crc) == (total, expected_crc(total))
        gw.assert_bounded(f"download {total // MiB} MiB")
        await assert_still_serving(gw)


# ----------------------------------------------------------- 2, 3: backpressure

async def slow_read(reader, counter: BodyCounter, seconds: float) -> None:
    """Read 16 KiB every 10 ms (~1.6 MiB/s) for `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        data = await reader.read(16384)
        assert data, "gateway closed during the slow read"
        counter.feed(data)
        await asyncio.sleep(0.01)


async def test_slow_reader_pauses_the_backend(tmp_path):
    total = 200 * MiB
    backend = Backend()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        reader, writer = await connect(gport, rcvbuf=64 * 1024)
        try:
            writer.write(b"GET /source?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % total)
            counter = BodyCounter()
            await slow_read(reader, counter, 3.0)
            ahead = backend.sent - counter.count
            print(f"slow reader: client read {counter.count / MiB:.1f} MiB, backend sent "
                  f"{backend.sent / MiB:.1f} MiB, gateway RSS now {gw.rss_mib():.1f} MiB")
            # Without backpressure the backend would have sent all 200 MiB by now.
            assert ahead < IN_FLIGHT_LIMIT, f"backend got {ahead / MiB:.0f} MiB ahead of the reader"
            gw.assert_bounded("slow reader, paused")
            async with asyncio.timeout(30):
                assert await read_response(reader, counter)
            assert counter.status == 200
            assert (counter.count, counter.crc) == (total, expected_crc(total))
            gw.assert_bounded("slow reader, after")
        finally:
            writer.close()


async def test_slow_backend_sink_pauses_the_client(tmp_path):
    total = 200 * MiB
    backend = Backend()
    backend.slow.set()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        progress = [0]
        task = asyncio.create_task(upload(gport, total, progress=progress))
        try:
            await asyncio.sleep(3.0)
            ahead = progress[0] - backend.received
            print(f"slow sink: client sent {progress[0] / MiB:.1f} MiB, backend read "
                  f"{backend.received / MiB:.1f} MiB, gateway RSS now {gw.rss_mib():.1f} MiB")
            assert not task.done()
            assert ahead < IN_FLIGHT_LIMIT, f"client got {ahead / MiB:.0f} MiB ahead of the sink"
            gw.assert_bounded("slow sink, paused")
            backend.slow.clear()
            counter = await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
        assert counter.status == 200
        assert json.loads(counter.small_body) == {"bytes": total, "crc": expected_crc(total)}
        gw.assert_bounded("slow sink, after")


# ------------------------------------------------------------ 4: broken transfers

@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_disconnect_mid_download_closes_upstream(tmp_path, how):
    backend = Backend()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        reader, writer = await connect(gport)
        writer.write(b"GET /source?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % GiB)
        counter = BodyCounter()
        async with asyncio.timeout(10):
            await read_response(reader, counter, stop_at=8 * MiB)
        assert counter.status == 200 and not counter.complete
        if how == "abort":
            writer.transport.abort()
        else:
            writer.close()   # unread bytes pending: the kernel resets the connection
        # The backend's write fails once the gateway drops the upstream connection.
        await asyncio.wait_for(backend.peer_gone.wait(), 5)
        assert backend.sent < GiB
        gw.assert_bounded("client disconnect")
        await assert_still_serving(gw)
        assert backend.connections == 2   # the broken connection was not pooled


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_backend_death_mid_download_cuts_the_client(tmp_path, chunked, how):
    backend = Backend()
    gport = free_port()
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        reader, writer = await connect(gport)
        try:
            writer.write(b"GET /source?size=%d&chunked=%d&die=%d&how=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                         % (64 * MiB, chunked, 8 * MiB, how.encode()))
            counter = BodyCounter()
            async with asyncio.timeout(10):
                ended_cleanly = await read_response(reader, counter)
            # A truncated body must look truncated: no final zero-size chunk, and the
            # connection ends before Content-Length is reached.
            assert not ended_cleanly and not counter.complete
            assert counter.status == 200
            assert 0 < counter.count < 64 * MiB
        finally:
            writer.close()
        await assert_still_serving(gw)


async def test_upload_head_and_body_in_one_read(tmp_path):
    """A client that writes head and body together (no Expect) -- the common case."""
    backend = Backend()
    gport = free_port()
    body = b"".join(pieces(512 * 1024))
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)):
        reader, writer = await connect(gport)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            counter = BodyCounter()
            async with asyncio.timeout(10):
                await read_response(reader, counter)
        finally:
            writer.close()
        assert counter.status == 200, counter.small_body
        assert json.loads(counter.small_body) == {"bytes": len(body), "crc": zlib.crc32(body)}


async def test_pooled_connection_reused_after_backpressured_download(tmp_path):
    """A slow reader pauses the upstream connection again and again; once back in the
    pool it must be reading, or the next request on it hangs."""
    backend = Backend()
    gport = free_port()
    total = 16 * MiB
    async with backend_server(backend) as bport, \
            gateway_process(tmp_path, streaming_doc(gport, bport)) as gw:
        reader, writer = await connect(gport, rcvbuf=64 * 1024)
        try:
            writer.write(b"GET /source?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % total)
            counter = BodyCounter()
            # Slow to the very end, so the response's last bytes reach a full client buffer.
            while not counter.complete:
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data
                counter.feed(data)
                await asyncio.sleep(0.002)
            assert (counter.count, counter.crc) == (total, expected_crc(total))
        finally:
            writer.close()
        for _ in range(3):
            await assert_still_serving(gw)
        assert backend.connections == 1


async def test_pipelined_downloads_to_two_services_stay_bounded(tmp_path):
    """Backpressure follows the client connection from one pipelined exchange to the
    next, even when the second goes to another service (another upstream connection)."""
    first, second = Backend(), Backend()
    gport = free_port()
    total = 200 * MiB
    async with backend_server(first) as bport1, backend_server(second) as bport2, \
            gateway_process(tmp_path, streaming_doc(gport, bport1, second_bport=bport2)) as gw:
        reader, writer = await connect(gport, rcvbuf=64 * 1024)
        try:
            writer.write(b"GET /source?size=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /other/source?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (8 * MiB, total))
            counter = BodyCounter()
            async with asyncio.timeout(30):
                assert await read_response(reader, counter)   # the first, read fast
            assert counter.count == 8 * MiB
            second_counter = counter.following()
            # Nothing read for a while: the second response piles up somewhere.
            await asyncio.sleep(2)
            await slow_read(reader, second_counter, 1.0)
            ahead = second.sent - second_counter.count
            print(f"pipelined: second backend sent {second.sent / MiB:.1f} MiB, client read "
                  f"{second_counter.count / MiB:.1f} MiB, gateway RSS now {gw.rss_mib():.1f} MiB")
            assert ahead < IN_FLIGHT_LIMIT, f"backend got {ahead / MiB:.0f} MiB ahead of the reader"
            gw.assert_bounded("pipelined, second paused")
        finally:
            writer.close()
