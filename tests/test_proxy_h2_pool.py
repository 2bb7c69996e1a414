"""connectionPool http2/grpc maxRequests on a virtual service, over real sockets.

Past the limit the gateway refuses at once (Envoy's max_requests circuit breaker):
503 with x-envoy-overloaded for HTTP, UNAVAILABLE for gRPC; nothing queues.
"""
from __future__ import annotations

import asyncio

from grpc_peers import Observations, grpc_call, grpc_server, sleep_request
from h2_peers import H2Observations, h2_client, h2_origin
from harness import free_port, gateway_doc, running_gateway


def grpc_doc(gport: int, bport: int, max_requests: int) -> dict:
    routes = [{"gatewayRouteName": "echo", "spec": {"grpcRoute": {
        "match": {"serviceName": "test.Echo"},
        "action": {"target": {"virtualService": {"virtualServiceName": "echo.local"}}}}}}]
    services = [{"virtualServiceName": "echo.local", "protocol": "grpc",
                 "endpoints": [f"127.0.0.1:{bport}"],
                 "connectionPool": {"grpc": {"maxRequests": max_requests}}}]
    doc = gateway_doc(gport, routes, services)
    doc["virtualGateway"]["spec"]["listeners"][0]["portMapping"]["protocol"] = "grpc"
    return doc


def h2_doc(gport: int, bport: int, max_requests: int) -> dict:
    routes = [{"gatewayRouteName": "all", "spec": {"http2Route": {
        "match": {"prefix": "/"},
        "action": {"target": {"virtualService": {"virtualServiceName": "h2.local"}},
                   "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}}}}]
    services = [{"virtualServiceName": "h2.local", "protocol": "http2",
                 "endpoints": [f"127.0.0.1:{bport}"],
                 "connectionPool": {"http2": {"maxRequests": max_requests}}}]
    doc = gateway_doc(gport, routes, services)
    doc["virtualGateway"]["spec"]["listeners"][0]["portMapping"]["protocol"] = "http2"
    return doc


async def test_grpc_max_requests_refuses_the_overflow_with_unavailable(tmp_path):
    obs = Observations()
    gport = free_port()
    async with grpc_server("grpclib", obs) as bport, \
            running_gateway(tmp_path, grpc_doc(gport, bport, 2)) as gw:
        calls = [asyncio.create_task(grpc_call("grpclib", gport, "Sleep", sleep_request(0.5)))
                 for _ in range(2)]
        await asyncio.sleep(0.2)            # both are in flight at the backend
        over = await asyncio.wait_for(
            asyncio.gather(*(grpc_call(lib, gport, "Unary", b"x") for lib in ("grpclib", "grpcio"))),
            2.0)
        assert [r.status for r in over] == [14, 14]      # UNAVAILABLE, answered at once
        assert all("overflow" in (r.message or "") for r in over)
        done = await asyncio.gather(*calls)
        assert [r.status for r in done] == [0, 0]
        # The slots came back: the limit allows two again.
        again = await asyncio.gather(*(grpc_call("grpcio", gport, "Unary", b"y") for _ in range(2)))
        assert [r.messages for r in again] == [[b"y"], [b"y"]]
        stats = gw.stats.clusters["echo.local"]
        assert stats.upstream_rq_pending_overflow == 2
        assert stats.upstream_rq_active == 0
        # The refused calls never reached the backend.
        assert len(obs.of("Unary")) == 2


async def test_http2_max_requests_answers_503_overloaded(tmp_path):
    obs = H2Observations()
    gport = free_port()
    async with h2_origin(obs) as bport, running_gateway(tmp_path, h2_doc(gport, bport, 1)) as gw:
        async with h2_client(gport) as client:
            slow = asyncio.create_task(client.request("GET", "/slow?sleep=0.5"))
            while not obs.of("/slow"):      # in flight at the origin
                await asyncio.sleep(0.01)
            fast = await asyncio.wait_for(client.request("GET", "/fast"), 2.0)
            assert fast.status == 503
            assert fast.header("x-envoy-overloaded") == "true"
            assert (await slow).status == 200
            after = await client.request("GET", "/after")
            assert after.status == 200
        assert not obs.of("/fast")
        assert gw.stats.clusters["h2.local"].upstream_rq_pending_overflow == 1


async def test_backend_allowing_no_streams_fails_fast_without_a_connection_storm(tmp_path):
    obs = H2Observations()
    gport = free_port()
    async with h2_origin(obs, max_concurrent_streams=0) as bport, \
            running_gateway(tmp_path, h2_doc(gport, bport, 100)) as gw:
        async with h2_client(gport) as client:
            replies = await asyncio.wait_for(
                asyncio.gather(*(client.request("GET", f"/r{i}") for i in range(5))), 3.0)
        assert [r.status for r in replies] == [503] * 5
        assert not obs.requests
        # One connection per failed attempt at most, not one per loop turn.
        assert gw.stats.clusters["h2.local"].upstream_cx_total <= 5
