"""Local rate limiting (gateway.rateLimits): configuration, the bucket arithmetic, and real
requests through a running gateway over HTTP/1.1, HTTP/2, gRPC and gRPC-Web.

Every end-to-end test counts both what the clients got and what the backend saw."""
from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config import model
from gateway.config.errors import ConfigError
from gateway.config.load import load_config
from gateway.observability.stats import RouteStats
from gateway.proxy.rate_limit import RateLimits, Rule, client_address, refusal
from grpc_peers import LIBRARIES, Observations, grpc_call, grpc_client, grpc_server, path_of
from h2_peers import h2_client
from harness import (ResponseReader, echo_backend, free_port, gateway_doc, route, running_gateway,
                     service)

DOCUMENTATION_A = "203.0.113.7"      # client addresses only ever written into headers
DOCUMENTATION_B = "198.51.100.9"


# ------------------------------------------------------------------ helpers

def limited_doc(gport, bport, rate_limits, *, hops=None, admin_port=0, access_log=None,
                protocol="http"):
    """Routes /limited and /free to one backend, with `rate_limits` as gateway.rateLimits."""
    doc = gateway_doc(gport, [route("limited", "/limited"), route("free", "/free")],
                      [service("svc.local", bport)], admin_port=admin_port, access_log=access_log)
    doc["virtualGateway"]["spec"]["listeners"][0]["portMapping"]["protocol"] = protocol
    if protocol == "http2":
        for r in doc["gatewayRoutes"]:
            r["spec"] = {"http2Route": r["spec"]["httpRoute"]}
    doc["gateway"]["rateLimits"] = rate_limits
    if hops is not None:
        doc["gateway"]["trustedForwardedHops"] = hops
    return doc


class CountingBackend:
    """An aiohttp backend handler that counts the requests it answers."""

    def __init__(self):
        self.seen = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.seen += 1
        return web.Response(text="ok")

    def count(self) -> int:
        return self.seen


class Http1Client:
    """One keep-alive HTTP/1.1 connection, optionally from a given source address."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.parsed = ResponseReader()

    @classmethod
    async def open(cls, port: int, source: str | None = None) -> "Http1Client":
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        return cls(reader, writer)

    async def get(self, path: str, headers: tuple[tuple[str, str], ...] = ()):
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        done = sum(r.complete for r in self.parsed.responses)
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: gw.test\r\n{extra}\r\n".encode())
        async with asyncio.timeout(5):
            while sum(r.complete for r in self.parsed.responses) == done:
                data = await self.reader.read(65536)
                assert data, "gateway closed the connection"
                self.parsed.feed(data)
        return self.parsed.responses[done]

    def close(self):
        self.writer.close()


async def statuses(port, path, n, *, headers=(), source=None):
    client = await Http1Client.open(port, source)
    try:
        return [(await client.get(path, headers)) for _ in range(n)]
    finally:
        client.close()


async def scrape(aport: int) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{aport}/metrics") as r:
            return await r.text()


def rate_limited_metric(text: str, route_name: str) -> float:
    m = re.search(r'^gateway_route_rq_rate_limited_total\{route="%s",virtual_service="[^"]*"\} (\S+)$'
                  % re.escape(route_name), text, re.M)
    assert m, f"no rate-limited counter for {route_name} in metrics"
    return float(m.group(1))


# ------------------------------------------------------------ configuration

MINIMAL = {
    "virtualGateway": {"virtualGatewayName": "gw", "spec": {
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}},
    "gatewayRoutes": [{"gatewayRouteName": "products", "spec": {"httpRoute": {
        "match": {"prefix": "/"},
        "action": {"target": {"virtualService": {"virtualServiceName": "svc"}}}}}}],
    "virtualServices": [{"virtualServiceName": "svc", "endpoints": ["127.0.0.1:9001"]}],
}


def load_settings(tmp_path, gateway_block):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "gateway": gateway_block}, sort_keys=False))
    return str(path), load_config(str(path))


def config_errors(tmp_path, gateway_block) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "gateway": gateway_block}, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    return [str(i) for i in e.value.issues if i.severity == "error"]


def test_config_parses_into_the_model(tmp_path):
    _, (config, warnings) = load_settings(tmp_path, {
        "trustedForwardedHops": 2,
        "rateLimits": [{"route": "products", "requestsPerSecond": 100},
                       {"requestsPerSecond": 2.5, "burst": 10, "per": "client"},
                       {"requestsPerSecond": 0.5}]})
    assert warnings == []
    assert config.settings.trusted_forwarded_hops == 2
    assert config.settings.rate_limits == (
        model.RateLimit(100.0, 100.0, "products", "route"),
        model.RateLimit(2.5, 10.0, None, "client"),
        model.RateLimit(0.5, 1.0, None, "route"))      # burst defaults to max(1, rate)


def test_no_rate_limits_by_default(tmp_path):
    _, (config, _) = load_settings(tmp_path, {"workers": 1})
    assert config.settings.rate_limits == ()
    assert config.settings.trusted_forwarded_hops == 0


def test_config_errors_name_file_object_and_field(tmp_path):
    f = str(tmp_path / "gw.yaml")
    got = config_errors(tmp_path, {
        "trustedForwardedHops": -1,
        "rateLimits": [
            {"route": "products", "requestsPerSecond": 0},
            {"requestsPerSecond": 5, "burst": 0, "per": "host"},
            {"requestsPerSecond": "10"},
            {"burst": 3},
            {"requestsPerSecond": 1, "perSecond": 3},
            {"route": "nowhere", "requestsPerSecond": 1},
            {"route": "", "requestsPerSecond": 2e6},
        ]})
    assert got == [
        f"{f}: gateway.trustedForwardedHops: must be between 0 and 64 (got -1)",
        f"{f}: gateway.rateLimits[0].requestsPerSecond: must be greater than 0 (got 0)",
        f"{f}: gateway.rateLimits[1].burst: must be between 1 and 1000000 (got 0)",
        f"{f}: gateway.rateLimits[1].per: must be one of route, client (got string \"host\")",
        f"{f}: gateway.rateLimits[2].requestsPerSecond: must be a number (got string \"10\")",
        f"{f}: gateway.rateLimits[3].requestsPerSecond: required field missing",
        f"{f}: gateway.rateLimits[4].perSecond: unknown field "
        "(allowed: route, requestsPerSecond, burst, per)",
        f"{f}: gateway.rateLimits[6].route: length must be between 1 and 255 characters (got 0)",
        f"{f}: gateway.rateLimits[6].requestsPerSecond: must be between 0 and 1000000 (got 2e+06)",
        f"{f}: gateway.rateLimits[5].route: gateway route \"nowhere\" is not declared in gatewayRoutes",
    ]


def test_config_errors_for_the_list_itself(tmp_path):
    f = str(tmp_path / "gw.yaml")
    assert config_errors(tmp_path, {"rateLimits": {"requestsPerSecond": 1}}) == [
        f"{f}: gateway.rateLimits: must be a list (got object)"]
    assert config_errors(tmp_path, {"rateLimits": [{"requestsPerSecond": 1, "burst": 1.5}]}) == [
        f"{f}: gateway.rateLimits[0].burst: must be an integer (got number 1.5)"]
    assert config_errors(tmp_path, {"trustedForwardedHops": True}) == [
        f"{f}: gateway.trustedForwardedHops: must be an integer (got boolean true)"]


# ------------------------------------------------------- bucket arithmetic

def exchange(client_ip=b"127.0.0.1", headers=()):
    """What the limiter reads from an exchange: the request headers and the client address."""
    return SimpleNamespace(request_headers=list(headers),
                           downstream=SimpleNamespace(client_ip=client_ip))


def limiter(*limits, hops=0, route_name="r", now=0.0):
    stats = RouteStats(route_name, "svc")
    return RateLimits(tuple(limits), hops, now).for_route(route_name, stats), stats


def test_bucket_admits_burst_then_the_rate():
    lim, stats = limiter(model.RateLimit(10.0, 3.0))
    ex = exchange()
    assert [lim.check(ex, 0.0) is None for _ in range(4)] == [True, True, True, False]
    # 0.1 s later exactly one token has come back
    assert lim.check(ex, 0.1) is None
    assert lim.check(ex, 0.1) is not None
    # a long pause refills up to the burst, never beyond
    assert [lim.check(ex, 100.0) is None for _ in range(4)] == [True, True, True, False]
    assert stats.rate_limited == 3
    # over 10 s of constant demand, burst + rate x time are admitted
    admitted = sum(lim.check(ex, 200.0 + i / 1000) is None for i in range(10_001))
    assert admitted in (102, 103)      # 3 + 100, less one if float sums fall a hair short


def test_an_earlier_start_time_never_takes_tokens_back():
    lim, _ = limiter(model.RateLimit(1.0, 2.0))
    ex = exchange()
    assert lim.check(ex, 10.0) is None                 # 1 token left at t=10
    assert lim.check(ex, 9.0) is None                  # started earlier: no refill, no loss
    assert lim.check(ex, 10.5) is not None             # 0.5 tokens: the bucket kept t=10
    assert lim.check(ex, 11.0) is None


def test_retry_after_is_the_wait_rounded_up():
    lim, _ = limiter(model.RateLimit(0.25, 1.0))
    ex = exchange()
    assert lim.check(ex, 0.0) is None
    reply = lim.check(ex, 1.0)            # 0.25 tokens: 3 s to the next one
    assert (reply.status, reply.flag, reply.grpc_status) == (429, "RL", 8)
    assert reply.headers == ((b"retry-after", b"3"),)
    assert lim.check(ex, 3.5).headers == ((b"retry-after", b"1"),)   # 0.5 s left: 1, never 0
    assert refusal(0.0001) is refusal(1.0)                           # one reply per value


def test_a_request_refused_by_one_rule_takes_no_token_from_another():
    lim, _ = limiter(model.RateLimit(1.0, 5.0), model.RateLimit(1.0, 2.0, per="client"))
    a, b = exchange(b"10.0.0.1"), exchange(b"10.0.0.2")
    assert [lim.check(a, 0.0) is None for _ in range(4)] == [True, True, False, False]
    # a's refusals took nothing from the route bucket (3 left): b gets its 2, and the
    # route's last token is still there for a third client
    assert [lim.check(b, 0.0) is None for _ in range(3)] == [True, True, False]
    assert lim.check(exchange(b"10.0.0.3"), 0.0) is None
    assert lim.check(exchange(b"10.0.0.4"), 0.0) is not None     # route bucket empty


def test_rules_apply_to_their_route_and_an_unnamed_rule_to_each_route():
    limits = RateLimits((model.RateLimit(1.0, 1.0, route="a"),
                         model.RateLimit(1.0, 2.0),
                         model.RateLimit(1.0, 1.0, per="client")), 0, 0.0)
    a = limits.for_route("a", RouteStats("a", "svc"))
    b = limits.for_route("b", RouteStats("b", "svc"))
    assert len(a.rules) == 3 and len(b.rules) == 2
    # per route: a bucket each; per client: one set of client buckets for every route
    assert a.rules[1] is not b.rules[0] and a.rules[2] is b.rules[1]
    assert RateLimits((), 0, 0.0).for_route("a", RouteStats("a", "svc")) is None


def test_client_buckets_stay_bounded():
    rule = Rule(1.0, 2.0, True, 0.0, max_clients=100)
    for i in range(1000):
        bucket = rule.client_bucket(b"c%d" % i, i / 1000)
        bucket.tokens -= 1.0               # every client is active: nothing is full
        assert len(rule.clients) <= 100
    # the newest clients are kept, the oldest forgotten first
    assert b"c999" in rule.clients and b"c0" not in rule.clients
    # idle clients (full buckets) are the first to go, whatever their age
    rule = Rule(1.0, 2.0, True, 0.0, max_clients=4)
    rule.client_bucket(b"old-busy", 0.0).tokens = 0.0
    for key in (b"idle1", b"idle2", b"idle3"):
        rule.client_bucket(key, 0.0)
    rule.client_bucket(b"new", 0.5)
    assert list(rule.clients) == [b"old-busy", b"new"]


def test_client_address_from_trusted_forwarded_hops():
    headers = [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"), (b"x-other", b"x"),
               (b"x-forwarded-for", b" 3.3.3.3 ")]
    ex = exchange(b"127.0.0.5", headers)
    assert client_address(ex, 0) == b"127.0.0.5"          # header ignored: nothing trusted
    assert client_address(ex, 1) == b"3.3.3.3"
    assert client_address(ex, 2) == b"2.2.2.2"
    assert client_address(ex, 3) == b"1.1.1.1"
    assert client_address(ex, 4) == b"127.0.0.5"          # fewer entries: the peer (Envoy)
    assert client_address(exchange(b"127.0.0.5"), 1) == b"127.0.0.5"


# ------------------------------------------------------- through the gateway

async def test_route_limit_admits_its_rate_within_5_percent(tmp_path):
    """50 rps, burst 10: eight connections ask as fast as they can for ~2 s."""
    rate, burst, window = 50.0, 10, 2.0
    backend = CountingBackend()
    gport, aport = free_port(), free_port()
    log = tmp_path / "access.log"
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"route": "limited", "requestsPerSecond": rate,
                                          "burst": burst}],
                          admin_port=aport, access_log={"path": str(log)})
        async with running_gateway(tmp_path, doc) as gw:
            results: list = []

            async def hammer(stop_at):
                client = await Http1Client.open(gport)
                try:
                    while time.monotonic() < stop_at:
                        results.append(await client.get("/limited/x"))
                finally:
                    client.close()

            start = time.monotonic()
            await asyncio.gather(*(hammer(start + window) for _ in range(8)))
            elapsed = time.monotonic() - start
            metrics = await scrape(aport)
            gw.access_log.flush()
            log_text = log.read_text()

    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status == 429]
    assert len(ok) + len(refused) == len(results)
    assert len(refused) > 5 * len(ok), "the clients did not ask much beyond the limit"
    expected = burst + rate * elapsed
    assert abs(len(ok) - expected) <= 0.05 * rate * elapsed, (len(ok), expected, elapsed)
    assert backend.count() == len(ok)
    assert {r.header("retry-after") for r in refused} == {"1"}
    assert refused[0].body == b"too many requests: local rate limit exceeded\n"
    assert rate_limited_metric(metrics, "limited") == len(refused)
    assert rate_limited_metric(metrics, "free") == 0
    assert log_text.count(" 429 RL ") == len(refused)
    assert log_text.count(" 200 - ") == len(ok)


async def test_routes_without_a_rule_are_not_limited(tmp_path):
    backend = CountingBackend()
    gport = free_port()
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"route": "limited", "requestsPerSecond": 0.5, "burst": 2}])
        async with running_gateway(tmp_path, doc, admin=False):
            free = await statuses(gport, "/free/x", 20)
            limited = await statuses(gport, "/limited/x", 4)
            # the limited route's bucket is empty; the free route still answers
            free_after = await statuses(gport, "/free/x", 3)
    assert [r.status for r in free + free_after] == [200] * 23
    assert [r.status for r in limited] == [200, 200, 429, 429]
    assert backend.count() == 25


async def test_an_unnamed_rule_limits_each_route_with_its_own_bucket(tmp_path):
    backend = CountingBackend()
    gport = free_port()
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"requestsPerSecond": 0.5, "burst": 2}])
        async with running_gateway(tmp_path, doc, admin=False):
            limited = await statuses(gport, "/limited/x", 3)
            free = await statuses(gport, "/free/x", 3)
    assert [r.status for r in limited] == [200, 200, 429]
    assert [r.status for r in free] == [200, 200, 429]
    assert backend.count() == 4


async def test_per_client_buckets_by_trusted_forwarded_for(tmp_path):
    backend = CountingBackend()
    gport, aport = free_port(), free_port()
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"route": "limited", "requestsPerSecond": 0.5,
                                          "burst": 3, "per": "client"}], hops=1, admin_port=aport)
        async with running_gateway(tmp_path, doc):
            xff_a = (("x-forwarded-for", DOCUMENTATION_A),)
            # the trusted proxy appended B's address last: the entry before it is the client's claim
            xff_b = (("x-forwarded-for", f"{DOCUMENTATION_A}, {DOCUMENTATION_B}"),)
            a = await statuses(gport, "/limited/x", 4, headers=xff_a)
            b = await statuses(gport, "/limited/x", 4, headers=xff_b)
            # one header line per proxy counts the same as one list
            b_again = await statuses(gport, "/limited/x", 1, headers=(
                ("x-forwarded-for", DOCUMENTATION_A), ("x-forwarded-for", DOCUMENTATION_B)))
            # no header: the connection's own address, a third bucket
            direct = await statuses(gport, "/limited/x", 1)
            metrics = await scrape(aport)
    assert [r.status for r in a] == [200, 200, 200, 429]
    assert [r.status for r in b] == [200, 200, 200, 429]
    assert [r.status for r in b_again + direct] == [429, 200]
    # 0.5 rps and an empty bucket: two seconds to the next token
    assert a[3].header("retry-after") == "2" and b[3].header("retry-after") == "2"
    assert backend.count() == 7
    assert rate_limited_metric(metrics, "limited") == 3


async def test_per_client_buckets_by_source_address(tmp_path):
    """Two real source addresses (127.0.0.1 and 127.0.0.2); without trusted hops a client's
    own X-Forwarded-For changes nothing."""
    backend = CountingBackend()
    gport = free_port()
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"route": "limited", "requestsPerSecond": 0.5,
                                          "burst": 2, "per": "client"}])
        async with running_gateway(tmp_path, doc, admin=False):
            one = await statuses(gport, "/limited/x", 3, source="127.0.0.1")
            spoofed = await statuses(gport, "/limited/x", 2, source="127.0.0.1",
                                     headers=(("x-forwarded-for", DOCUMENTATION_A),))
            two = await statuses(gport, "/limited/x", 3, source="127.0.0.2")
    assert [r.status for r in one] == [200, 200, 429]
    assert [r.status for r in spoofed] == [429, 429]
    assert [r.status for r in two] == [200, 200, 429]
    assert backend.count() == 4


async def test_http2_request_gets_429_with_retry_after(tmp_path):
    backend = CountingBackend()
    gport = free_port()
    async with echo_backend(handler=backend.handler) as bport:
        doc = limited_doc(gport, bport, [{"route": "limited", "requestsPerSecond": 0.5, "burst": 1}],
                          protocol="http2")
        async with running_gateway(tmp_path, doc, admin=False):
            async with h2_client(gport) as client:
                first = await client.request("GET", "/limited/x", timeout=5.0)
                second = await client.request("GET", "/limited/x", timeout=5.0)
    assert first.status == 200
    assert second.status == 429 and second.ended
    assert second.header("retry-after") == "2"
    assert bytes(second.data) == b"too many requests: local rate limit exceeded\n"
    assert backend.count() == 1


def grpc_doc(gport, bport, rate_limits, *, admin_port=0):
    return {
        "virtualGateway": {"virtualGatewayName": "gw", "spec": {"listeners": [
            {"portMapping": {"port": gport, "protocol": "grpc"}}]}},
        "gatewayRoutes": [{"gatewayRouteName": "echo", "spec": {"grpcRoute": {
            "match": {"serviceName": "test.Echo"},
            "action": {"target": {"virtualService": {"virtualServiceName": "echo.local"}}}}}}],
        "virtualServices": [{"virtualServiceName": "echo.local", "protocol": "grpc",
                             "endpoints": [f"127.0.0.1:{bport}"]}],
        "gateway": {"admin": {"address": "127.0.0.1", "port": admin_port},
                    "listenAddress": "127.0.0.1", "rateLimits": rate_limits},
    }


@pytest.mark.parametrize("library", LIBRARIES)
async def test_grpc_call_gets_resource_exhausted(tmp_path, library):
    obs = Observations()
    gport, aport = free_port(), free_port()
    async with grpc_server("grpclib", obs) as bport:
        doc = grpc_doc(gport, bport, [{"route": "echo", "requestsPerSecond": 0.5, "burst": 2}],
                       admin_port=aport)
        async with running_gateway(tmp_path, doc):
            async with grpc_client(library, gport) as client:
                results = [await client.call("Unary", b"hi", timeout=5.0) for _ in range(4)]
            metrics = await scrape(aport)
    assert [r.status for r in results] == [0, 0, 8, 8]
    assert results[0].messages == [b"hi"]
    assert results[2].message == "too many requests: local rate limit exceeded"
    assert ("retry-after", "2") in results[2].trailers      # 0.5 rps, empty bucket
    assert len(obs.of("Unary")) == 2
    assert rate_limited_metric(metrics, "echo") == 2


async def test_grpc_web_call_gets_resource_exhausted(tmp_path):
    """gRPC-Web over HTTP/1.1: HTTP 200 and grpc-status 8 in the trailer frame."""
    obs = Observations()
    gport = free_port()
    async with grpc_server("grpclib", obs) as bport:
        doc = grpc_doc(gport, bport, [{"route": "echo", "requestsPerSecond": 0.5, "burst": 1}])
        async with running_gateway(tmp_path, doc, admin=False):
            ok = await grpc_call("grpclib", gport, "Unary", b"hi", timeout=5.0)
            body = b"\x00\x00\x00\x00\x02hi"
            head = (f"POST {path_of('Unary')} HTTP/1.1\r\nhost: gw.test\r\n"
                    f"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n"
                    f"content-length: {len(body)}\r\n\r\n").encode()
            client = await Http1Client.open(gport)
            client.writer.write(head + body)
            try:
                async with asyncio.timeout(5):
                    while not (client.parsed.responses and client.parsed.responses[0].complete):
                        data = await client.reader.read(65536)
                        assert data
                        client.parsed.feed(data)
            finally:
                client.close()
    assert ok.status == 0
    web_reply = client.parsed.responses[0]
    assert web_reply.status == 200
    assert web_reply.header("content-type") == "application/grpc-web+proto"
    assert web_reply.header("retry-after") == "2"
    assert web_reply.body[:1] == b"\x80"                 # the trailer frame
    trailers = web_reply.body[5:].decode()
    assert "grpc-status:8" in trailers.replace(" ", "")
    assert len(obs.of("Unary")) == 1
