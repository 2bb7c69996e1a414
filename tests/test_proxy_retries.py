"""Retries (proxy/retry.py) through a running gateway, with real backends that fail on purpose.

Each test asserts what the client got and what the backends saw (attempt counts, bodies,
request ids), plus the retry counters and the access log's URX flag where they matter."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from gateway.proxy import retry as retry_policy
from grpc_peers import Observations, fail_request, grpc_client, grpc_server
from h2_peers import H2Observations, h2_origin
from harness import (
    echo_handler, echo_backend, free_port, gateway_doc, raw_backend, raw_exchange, route,
    running_gateway, service,
)
from test_proxy_grpc import grpc_doc, grpc_route, grpc_service

VS = "svc.local"


def policy(*http_events, max_retries=2, per_try_ms=2000, tcp=(), grpc=()):
    p = {"maxRetries": max_retries, "perRetryTimeout": {"value": per_try_ms, "unit": "ms"}}
    if http_events:
        p["httpRetryEvents"] = list(http_events)
    if tcp:
        p["tcpRetryEvents"] = list(tcp)
    if grpc:
        p["grpcRetryEvents"] = list(grpc)
    return p


def doc_for(gport, ports, retry=None, log=None, **extra):
    svc = service(VS, *ports, **extra)
    if retry is not None:
        svc["retryPolicy"] = retry
    return gateway_doc(gport, [route("r", "/")], [svc],
                       access_log={"path": str(log)} if log is not None else None)


class Flaky:
    """An aiohttp handler failing its first `fail` requests with `status`, then echoing.
    Records (time, request id, body) of every attempt it saw."""

    def __init__(self, fail: int, status: int = 503, delay: float = 0.0):
        self.fail = fail
        self.status = status
        self.delay = delay
        self.seen: list[tuple[float, str, bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((time.monotonic(), request.headers.get("x-request-id", ""), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if len(self.seen) <= self.fail:
            return web.Response(status=self.status, text="nope\n")
        return await echo_handler(request)


def get(path="/", extra=b""):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + extra + b"\r\n"


def post(body: bytes):
    return (b"POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body


async def one(gport, data=None, timeout=10.0):
    responses, _, _ = await raw_exchange(gport, data or get(), timeout=timeout)
    assert len(responses) == 1
    return responses[0]


def stats(gw):
    return gw.stats.cluster(VS)


# ------------------------------------------------------------- flaky backends

async def test_flaky_backend_503s_become_a_success_within_max_retries(tmp_path):
    flaky = Flaky(fail=2)
    log = tmp_path / "access.log"
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("gateway-error"),
                                                     log=log)) as gw:
            r = await one(gport)
            gw.access_log.flush()
            st = stats(gw)
            assert (st.upstream_rq_retry, st.upstream_rq_retry_success) == (2, 1)
    assert r.status == 200 and r.json()["name"] == "b"
    assert len(flaky.seen) == 3
    assert len({rid for _, rid, _ in flaky.seen}) == 1, "every attempt is the same request"
    line = log.read_text()
    assert " 200 - " in line and "URX" not in line


async def test_retries_exhausted_forward_the_last_answer_with_urx(tmp_path):
    flaky = Flaky(fail=10)
    log = tmp_path / "access.log"
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("server-error"),
                                                     log=log)) as gw:
            r = await one(gport)
            gw.access_log.flush()
            assert stats(gw).upstream_rq_retry == 2
            assert stats(gw).upstream_rq_retry_success == 0
    assert r.status == 503 and r.body == b"nope\n", "the backend's own answer, not a local reply"
    assert len(flaky.seen) == 3
    assert " 503 URX " in log.read_text()


async def test_backend_resetting_the_connection_is_retried(tmp_path):
    attempts = []

    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        attempts.append(1)
        if len(attempts) <= 2:
            writer.transport.abort()     # reset before any response byte
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with raw_backend(handler) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("server-error"))) as gw:
            r = await one(gport)
            assert stats(gw).upstream_rq_retry == 2
    assert (r.status, r.body) == (200, b"ok")
    assert len(attempts) == 3


# -------------------------------------------------------------- event kinds

@pytest.mark.parametrize("events,status,retried", [
    (["server-error"], 500, True),
    (["server-error"], 503, True),
    (["server-error"], 511, True),
    (["server-error"], 509, False),     # not in the spec's list (2.16)
    (["server-error"], 404, False),
    (["gateway-error"], 502, True),
    (["gateway-error"], 504, True),
    (["gateway-error"], 500, False),
    (["client-error"], 409, True),
    (["client-error"], 404, False),
    (["client-error"], 503, False),
])
async def test_http_retry_events(tmp_path, events, status, retried):
    flaky = Flaky(fail=10, status=status)
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy(*events, max_retries=1))):
            r = await one(gport)
    assert r.status == status
    assert len(flaky.seen) == (2 if retried else 1)


async def test_connection_error_with_a_dead_endpoint_among_live_ones(tmp_path):
    dead = free_port()
    async with echo_backend("live") as live:
        gport = free_port()
        doc = doc_for(gport, [dead, live], policy(max_retries=1, tcp=["connection-error"]))
        async with running_gateway(tmp_path, doc) as gw:
            results = [await one(gport) for _ in range(6)]
            st = stats(gw)
            # Round robin puts every first attempt on the dead endpoint (the retry took the
            # next pick); each connect failure was retried, on the live one.
            assert st.upstream_cx_connect_fail >= 1
            assert st.upstream_rq_retry == st.upstream_cx_connect_fail
    assert [r.status for r in results] == [200] * 6
    assert all(r.json()["name"] == "live" for r in results)


async def test_connect_failure_not_retried_without_connection_error(tmp_path):
    dead = free_port()
    log = tmp_path / "access.log"
    async with echo_backend("live") as live:
        gport = free_port()
        doc = doc_for(gport, [dead, live], policy("client-error"), log=log)
        async with running_gateway(tmp_path, doc) as gw:
            results = [await one(gport) for _ in range(4)]
            assert stats(gw).upstream_rq_retry == 0
    assert sorted(r.status for r in results) == [200, 200, 503, 503]


async def test_connect_failure_exhausted_is_uf_urx(tmp_path):
    log = tmp_path / "access.log"
    gport = free_port()
    doc = doc_for(gport, [free_port()], policy(max_retries=2, tcp=["connection-error"]), log=log)
    async with running_gateway(tmp_path, doc) as gw:
        r = await one(gport)
        gw.access_log.flush()
        assert stats(gw).upstream_cx_connect_fail == 3
    assert r.status == 503
    assert " 503 UF,URX " in log.read_text()


@pytest.mark.parametrize("events,streams", [(["stream-error"], 4), (["client-error"], 2)])
async def test_stream_error_retries_refused_streams(tmp_path, events, streams):
    # The first REFUSED_STREAM is resent once for free (exchange.py); the policy adds more.
    obs = H2Observations()
    async with h2_origin(obs) as bport:
        gport = free_port()
        svc = service(VS, bport, protocol="http2", retryPolicy=policy(*events, max_retries=2))
        async with running_gateway(tmp_path, gateway_doc(gport, [route("r", "/")], [svc])):
            r = await one(gport, get("/?rst=before&code=7"))
    assert r.status == 502
    assert len(obs.requests) == streams


@pytest.mark.parametrize("server", ["grpclib", "grpcio"])
@pytest.mark.parametrize("code,retried", [(14, True), (13, False), (0, False)])
async def test_grpc_unavailable_trailers_only_is_retried(tmp_path, server, code, retried):
    obs = Observations()
    async with grpc_server(server, obs) as bport:
        gport = free_port()
        svc = grpc_service("echo.local", bport,
                           retryPolicy=policy(max_retries=2, grpc=["unavailable", "cancelled"]))
        async with running_gateway(tmp_path, grpc_doc(gport, [grpc_route()], [svc]),
                                   admin=False) as gw:
            async with grpc_client("grpclib", gport) as c:
                result = await c.call("Fail", fail_request(code, "x"), timeout=5)
            assert gw.stats.cluster("echo.local").upstream_rq_retry == (2 if retried else 0)
    assert result.status == code
    assert len(obs.of("Fail")) == (3 if retried else 1)


# ------------------------------------------------------------------ bodies

async def test_post_body_is_replayed_intact(tmp_path):
    flaky = Flaky(fail=1)
    body = bytes(range(256)) * 200          # 51,200 bytes: under the 64 KiB replay limit
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("server-error"))):
            r = await one(gport, post(body))
    assert r.status == 200 and r.json()["body_length"] == len(body)
    assert [seen_body for _, _, seen_body in flaky.seen] == [body, body]


async def test_body_over_the_replay_limit_is_not_retried(tmp_path):
    flaky = Flaky(fail=1)
    body = b"z" * (100 * 1024)
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("server-error"))) as gw:
            r = await one(gport, post(body))
            assert stats(gw).upstream_rq_retry == 0
    assert r.status == 503
    assert len(flaky.seen) == 1 and flaky.seen[0][2] == body


# ---------------------------------------------------------- timing, spread

async def test_per_retry_timeout_moves_on_to_another_attempt(tmp_path):
    seen = []

    async def handler(request):
        seen.append(time.monotonic())
        if len(seen) == 1:
            await asyncio.sleep(1.0)        # far past perRetryTimeout
        return web.Response(text=f"attempt {len(seen)}")

    async with echo_backend("b", handler=handler) as bport:
        gport = free_port()
        doc = doc_for(gport, [bport], policy("gateway-error", max_retries=1, per_try_ms=300),
                      timeout={"perRequest": {"value": 10, "unit": "s"}})
        async with running_gateway(tmp_path, doc) as gw:
            r = await one(gport)
            assert stats(gw).upstream_rq_retry == 1
    assert (r.status, r.body) == (200, b"attempt 2")
    assert seen[1] - seen[0] > 0.2, "the second attempt began when the first timed out"


async def test_per_retry_timeout_on_the_last_attempt_is_504(tmp_path):
    async def handler(request):
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    async with echo_backend("b", handler=handler) as bport:
        gport = free_port()
        doc = doc_for(gport, [bport], policy("gateway-error", max_retries=1, per_try_ms=200),
                      timeout={"perRequest": {"value": 10, "unit": "s"}})
        async with running_gateway(tmp_path, doc) as gw:
            r = await one(gport)
            assert stats(gw).upstream_rq_retry == 1
    assert r.status == 504


async def test_each_retry_goes_to_another_endpoint(tmp_path):
    handlers = [Flaky(fail=10 ** 6) for _ in range(3)]
    async with echo_backend("a", handler=handlers[0].handle) as a, \
            echo_backend("b", handler=handlers[1].handle) as b, \
            echo_backend("c", handler=handlers[2].handle) as c:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [a, b, c], policy("server-error"))):
            for _ in range(4):
                # three at once (the budget's floor), so round robin interleaves them
                rs = await asyncio.gather(*(one(gport) for _ in range(3)))
                assert [r.status for r in rs] == [503] * 3
    by_request: dict[str, list[int]] = {}
    for i, h in enumerate(handlers):
        for _, rid, _ in h.seen:
            by_request.setdefault(rid, []).append(i)
    assert len(by_request) == 12
    for rid, backends in by_request.items():
        assert sorted(backends) == [0, 1, 2], f"{rid} tried {backends}"


async def test_backoff_spaces_attempts(tmp_path):
    flaky = Flaky(fail=10 ** 6)
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport], policy("server-error", max_retries=3))):
            for _ in range(2):
                await asyncio.gather(*(one(gport) for _ in range(3)))
    by_request: dict[str, list[float]] = {}
    for t, rid, _ in flaky.seen:
        by_request.setdefault(rid, []).append(t)
    gaps = [b - a for times in by_request.values() for a, b in zip(times, times[1:])]
    assert len(gaps) == 6 * 3
    # Full jitter over 25, 75, 175 ms windows: the sum is about 1.6 s on average, each gap
    # under the 250 ms cap (plus scheduling slack).
    assert all(0 <= g < 1.0 for g in gaps)
    assert sum(gaps) > 0.2


# ------------------------------------------------------------------- budget

async def test_budget_caps_retries_under_a_full_outage(tmp_path):
    flaky = Flaky(fail=10 ** 6, delay=0.2)
    n = 40
    async with echo_backend("a", handler=flaky.handle) as a, echo_backend("b", handler=flaky.handle) as b:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [a, b], policy("server-error", max_retries=3))) as gw:
            rs = await asyncio.gather(*(one(gport) for _ in range(n)))
            st = stats(gw)
            retries, overflow = st.upstream_rq_retry, st.upstream_rq_retry_overflow
    assert [r.status for r in rs] == [503] * n
    allowed = max(retry_policy.BUDGET_MIN, int(n * retry_policy.BUDGET_SHARE))   # 8 retrying at once
    assert 0 < retries <= allowed * 3
    assert overflow >= n - allowed
    assert len(flaky.seen) == n + retries


# ----------------------------------------------------------- default policy

async def test_default_policy_when_switched_on(tmp_path, monkeypatch):
    monkeypatch.setattr(retry_policy, "APPLY_DEFAULT_POLICY", True)
    flaky = Flaky(fail=10 ** 6, status=503)
    other = Flaky(fail=10 ** 6, status=500)
    async with echo_backend("b", handler=flaky.handle) as bport, echo_backend("c", handler=other.handle) as cport:
        gport = free_port()
        svc_off = service("off.local", cport, retryPolicy=policy("server-error", max_retries=0))
        doc = gateway_doc(gport, [route("r", "/", target=VS), route("o", "/off", target="off.local")],
                          [service(VS, bport), svc_off])
        async with running_gateway(tmp_path, doc):
            r = await one(gport)
            off = await one(gport, get("/off"))
    assert r.status == 503 and len(flaky.seen) == 3, "App Mesh's default: 2 retries on 503"
    assert off.status == 500 and len(other.seen) == 1, "maxRetries 0 switches retries off"


async def test_no_policy_no_retry(tmp_path):
    flaky = Flaky(fail=1)
    async with echo_backend("b", handler=flaky.handle) as bport:
        gport = free_port()
        async with running_gateway(tmp_path, doc_for(gport, [bport])) as gw:
            r = await one(gport)
            assert gw.clusters[VS].retry is None
    assert r.status == 503 and len(flaky.seen) == 1
