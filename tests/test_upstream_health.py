"""Active health checks (gateway/upstream/health.py) against real backends.

The configuration loader refuses intervals under 5 s (spec 2.14), so these tests load a
valid document and then swap in a HealthCheckPolicy with 100-200 ms intervals.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp
import grpc
import grpc.aio
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.load import load_config
from gateway.config.model import HealthCheckPolicy
from gateway.runtime import Gateway
from gateway.upstream.health import JITTER
from tests.grpc_peers import grpclib_health
from tests.h2_peers import H2Observations, h2_origin
from tests.harness import echo_backend, free_port, gateway_doc, route, service

SVC = "svc.local"
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"    # HealthCheckResponse{status}


def policy(protocol="http", path="/health", interval=100, timeout=200, healthy=2, unhealthy=2,
           port=None) -> HealthCheckPolicy:
    return HealthCheckPolicy(protocol, interval, timeout, healthy, unhealthy, path=path, port=port)


@asynccontextmanager
async def checked_gateway(tmp_path, services, check: HealthCheckPolicy, *, admin_port=None):
    port = free_port()
    doc = gateway_doc(port, [route("r", "/")], services, admin_port=admin_port or 0)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config, _ = load_config(str(path))
    config = replace(config, virtual_services=tuple(
        replace(vs, groups=tuple(replace(g, health_check=check) for g in vs.groups))
        for vs in config.virtual_services))
    gw = Gateway(config, admin=admin_port is not None)
    await gw.start()
    try:
        yield gw, port
    finally:
        await gw.stop(timeout=1.0)


def endpoint(gw, port, host="127.0.0.1"):
    return next(e for e in gw.clusters[SVC].endpoints() if e.port == port and e.host == host)


def target(gw, port):
    return gw.clusters[SVC].health.targets[endpoint(gw, port)]


async def until(condition, timeout=3.0, what="condition"):
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None


def health_route(answer):
    """A /health route for echo_backend: `answer()` gives the status of each probe."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=answer(request))
    return [("GET", "/health", handler)]


class Load:
    """Clients sending requests through the gateway until stopped: (start, status, backend)."""

    def __init__(self, port: int, workers: int = 4):
        self.port = port
        self.results: list[tuple[float, int, str | None]] = []
        self.workers = workers
        self.stopping = False

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            start = loop.time()
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/work") as r:
                    body = await r.read()
                    name = (await r.json())["name"] if r.status == 200 else None
                    self.results.append((start, r.status, name))
                    del body
            except aiohttp.ClientError:
                self.results.append((start, 0, None))
            await asyncio.sleep(0.002)

    @asynccontextmanager
    async def running(self):
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(self._worker(session)) for _ in range(self.workers)]
            try:
                yield self
            finally:
                self.stopping = True
                await asyncio.gather(*tasks)

    def since(self, t: float):
        return [r for r in self.results if r[0] >= t]


# --------------------------------------------------------------- HTTP, under load

async def test_killed_backend_leaves_the_rotation_and_comes_back_on_the_same_port(tmp_path):
    check = policy(interval=100, timeout=200, healthy=2, unhealthy=2)
    loop = asyncio.get_running_loop()
    async with echo_backend("a") as port_a:
        backend_b = echo_backend("b")
        port_b = await backend_b.__aenter__()
        try:
            async with checked_gateway(tmp_path, [service(SVC, port_a, port_b)], check) as (gw, port):
                a, b = endpoint(gw, port_a), endpoint(gw, port_b)
                await until(lambda: a.healthy and b.healthy, what="both healthy")
                load = Load(port)
                async with load.running():
                    await until(lambda: {"a", "b"} <= {r[2] for r in load.results}, what="traffic to both")
                    await backend_b.__aexit__(None, None, None)
                    killed = loop.time()
                    # unhealthyThreshold probes, each interval (+ jitter) apart, the last
                    # one may take its timeout; plus slack for a loaded test machine.
                    bound = check.unhealthy_threshold * check.interval_millis * (1 + JITTER) / 1000 \
                        + check.timeout_millis / 1000 + 1.0
                    await until(lambda: not b.healthy, timeout=bound, what="b unhealthy")
                    detected = loop.time()
                    assert target(gw, port_b).failures >= check.unhealthy_threshold
                    assert detected - killed < bound
                    await until(lambda: len(load.since(detected)) >= 100, what="100 requests")
                    after = load.since(detected)
                    assert {(status, name) for _, status, name in after} == {(200, "a")}

                    async with echo_backend("b", port=port_b):
                        await until(lambda: b.healthy, timeout=2.0, what="b healthy again")
                        back = loop.time()
                        assert target(gw, port_b).successes >= check.healthy_threshold
                        await until(lambda: {"a", "b"} <= {r[2] for r in load.since(back)},
                                    what="traffic to both again")
                        assert {status for _, status, _ in load.since(back)} == {200}
        finally:
            await backend_b.__aexit__(None, None, None)


def model_states(statuses, healthy, unhealthy):
    """The spec's state machine (2.14), independently: the state before each probe."""
    state, first, ok, bad = False, True, 0, 0
    before = []
    for status in statuses:
        before.append(state)
        if status == 200:
            ok, bad = ok + 1, 0
            if not state and (first or ok >= healthy):
                state = True
        else:
            ok, bad = 0, bad + 1
            if state and bad >= unhealthy:
                state = False
        first = False
    before.append(state)
    return before


async def test_thresholds_follow_consecutive_results_and_probes_keep_their_interval(tmp_path):
    check = policy(interval=100, timeout=200, healthy=2, unhealthy=3)
    script = [200, 200, 503, 200, 503, 503, 503, 503, 200, 503, 200, 200, 200]
    seen: list[tuple[bool, int, float]] = []     # (healthy when the probe arrived, answer, time)
    holder = {}

    def answer(request):
        status = script[len(seen)] if len(seen) < len(script) else 200
        seen.append((holder["endpoint"].healthy, status, asyncio.get_running_loop().time()))
        return status

    async with echo_backend("a", routes=health_route(answer)) as port_a:
        async with checked_gateway(tmp_path, [service(SVC, port_a)], check) as (gw, _port):
            holder["endpoint"] = endpoint(gw, port_a)
            await until(lambda: len(seen) > len(script), timeout=5.0, what="the script")
    observed = [s[0] for s in seen[:len(script) + 1]]
    assert observed == model_states(script, check.healthy_threshold, check.unhealthy_threshold)
    gaps = [b[2] - a[2] for a, b in zip(seen, seen[1:])]
    # Never more often than the interval (the probe's connect time varies by a few ms).
    assert min(gaps) >= 0.09, gaps


# -------------------------------------------------------------------- timeouts

async def test_a_probe_that_times_out_is_a_failure_and_probes_never_overlap(tmp_path):
    check = policy(interval=100, timeout=150, healthy=2, unhealthy=2)
    loop = asyncio.get_running_loop()
    accepted: list[float] = []
    writers: list[asyncio.StreamWriter] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(loop.time())
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if len(accepted) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            await reader.read()           # hang until the checker gives up and closes
        writer.close()

    port_a = free_port()
    server = await asyncio.start_server(backend, "127.0.0.1", port_a)
    try:
        async with checked_gateway(tmp_path, [service(SVC, port_a)], check) as (gw, _port):
            a = endpoint(gw, port_a)
            await until(lambda: a.healthy, what="healthy after the first probe")
            await until(lambda: not a.healthy, what="unhealthy after timeouts")
            t = target(gw, port_a)
            assert t.failures == check.unhealthy_threshold
            assert t.last_failure == "timeout after 150 ms"
            stats = gw.clusters[SVC].stats
            assert (stats.health_check_success, stats.health_check_failure) == (1, 2)
            await until(lambda: len(accepted) >= 5, what="more probes")
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
    hung = accepted[1:5]
    # A probe that hangs for its whole timeout (longer than the interval) delays the next.
    assert min(b - a for a, b in zip(hung, hung[1:])) >= 0.9 * check.timeout_millis / 1000


# ------------------------------------------------------------------ protocols

async def test_http_probe_sends_get_path_with_the_service_host_and_wants_200(tmp_path):
    requests = []

    def answer(request):
        requests.append((request.method, request.path_qs, request.headers.get("Host")))
        return 204                        # 2xx but not 200: a failure (Envoy's default)

    async with echo_backend("a", routes=health_route(answer)) as port_a:
        async with checked_gateway(tmp_path, [service(SVC, port_a)], policy()) as (gw, _port):
            await until(lambda: target(gw, port_a).failures >= 2, what="two failed probes")
            assert not endpoint(gw, port_a).healthy
            assert target(gw, port_a).last_failure == "status 204"
    assert requests[0] == ("GET", "/health", SVC)


async def test_http2_probe_over_h2c(tmp_path):
    obs = H2Observations()
    async with h2_origin(obs) as port_a, h2_origin() as port_b:
        services = [service(SVC, port_a, port_b, protocol="http2")]
        async with checked_gateway(tmp_path, services, policy("http2", "/health")) as (gw, _port):
            await until(lambda: endpoint(gw, port_a).healthy, what="h2 origin healthy")
            record = await obs.wait("/health")
            assert (record.method, record.scheme, record.authority) == ("GET", "http", SVC)
        bad = policy("http2", "/health?status=503")
        async with checked_gateway(tmp_path, services, bad) as (gw, _port):
            await until(lambda: target(gw, port_b).failures >= 2, what="503 probes fail")
            assert not endpoint(gw, port_b).healthy
            assert target(gw, port_b).last_failure == "status 503"


@asynccontextmanager
async def grpcio_health(state: dict, *, with_health=True):
    async def check(request: bytes, context) -> bytes:
        state["requests"].append(request)
        return state["answer"]

    server = grpc.aio.server()
    if with_health:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)


@pytest.mark.parametrize("library", ["grpclib", "grpcio"])
async def test_grpc_probe_uses_the_grpc_health_v1_protocol(tmp_path, library):
    state = {"answer": SERVING, "requests": []}
    peer = grpclib_health(state) if library == "grpclib" else grpcio_health(state)
    async with peer as port_a:
        services = [service(SVC, port_a, protocol="grpc")]
        async with checked_gateway(tmp_path, services, policy("grpc", None)) as (gw, _port):
            a = endpoint(gw, port_a)
            await until(lambda: a.healthy, what="SERVING")
            assert state["requests"][0] == b""          # HealthCheckRequest{service: ""}
            state["answer"] = NOT_SERVING
            await until(lambda: not a.healthy, what="NOT_SERVING")
            assert target(gw, port_a).last_failure == "serving status 2 (want SERVING)"
            state["answer"] = SERVING
            await until(lambda: a.healthy, what="SERVING again")


async def test_grpc_probe_of_a_server_without_the_health_service_fails(tmp_path):
    async with grpcio_health({}, with_health=False) as port_a:
        services = [service(SVC, port_a, protocol="grpc")]
        async with checked_gateway(tmp_path, services, policy("grpc", None)) as (gw, _port):
            await until(lambda: target(gw, port_a).failures >= 2, what="failed probes")
            assert not endpoint(gw, port_a).healthy
            assert target(gw, port_a).last_failure.startswith("grpc-status 12")   # UNIMPLEMENTED


async def test_tcp_probe_is_the_connect(tmp_path):
    connections = []

    async def accept(reader, writer):
        connections.append(writer)
        writer.close()

    port_a = free_port()
    server = await asyncio.start_server(accept, "127.0.0.1", port_a)
    async with checked_gateway(tmp_path, [service(SVC, port_a)], policy("tcp", None)) as (gw, _port):
        a = endpoint(gw, port_a)
        await until(lambda: a.healthy, what="listening")
        assert connections
        server.close()
        await server.wait_closed()
        await until(lambda: not a.healthy, what="refused")
        assert target(gw, port_a).last_failure.startswith("connection failure")
        server = await asyncio.start_server(accept, "127.0.0.1", port_a)
        await until(lambda: a.healthy, what="listening again")
        assert target(gw, port_a).successes >= 2
    server.close()


# ------------------------------------------------------------- panic, DNS, metrics

async def test_when_every_endpoint_is_unhealthy_requests_still_go_out(tmp_path):
    failing = health_route(lambda request: 503)
    async with echo_backend("a", routes=failing) as port_a, \
            echo_backend("b", routes=failing) as port_b:
        async with checked_gateway(tmp_path, [service(SVC, port_a, port_b)], policy()) as (gw, port):
            await until(lambda: all(target(gw, p).failures >= 2 for p in (port_a, port_b)),
                        what="both failing")
            assert not endpoint(gw, port_a).healthy and not endpoint(gw, port_b).healthy
            assert gw.clusters[SVC].groups[0].panic
            names = []
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    async with session.get(f"http://127.0.0.1:{port}/x") as r:
                        assert r.status == 200
                        names.append((await r.json())["name"])
            assert sorted(set(names)) == ["a", "b"]


async def test_dns_endpoints_that_come_and_go_get_checkers(tmp_path):
    async with echo_backend("a") as port_a:
        dns = {"virtualServiceName": SVC, "protocol": "http",
               "dns": {"hostname": "localhost", "port": port_a, "responseType": "ENDPOINTS",
                       "ipPreference": "IPv4_ONLY"}}
        async with checked_gateway(tmp_path, [dns], policy()) as (gw, _port):
            cluster = gw.clusters[SVC]
            group = cluster.groups[0]
            first = endpoint(gw, port_a)
            await until(lambda: first.healthy, what="resolved endpoint healthy")
            # As if an earlier lookup had answered 127.0.0.2 only: the next one replaces it.
            stale = cluster.endpoint_class(cluster, "127.0.0.2", port_a)
            group.endpoints = [stale]
            cluster.health.sync()
            assert set(cluster.health.targets) == {stale} and not stale.healthy
            await cluster.refresh_dns()
            (fresh,) = group.endpoints
            assert fresh.host == "127.0.0.1" and fresh is not first
            assert set(cluster.health.targets) == {fresh}
            await until(lambda: fresh.healthy, what="new endpoint probed and healthy")


async def test_health_metrics(tmp_path):
    admin_port = free_port()
    check = policy(interval=2000, timeout=500)       # one probe each for the scrape
    async with echo_backend("a") as port_a, \
            echo_backend("b", routes=health_route(lambda request: 500)) as port_b:
        services = [service(SVC, port_a, port_b)]
        async with checked_gateway(tmp_path, services, check, admin_port=admin_port) as (gw, _port):
            stats = gw.clusters[SVC].stats
            await until(lambda: stats.health_check_success + stats.health_check_failure == 2,
                        what="first probes")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                    text = await r.text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.labels.get("virtual_service") == SVC}
    assert values["gateway_health_check_success_total"] == 1
    assert values["gateway_health_check_failure_total"] == 1
    assert values["gateway_health_check_healthy"] == 1
