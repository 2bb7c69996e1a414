"""connectionPool limits over real sockets: the listener's (VirtualGatewayConnectionPool)
and a backend group's (VirtualNodeConnectionPool http maxConnections / maxPendingRequests).

Every test checks what the clients got and what the backends saw, and the counters on
/metrics against both.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from grpc_peers import Observations, grpc_call, grpc_server, sleep_request
from h2_peers import H2Observations, h2_client, h2_origin
from harness import ResponseReader, free_port, gateway_doc, raw_backend, route, running_gateway, service

SVC = "svc.local"
OVERLOADED = "x-envoy-overloaded"


# ------------------------------------------------------------------ helpers

class HeldBackend:
    """An HTTP/1.1 backend that holds every response until `release` is set, and
    records the connections and requests it saw."""

    def __init__(self, name: str = "b") -> None:
        self.name = name
        self.connections = 0
        self.requests: list[str] = []
        self.release = asyncio.Event()

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                await self.release.wait()
                body = f"{self.name} {path}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        finally:
            writer.close()


class Client:
    """One raw HTTP/1.1 client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                  server_hostname="localhost" if tls else None))

    def send(self, path: str) -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())

    async def response(self, timeout: float = 3.0):
        parsed = ResponseReader()
        async with asyncio.timeout(timeout):
            while not (parsed.responses and parsed.responses[-1].complete):
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                parsed.feed(chunk)
        return parsed.responses[0] if parsed.responses else None

    async def closed(self, timeout: float = 3.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(65536) == b""

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Go away abortively (RST), as a killed client or a client timeout often does.
        A plain close is a half-close to the gateway, which still owes the response."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def get(port: int, path: str):
    client = await Client.connect(port)
    try:
        client.send(path)
        return await client.response()
    finally:
        client.close()


async def until(predicate, what: str, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def scrape(admin_port: int) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
            text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def http_doc(gport: int, services: list, *, listener_pool=None, admin_port: int = 0) -> dict:
    doc = gateway_doc(gport, [route("all", "/", SVC)], services, admin_port=admin_port)
    if listener_pool is not None:
        doc["virtualGateway"]["spec"]["listeners"][0]["connectionPool"] = {"http": listener_pool}
    return doc


def pooled(*ports: int, max_connections: int, max_pending: int | None = None, **extra) -> dict:
    pool = {"maxConnections": max_connections}
    if max_pending is not None:
        pool["maxPendingRequests"] = max_pending
    return service(SVC, *ports, connectionPool={"http": pool}, **extra)


# ------------------------------------ listener pool: per upstream target (2.13)

async def test_listener_max_connections_limits_upstream_connections_not_clients(tmp_path):
    """Spec 2.13 / A13: a listener's http pool counts upstream connections per target;
    every client connection is accepted."""
    gport, aport = free_port(), free_port()
    backend = HeldBackend()
    async with raw_backend(backend.handler) as bport, \
            running_gateway(tmp_path, http_doc(gport, [service(SVC, bport)],
                                               listener_pool={"maxConnections": 1,
                                                              "maxPendingRequests": 2},
                                               admin_port=aport)) as gw:
        pool = gw.stats.pools[0]
        clients = [await Client.connect(gport) for _ in range(4)]   # all accepted
        clients[0].send("/0")
        await until(lambda: backend.requests == ["/0"], "the first request at the backend")
        clients[1].send("/1")
        clients[2].send("/2")
        await until(lambda: pool.upstream_pool_rq_pending == 2, "two requests queued")
        clients[3].send("/3")
        over = await clients[3].response()
        assert over.status == 503
        assert over.header(OVERLOADED) == "true"
        backend.release.set()
        done = [await c.response() for c in clients[:3]]
        assert [r.status for r in done] == [200, 200, 200]
        assert [r.body for r in done] == [b"b /0", b"b /1", b"b /2"]
        for c in clients:
            c.close()
        assert backend.connections == 1
        metrics = await scrape(aport)
    labels = (("target", "0"), ("virtual_service", SVC))
    assert metrics[("gateway_upstream_pool_rq_queued_total", labels)] == 2
    assert metrics[("gateway_upstream_pool_rq_pending_overflow_total", labels)] == 1


async def test_listener_and_service_pools_apply_the_strictest_limit(tmp_path):
    gport = free_port()
    backend = HeldBackend()
    async with raw_backend(backend.handler) as bport, \
            running_gateway(tmp_path, http_doc(gport, [pooled(bport, max_connections=5)],
                                               listener_pool={"maxConnections": 2})) as gw:
        pool = gw.stats.pools[0]
        clients = [await Client.connect(gport) for _ in range(3)]
        for i, c in enumerate(clients):
            c.send(f"/{i}")
        await until(lambda: pool.upstream_pool_rq_pending == 1, "the third request queued")
        assert backend.connections == 2
        backend.release.set()
        assert [(await c.response()).status for c in clients] == [200, 200, 200]
        for c in clients:
            c.close()
        assert backend.connections == 2


# ----------------------------------------- listener: http2 / grpc maxRequests

def h2_listener_doc(gport: int, bport: int, max_requests: int) -> dict:
    routes = [{"gatewayRouteName": "all", "spec": {"http2Route": {
        "match": {"prefix": "/"},
        "action": {"target": {"virtualService": {"virtualServiceName": "h2.local"}},
                   "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}}}}]
    services = [{"virtualServiceName": "h2.local", "protocol": "http2",
                 "endpoints": [f"127.0.0.1:{bport}"]}]
    doc = gateway_doc(gport, routes, services)
    listener = doc["virtualGateway"]["spec"]["listeners"][0]
    listener["portMapping"]["protocol"] = "http2"
    listener["connectionPool"] = {"http2": {"maxRequests": max_requests}}
    return doc


def grpc_listener_doc(gport: int, bport: int, max_requests: int) -> dict:
    routes = [{"gatewayRouteName": "echo", "spec": {"grpcRoute": {
        "match": {"serviceName": "test.Echo"},
        "action": {"target": {"virtualService": {"virtualServiceName": "echo.local"}}}}}}]
    services = [{"virtualServiceName": "echo.local", "protocol": "grpc",
                 "endpoints": [f"127.0.0.1:{bport}"]}]
    doc = gateway_doc(gport, routes, services)
    listener = doc["virtualGateway"]["spec"]["listeners"][0]
    listener["portMapping"]["protocol"] = "grpc"
    listener["connectionPool"] = {"grpc": {"maxRequests": max_requests}}
    return doc


async def test_listener_http2_max_requests_answers_503_overloaded(tmp_path):
    obs = H2Observations()
    gport = free_port()
    async with h2_origin(obs) as bport, running_gateway(tmp_path, h2_listener_doc(gport, bport, 2)) as gw:
        cluster = gw.stats.clusters["h2.local"]
        # Two clients, one slow request each: the limit is per target, across connections.
        async with h2_client(gport) as one, h2_client(gport) as two, h2_client(gport) as three:
            slow = [asyncio.create_task(c.request("GET", f"/slow{i}?sleep=0.6"))
                    for i, c in enumerate((one, two))]
            await until(lambda: len(obs.of("/slow")) == 2, "both slow requests at the origin")
            assert cluster.upstream_rq_active == 2
            over = await asyncio.wait_for(three.request("GET", "/over"), 2.0)
            assert over.status == 503
            assert over.header(OVERLOADED) == "true"
            assert [(await t).status for t in slow] == [200, 200]
            after = await three.request("GET", "/after")
            assert after.status == 200
        assert not obs.of("/over")
        assert cluster.upstream_rq_pending_overflow == 1
        assert cluster.upstream_rq_active == 0


async def test_listener_grpc_max_requests_answers_unavailable(tmp_path):
    obs = Observations()
    gport = free_port()
    async with grpc_server("grpclib", obs) as bport, \
            running_gateway(tmp_path, grpc_listener_doc(gport, bport, 1)) as gw:
        cluster = gw.stats.clusters["echo.local"]
        call = asyncio.create_task(grpc_call("grpcio", gport, "Sleep", sleep_request(0.6)))
        await until(lambda: obs.of("Sleep"), "the call at the backend")
        assert cluster.upstream_rq_active == 1
        over = await asyncio.wait_for(
            asyncio.gather(*(grpc_call(lib, gport, "Unary", b"x") for lib in ("grpclib", "grpcio"))),
            2.0)
        assert [r.status for r in over] == [14, 14]            # UNAVAILABLE, trailers-only
        assert all("overflow" in (r.message or "") for r in over)
        assert (await call).status == 0
        again = await grpc_call("grpclib", gport, "Unary", b"y")
        assert again.messages == [b"y"]
        assert len(obs.of("Unary")) == 1                       # the refused calls never went up
        assert cluster.upstream_rq_pending_overflow == 2
        assert cluster.upstream_rq_active == 0


# ------------------------------------ backend group: maxConnections + queue

async def test_upstream_pool_queues_up_to_max_pending_and_refuses_the_rest(tmp_path):
    gport, aport = free_port(), free_port()
    backend = HeldBackend()
    async with raw_backend(backend.handler) as bport, \
            running_gateway(tmp_path, http_doc(gport, [pooled(bport, max_connections=2, max_pending=3)],
                                               admin_port=aport)) as gw:
        pool = gw.stats.pools[0]
        clients = [await Client.connect(gport) for _ in range(7)]
        for i in (0, 1):
            clients[i].send(f"/{i}")
        await until(lambda: len(backend.requests) == 2, "two requests at the backend")
        for i in (2, 3, 4):
            clients[i].send(f"/{i}")
        await until(lambda: pool.upstream_pool_rq_pending == 3, "three requests queued")
        # The queue is full: refused at once, while the others are still held.
        for i in (5, 6):
            clients[i].send(f"/{i}")
        refused = [await clients[i].response() for i in (5, 6)]
        assert [r.status for r in refused] == [503, 503]
        assert all(r.header(OVERLOADED) == "true" for r in refused)
        assert backend.connections == 2
        assert sorted(backend.requests) == ["/0", "/1"]
        backend.release.set()
        served = [await clients[i].response() for i in range(5)]
        for c in clients:
            c.close()
        assert [r.status for r in served] == [200] * 5
        assert [r.body for r in served] == [f"b /{i}".encode() for i in range(5)]
        # The queued requests took the two connections as they came back: no third one.
        assert backend.connections == 2
        assert sorted(backend.requests) == [f"/{i}" for i in range(5)]
        metrics = await scrape(aport)
    labels = (("target", "0"), ("virtual_service", SVC))
    assert metrics[("gateway_upstream_pool_rq_queued_total", labels)] == 3
    assert metrics[("gateway_upstream_pool_rq_pending_overflow_total", labels)] == 2
    assert metrics[("gateway_upstream_rq_pending_overflow_total", (("virtual_service", SVC),))] == 2
    assert metrics[("gateway_upstream_pool_rq_pending", labels)] == 0
    assert metrics[("gateway_upstream_pool_cx_active", labels)] == 2    # both pooled, idle
    assert metrics[("gateway_upstream_pool_rq_pending_cancelled_total", labels)] == 0


async def test_upstream_pool_default_queue_is_unbounded_and_fifo(tmp_path):
    """Only maxConnections set: maxPendingRequests is App Mesh's 2147483647."""
    gport = free_port()
    backend = HeldBackend()
    async with raw_backend(backend.handler) as bport, \
            running_gateway(tmp_path, http_doc(gport, [pooled(bport, max_connections=1)])) as gw:
        clients = [await Client.connect(gport) for _ in range(6)]
        clients[0].send("/0")
        await until(lambda: backend.requests == ["/0"], "the first request")
        for i in range(1, 6):
            clients[i].send(f"/{i}")
            await until(lambda i=i: gw.stats.pools[0].upstream_pool_rq_pending == i, f"{i} queued")
        backend.release.set()
        served = [await c.response() for c in clients]
        for c in clients:
            c.close()
        assert [r.status for r in served] == [200] * 6
        assert backend.requests == [f"/{i}" for i in range(6)]   # first come, first served
        assert backend.connections == 1


async def test_upstream_pool_limit_spans_the_group_endpoints(tmp_path):
    """maxConnections counts the group's connections across its endpoints: a request the
    balancer sends to the other endpoint waits for the group's one connection."""
    gport = free_port()
    a, b = HeldBackend("a"), HeldBackend("b")
    async with raw_backend(a.handler) as port_a, raw_backend(b.handler) as port_b, \
            running_gateway(tmp_path, http_doc(gport, [pooled(port_a, port_b, max_connections=1)])) as gw:
        first, second = await Client.connect(gport), await Client.connect(gport)
        first.send("/first")
        await until(lambda: a.requests or b.requests, "the first request")
        held, other = (a, b) if a.requests else (b, a)
        second.send("/second")
        await until(lambda: gw.stats.pools[0].upstream_pool_rq_pending == 1, "the second queued")
        held.release.set()
        other.release.set()
        replies = [await first.response(), await second.response()]
        first.close()
        second.close()
        assert [r.status for r in replies] == [200, 200]
        assert held.requests == ["/first", "/second"]      # over the connection handed back
        assert other.connections == 0


async def test_queued_request_times_out_with_504(tmp_path):
    """A request waiting in the queue is bound by its own deadline (perRequest)."""
    gport = free_port()
    tunnel_open = asyncio.Event()
    later: list[str] = []

    async def backend(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade: websocket" in head.lower():
            # A tunnel holds its connection (and so the group's only slot) with no deadline.
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            tunnel_open.set()
            while await reader.read(65536):
                pass
            writer.close()
            return
        later.append(head.split(b" ", 2)[1].decode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    timeout = {"perRequest": {"value": 400, "unit": "ms"}}
    async with raw_backend(backend) as bport, \
            running_gateway(tmp_path, http_doc(gport, [pooled(bport, max_connections=1,
                                                              timeout=timeout)])) as gw:
        pool = gw.stats.pools[0]
        ws = await Client.connect(gport)
        ws.writer.write(b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await asyncio.wait_for(tunnel_open.wait(), 3.0)
        queued = await Client.connect(gport)
        queued.send("/queued")
        await until(lambda: pool.upstream_pool_rq_pending == 1, "the request queued")
        reply = await queued.response()
        assert reply.status == 504
        assert reply.body == b"upstream request timeout\n"
        assert pool.upstream_pool_rq_pending == 0
        assert pool.upstream_pool_rq_pending_cancelled == 1
        queued.close()
        # The tunnel ends: its slot serves the next request.
        ws.close()
        await until(lambda: pool.upstream_pool_cx_active == 0, "the tunnel's slot back")
        assert (await get(gport, "/next")).status == 200
        assert later == ["/next"]                 # the timed-out request never went up
        assert gw.stats.clusters[SVC].upstream_rq_timeout == 1


async def test_queued_request_whose_client_leaves_is_removed_from_the_queue(tmp_path):
    """An HTTP/1.1 client resets its connection; an HTTP/2 client cancels its stream."""
    gport = free_port()
    backend = HeldBackend()
    async with raw_backend(backend.handler) as bport, \
            running_gateway(tmp_path, http_doc(gport, [pooled(bport, max_connections=1, max_pending=1)])) as gw:
        pool = gw.stats.pools[0]
        first, leaver, third = [await Client.connect(gport) for _ in range(3)]
        first.send("/first")
        await until(lambda: backend.requests == ["/first"], "the first request")
        leaver.send("/leaver")
        await until(lambda: pool.upstream_pool_rq_pending == 1, "the second queued")
        leaver.reset()
        await until(lambda: pool.upstream_pool_rq_pending == 0, "the second to leave the queue")
        assert pool.upstream_pool_rq_pending_cancelled == 1
        async with h2_client(gport) as h2:
            cancelled = asyncio.create_task(h2.request("GET", "/h2-leaver", cancel_after=0.3))
            await until(lambda: pool.upstream_pool_rq_pending == 1, "the HTTP/2 request queued")
            assert (await cancelled).cancelled
        await until(lambda: pool.upstream_pool_rq_pending == 0, "the HTTP/2 request to leave")
        assert pool.upstream_pool_rq_pending_cancelled == 2
        # Its place is free: with maxPendingRequests 1, the third queues instead of a 503.
        third.send("/third")
        await until(lambda: pool.upstream_pool_rq_pending == 1, "the third queued")
        backend.release.set()
        replies = [await first.response(), await third.response()]
        first.close()
        third.close()
        assert [r.status for r in replies] == [200, 200]
        assert backend.requests == ["/first", "/third"]      # never those whose client left
        assert pool.upstream_pool_rq_pending_overflow == 0
