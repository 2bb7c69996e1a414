"""Outlier detection (gateway/upstream/outlier.py) through a running gateway, real backends.

Each backend answers 500 while the test says so; the gateway round-robins over them and
ejects an endpoint after maxServerErrors consecutive 5xx or connect failures.  Intervals
and ejection times are a few hundred milliseconds (the gateway tick checks them every
100 ms).
"""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (BACKEND_NAME, echo_backend, free_port, gateway_doc, route,
                           running_gateway, service)

SVC = "svc.local"


# These tests see each endpoint's own answers: retries (proxy/retry.py) are switched off
# explicitly, whatever the default for a service without retryPolicy.
NO_RETRIES = {"maxRetries": 0, "perRetryTimeout": {"value": 1, "unit": "s"},
              "httpRetryEvents": ["server-error"]}


def outlier(errors=3, interval_ms=100, base_ms=300, percent=50, retries=NO_RETRIES):
    extra = {"outlierDetection": {"maxServerErrors": errors,
                                  "interval": {"value": interval_ms, "unit": "ms"},
                                  "baseEjectionDuration": {"value": base_ms, "unit": "ms"},
                                  "maxEjectionPercent": percent}}
    if retries is not None:
        extra["retryPolicy"] = retries
    return extra


class Backend:
    """What one backend saw, and how it answers: `answer(n)` is the status of its n-th hit."""

    def __init__(self, name: str):
        self.name = name
        self.hits = 0
        self.answer = lambda n: 200
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        status = self.answer(self.hits)
        return web.Response(status=status, text=request.app[BACKEND_NAME],
                            headers={"x-backend": self.name})


@asynccontextmanager
async def backends(*names):
    async with AsyncExitStack() as stack:
        out = []
        for name in names:
            b = Backend(name)
            b.port = await stack.enter_async_context(echo_backend(name, handler=b.handle))
            out.append(b)
        yield out


@asynccontextmanager
async def gateway(tmp_path, ports, od, admin_port=0):
    port = free_port()
    doc = gateway_doc(port, [route("r", "/")], [service(SVC, *ports, **od)], admin_port=admin_port)
    async with running_gateway(tmp_path, doc) as gw, aiohttp.ClientSession() as session:
        async def get():
            async with session.get(f"http://127.0.0.1:{port}/x") as r:
                await r.read()
                return r.status, r.headers.get("x-backend")
        yield gw, get


def endpoints(gw):
    return {e.port: e for e in gw.clusters[SVC].endpoints()}


def stats(gw):
    return gw.stats.clusters[SVC]


async def until(condition, timeout=3.0, what="condition"):
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None


async def scrape(admin_port) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
            text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("gateway_outlier") and sample.labels.get("virtual_service") == SVC:
                out[sample.name] = sample.value
    return out


async def test_burst_of_5xx_ejects_the_endpoint_until_its_time_is_up(tmp_path):
    admin_port = free_port()
    async with backends("a", "b") as (a, b), \
            gateway(tmp_path, [a.port, b.port], outlier(errors=3, base_ms=300),
                    admin_port=admin_port) as (gw, get):
        a.answer = lambda n: 500
        answers = [await get() for _ in range(6)]     # a, b, a, b, a: third 500 ejects a
        assert answers.count((500, "a")) == 3 and answers.count((200, "b")) == 3
        assert endpoints(gw)[a.port].ejected
        ejected_hits = a.hits
        assert await scrape(admin_port) == {"gateway_outlier_ejections_total": 1.0,
                                            "gateway_outlier_ejections_overflow_total": 0.0,
                                            "gateway_outlier_ejected": 1.0}
        answers = [await get() for _ in range(20)]
        assert answers == [(200, "b")] * 20
        assert a.hits == ejected_hits                   # a saw nothing while ejected

        a.answer = lambda n: 200
        await until(lambda: not endpoints(gw)[a.port].ejected, what="a back in rotation")
        answers = [await get() for _ in range(10)]
        assert sorted(answers) == [(200, "a")] * 5 + [(200, "b")] * 5
        # Back in service for an interval: the backoff multiplier decays (Envoy).
        await until(lambda: endpoints(gw)[a.port].outlier.ejections == 0, what="backoff decay")
        assert await scrape(admin_port) == {"gateway_outlier_ejections_total": 1.0,
                                            "gateway_outlier_ejections_overflow_total": 0.0,
                                            "gateway_outlier_ejected": 0.0}


async def test_a_second_ejection_lasts_twice_as_long(tmp_path):
    base = 0.3
    async with backends("a", "b") as (a, b), \
            gateway(tmp_path, [a.port, b.port],
                    # An interval long enough that the backoff cannot decay between
                    # the first return and the second ejection (one interval back
                    # in service lowers it by one).
                    outlier(errors=2, interval_ms=300, base_ms=int(base * 1000))) as (gw, get):
        a.answer = lambda n: 500
        loop = asyncio.get_running_loop()
        sent_to_a = []                  # loop time each request that reached a was sent
        async with asyncio.timeout(4.0):
            while not (stats(gw).outlier_ejections_total == 2 and not endpoints(gw)[a.port].ejected):
                sent = loop.time()
                status, name = await get()
                if name == "a":
                    assert status == 500
                    sent_to_a.append(sent)
                else:
                    assert status == 200
        gaps = [t2 - t1 for t1, t2 in zip(sent_to_a, sent_to_a[1:]) if t2 - t1 > base / 2]
        assert len(gaps) == 1            # the second return has not been used yet
        first = gaps[0]
        assert first >= base
        # After the first return a failed twice more at once: ejected for 2 x base.
        name = None
        while name != "a":
            sent = loop.time()
            status, name = await get()
        assert status == 500
        assert sent - sent_to_a[-1] >= 2 * base
        assert endpoints(gw)[a.port].outlier.ejections == 2


@pytest.mark.parametrize("count,percent,ejected", [(2, 50, 1), (3, 0, 1), (4, 50, 2), (3, 100, 3)])
async def test_max_ejection_percent(tmp_path, count, percent, ejected):
    names = "abcd"[:count]
    async with backends(*names) as group, \
            gateway(tmp_path, [b.port for b in group],
                    outlier(errors=2, base_ms=30000, percent=percent)) as (gw, get):
        for b in group:
            b.answer = lambda n: 500
        answers = [await get() for _ in range(8 * count)]
        assert all(status == 500 for status, _ in answers)
        out = [e for e in endpoints(gw).values() if e.ejected]
        assert len(out) == ejected
        s = stats(gw)
        assert s.outlier_ejected == ejected and s.outlier_ejections_total == ejected
        if ejected < count:
            assert s.outlier_ejections_overflow > 0
            # The endpoints left in rotation still get the traffic.
            kept = {b.name for b in group if not endpoints(gw)[b.port].ejected}
            assert kept <= {name for _, name in answers[-count:]}


async def test_connect_failures_count(tmp_path):
    dead = free_port()                    # nothing listens there
    async with backends("b") as (b,), \
            gateway(tmp_path, [dead, b.port], outlier(errors=2, base_ms=30000)) as (gw, get):
        answers = [await get() for _ in range(3)]          # dead, b, dead
        assert answers == [(503, None), (200, "b"), (503, None)]
        assert endpoints(gw)[dead].ejected
        answers = [await get() for _ in range(10)]
        assert answers == [(200, "b")] * 10
        assert stats(gw).upstream_cx_connect_fail == 2
        assert b.hits == 11


async def test_failed_attempts_that_are_retried_still_count(tmp_path):
    # A retry sends a connect failure on to the other endpoint: the client sees only
    # 200s, but each failed attempt counts against its endpoint.
    dead = free_port()
    retries = {"maxRetries": 2, "perRetryTimeout": {"value": 1, "unit": "s"},
               "tcpRetryEvents": ["connection-error"]}
    async with backends("b") as (b,), \
            gateway(tmp_path, [dead, b.port], outlier(errors=2, base_ms=30000, retries=retries)) as (gw, get):
        answers = [await get() for _ in range(8)]
        assert answers == [(200, "b")] * 8
        assert endpoints(gw)[dead].ejected
        assert stats(gw).upstream_cx_connect_fail == 2 and stats(gw).outlier_ejections_total == 1
        assert b.hits == 8


async def test_successes_reset_the_count(tmp_path):
    async with backends("a", "b") as (a, b), \
            gateway(tmp_path, [a.port, b.port], outlier(errors=2, base_ms=30000)) as (gw, get):
        a.answer = lambda n: 500 if n % 2 else 200   # never two 5xx in a row
        answers = [await get() for _ in range(40)]
        assert answers.count((500, "a")) == 10 and answers.count((200, "a")) == 10
        assert not endpoints(gw)[a.port].ejected and stats(gw).outlier_ejections_total == 0
        a.answer = lambda n: 500
        answers = [await get() for _ in range(4)]
        assert answers.count((500, "a")) == 2
        assert endpoints(gw)[a.port].ejected and stats(gw).outlier_ejections_total == 1


async def test_4xx_is_not_a_server_error(tmp_path):
    async with backends("a", "b") as (a, b), \
            gateway(tmp_path, [a.port, b.port], outlier(errors=2, base_ms=30000)) as (gw, get):
        a.answer = lambda n: 404 if n % 2 else 503    # 404, 503, 404, 503...
        answers = [await get() for _ in range(20)]
        assert answers.count((404, "a")) == 5 and answers.count((503, "a")) == 5
        assert not endpoints(gw)[a.port].ejected and stats(gw).outlier_ejections_total == 0


async def test_grpc_trailers_only_unavailable_counts(tmp_path):
    from tests.grpc_peers import Observations, fail_request, grpc_call, grpc_server
    from tests.test_proxy_grpc import grpc_doc, grpc_route, grpc_service
    obs = Observations()
    async with grpc_server("grpclib", obs) as p1, grpc_server("grpclib", obs) as p2:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()],
                       [grpc_service("echo.local", p1, p2, **outlier(errors=2, base_ms=30000))])
        async with running_gateway(tmp_path, doc, admin=False) as gw:
            for _ in range(4):                   # each endpoint answers UNAVAILABLE twice
                result = await grpc_call("grpclib", gport, "Fail", fail_request(14))
                assert result.status == 14
            s = gw.stats.clusters["echo.local"]
            assert s.outlier_ejections_total == 1 and s.outlier_ejected == 1
            assert sum(e.ejected for e in gw.clusters["echo.local"].endpoints()) == 1
