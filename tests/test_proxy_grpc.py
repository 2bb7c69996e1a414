"""gRPC end to end through the gateway: real grpclib and grpcio clients and servers, over
grpc, http2 and TLS (ALPN h2) listeners, to grpc virtual services.

Every test asserts both what the client got and what the backend saw (Observations)."""
from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager

import grpclib.server
import pytest
from grpclib.const import Cardinality, Handler

from gateway.certs import issue, make_ca
from gateway.listener.http2 import Http2Downstream
from grpc_peers import (
    FAIL_TRAILER_BIN, LIBRARIES, Observations, Progress, RawCodec, fail_request, grpc_call,
    grpc_client, grpc_server, sleep_request, stream_request,
)
from h2_peers import H2Client, H2Observations, h2_client, h2_origin
from harness import free_port, gateway_doc, running_gateway

PAIRS = [(c, s) for c in LIBRARIES for s in LIBRARIES]
PAIR_IDS = [f"{c}-to-{s}" for c, s in PAIRS]


# ------------------------------------------------------------------- configs

def grpc_route(name="echo", target="echo.local", **match):
    """A gRPC gateway route to `target`; match fields as keywords (serviceName defaults to
    test.Echo), plus rewrite= and priority=."""
    spec_match = {"serviceName": "test.Echo", **match}
    rewrite = spec_match.pop("rewrite", None)
    priority = spec_match.pop("priority", None)
    action = {"target": {"virtualService": {"virtualServiceName": target}}}
    if rewrite is not None:
        action["rewrite"] = rewrite
    spec = {"grpcRoute": {"match": spec_match, "action": action}}
    if priority is not None:
        spec["priority"] = priority
    return {"gatewayRouteName": name, "spec": spec}


def grpc_service(name, *ports, **extra):
    return {"virtualServiceName": name, "protocol": "grpc",
            "endpoints": [f"127.0.0.1:{p}" for p in ports], **extra}


def grpc_doc(gport, routes, services, *, listener="grpc", tls=None):
    """A gateway whose one listener speaks `listener` (grpc | http2): gRPC routes for a grpc
    listener; an http2 listener gets each route as an http2Route on the service's prefix."""
    if listener == "http2":
        routes = [_as_http2_route(r) for r in routes]
    doc = gateway_doc(gport, routes, services)
    spec_listener = doc["virtualGateway"]["spec"]["listeners"][0]
    spec_listener["portMapping"]["protocol"] = listener
    if tls is not None:
        spec_listener["tls"] = {"mode": "STRICT", "certificate": {"file": {
            "certificateChain": tls[0], "privateKey": tls[1]}}}
    return doc


def _as_http2_route(route):
    grpc = route["spec"]["grpcRoute"]
    match = {"prefix": "/" + grpc["match"]["serviceName"] + "/"}
    action = {"target": grpc["action"]["target"], "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}
    return {"gatewayRouteName": route["gatewayRouteName"],
            "spec": {"http2Route": {"match": match, "action": action}}}


@asynccontextmanager
async def echo_through_gateway(tmp_path, server="grpclib", *, listener="grpc", tls=None,
                               server_options=(), **service_extra):
    """One Echo server behind one gateway; yields (gateway port, observations, gateway)."""
    obs = Observations()
    kwargs = {"options": server_options} if server_options else {}
    async with grpc_server(server, obs, **kwargs) as bport:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()], [grpc_service("echo.local", bport, **service_extra)],
                       listener=listener, tls=tls)
        async with running_gateway(tmp_path, doc, admin=False) as gw:
            yield gport, obs, gw


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a gateway certificate for localhost (the approach of test_proxy_listener_tls)."""
    d = tmp_path_factory.mktemp("grpc-gateway-pki")
    ca = make_ca("gateway gRPC test CA")
    ca_file, _ = ca.write(d, "ca")
    cert, key = issue(ca, "gateway.local", dns=("gateway.local", "localhost"),
                      ips=("127.0.0.1",)).write(d, "server")
    return {"ca_file": ca_file, "server": (cert, key)}


# ------------------------------------------------------ 1. every call kind

CALLS = {
    "Unary": (b"hello", [b"hello"]),
    "ServerStream": (stream_request(5, 1000), None),
    "ClientStream": ([b"a" * 10, b"b" * 20, b""], [b"3,30"]),
    "Bidi": ([bytes([i]) * 70_000 for i in range(6)], [bytes([i]) * 70_000 for i in range(6)]),
}


def _check_kind(kind, result, record):
    assert result.status == 0, (result.status, result.message, result.error)
    if kind == "ServerStream":
        assert result.count == 5 and result.nbytes == 5000
        assert [int.from_bytes(m[:4], "big") for m in result.messages] == [0, 1, 2, 3, 4]
        assert record.sent == 5
    else:
        assert result.messages == CALLS[kind][1]
    if kind == "ClientStream":
        assert (record.received, record.received_bytes) == (3, 30)
    if kind == "Bidi":
        assert record.received == 6 and record.sent == 6
    assert record.outcome == "ok"


@pytest.mark.parametrize("kind", list(CALLS))
@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_every_call_kind_through_the_gateway(tmp_path, client, server, kind):
    async with echo_through_gateway(tmp_path, server) as (gport, obs, gw):
        result = await grpc_call(client, gport, kind, CALLS[kind][0], timeout=5)
        record = await obs.wait(kind)
    _check_kind(kind, result, record)
    assert record.library == server
    assert gw.stats.routes[("echo", "echo.local")].by_class[2] == 1
    assert gw.stats.clusters["echo.local"].upstream_rq_total == 1


@pytest.mark.parametrize("client", LIBRARIES)
async def test_http2_listener_carries_grpc(tmp_path, client):
    async with echo_through_gateway(tmp_path, "grpcio", listener="http2") as (gport, obs, _):
        async with grpc_client(client, gport) as c:
            results = {kind: await c.call(kind, CALLS[kind][0], timeout=5) for kind in CALLS}
    for kind, result in results.items():
        _check_kind(kind, result, obs.last(kind))


@pytest.mark.parametrize("client", LIBRARIES)
async def test_tls_listener_carries_grpc(tmp_path, client, pki):
    async with echo_through_gateway(tmp_path, "grpclib", tls=pki["server"]) as (gport, obs, _):
        async with grpc_client(client, gport, host="localhost" if client == "grpclib" else "127.0.0.1",
                               ca=pki["ca_file"], server_name="localhost") as c:
            results = {kind: await c.call(kind, CALLS[kind][0], timeout=5) for kind in CALLS}
            fail = await c.call("Fail", fail_request(7, "nope"), timeout=5)
    for kind, result in results.items():
        _check_kind(kind, result, obs.last(kind))
    assert fail.status == 7 and fail.message == "nope"
    assert len(obs.peers()) == 1, "the gateway's calls share one upstream connection"


# ------------------------------------------- 2. metadata and trailers, both ways

def grpc_frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


GRPC_HEAD = [("content-type", "application/grpc"), ("te", "trailers")]


@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_metadata_trailers_and_status_codes_pass_through(tmp_path, client, server):
    blob = b"\x00\xff\x10gw"
    async with echo_through_gateway(tmp_path, server) as (gport, obs, _):
        async with grpc_client(client, gport) as c:
            meta = await c.call("Metadata", b"", timeout=5, metadata=[
                ("x-team", "gateway"), ("x-blob-bin", blob), ("x-spaced", "a b, c")])
            fail = await c.call("Fail", fail_request(9, "not now, ü 100% ☃"), timeout=5)
            codes = {code: await c.call("Fail", fail_request(code, f"code {code}"), timeout=5)
                     for code in range(1, 17)}
    seen = json.loads(meta.messages[0])
    assert meta.status == 0
    assert ["x-team", "gateway"] in seen["metadata"]
    assert ["x-blob-bin", base64.b64encode(blob).decode()] in seen["metadata"]
    assert ["x-spaced", "a b, c"] in seen["metadata"]
    assert 3 < seen["deadline"] <= 5.5, "grpc-timeout reaches the server"
    assert fail.status == 9 and fail.message == "not now, ü 100% ☃"
    assert ("x-fail-code", "9") in fail.trailers
    assert ("x-trailer-bin", FAIL_TRAILER_BIN) in fail.trailers
    for code, result in codes.items():
        assert (result.status, result.message) == (code, f"code {code}"), code
        assert ("x-fail-code", str(code)) in result.trailers
    assert len(obs.of("Fail")) == 17


async def test_grpc_message_stays_percent_encoded_on_the_wire(tmp_path):
    """The gateway forwards grpc-message as the server encoded it: no decoding on the way."""
    async with echo_through_gateway(tmp_path, "grpclib") as (gport, obs, _):
        async with h2_client(gport) as h2:
            answer = await h2.request("POST", "/test.Echo/Fail", headers=GRPC_HEAD,
                                      body=grpc_frame(fail_request(9, "ü☃ 50%")))
            meta = await h2.request("POST", "/test.Echo/Metadata", headers=[
                *GRPC_HEAD, ("x-blob-bin", "AP8Q"), ("x-team", "raw")],
                body=grpc_frame(b""))
    assert answer.status == 200 and answer.ended
    # a call that sent no message may end trailers-only: status in the one header block
    trailers = dict(answer.headers + (answer.trailers or []))
    assert trailers[":status"] == "200" and trailers["grpc-status"] == "9"
    assert trailers["grpc-message"] == "%C3%BC%E2%98%83 50%25"
    assert trailers["x-fail-code"] == "9"
    assert base64.b64decode(trailers["x-trailer-bin"] + "==") == FAIL_TRAILER_BIN
    assert dict(meta.trailers)["grpc-status"] == "0"
    seen = json.loads(bytes(meta.data[5:]))
    assert ["x-blob-bin", "AP8Q"] in seen["metadata"] and ["x-team", "raw"] in seen["metadata"]
    assert obs.last("Fail").outcome == "error"


# ------------------------------------------------------------------ 3. deadlines

def _status_of(response):
    """grpc-status of a raw h2 response: in the trailers, or the one block of a trailers-only one."""
    fields = dict(response.headers + (response.trailers or []))
    return fields.get("grpc-status"), fields


@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_client_deadline_cancels_the_server_call(tmp_path, client, server):
    async with echo_through_gateway(tmp_path, server) as (gport, obs, gw):
        result = await grpc_call(client, gport, "Sleep", sleep_request(5), timeout=0.3)
        record = await obs.wait("Sleep")
        after = await grpc_call(client, gport, "Unary", b"still here", timeout=5)
    assert result.status == 4 and not result.messages
    assert record.outcome in ("deadline", "cancelled")
    assert record.ended - record.started < 1.5, "the server's call ended with the client's"
    assert record.deadline is not None and record.deadline <= 0.3
    assert after.messages == [b"still here"]


@pytest.mark.parametrize("client", LIBRARIES)
async def test_client_deadline_resets_the_upstream_stream(tmp_path, client):
    """A backend that ignores grpc-timeout (the h2 origin) still sees its stream reset when
    the client's deadline passes: only the gateway can have done that."""
    obs = H2Observations()
    async with h2_origin(obs) as bport:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()], [grpc_service("echo.local", bport)])
        async with running_gateway(tmp_path, doc, admin=False):
            result = await grpc_call(client, gport, "Unary", b"x", timeout=0.3,
                                     metadata=[("x-origin", "sleep=5")])
            record = await obs.wait("/test.Echo/Unary", timeout=3)
    assert result.status == 4
    assert record.outcome == "reset" and record.reset_code == 8    # CANCEL
    assert record.ended - record.started < 1.5


async def test_gateway_enforces_grpc_timeout_itself(tmp_path):
    """A raw client sends grpc-timeout 200m and never gives up on its own; the backend ignores
    deadlines; the virtual service allows 30 s. The gateway answers DEADLINE_EXCEEDED, as a
    trailers-only HTTP 200 response, and cancels the upstream stream."""
    obs = H2Observations()
    async with h2_origin(obs) as bport:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()], [grpc_service(
            "echo.local", bport, timeout={"perRequest": {"value": 30, "unit": "s"}})])
        async with running_gateway(tmp_path, doc, admin=False) as gw, h2_client(gport) as h2:
            started = asyncio.get_running_loop().time()
            answer = await h2.request("POST", "/test.Echo/Unary", body=grpc_frame(b"x"),
                                      headers=[*GRPC_HEAD, ("grpc-timeout", "200m"),
                                               ("x-origin", "sleep=5")], timeout=5)
            elapsed = asyncio.get_running_loop().time() - started
            record = await obs.wait("/test.Echo/Unary", timeout=3)
    status, fields = _status_of(answer)
    assert answer.status == 200 and answer.ended and answer.trailers is None
    assert status == "4" and fields["content-type"].startswith("application/grpc")
    assert elapsed < 3, "answered at the client's deadline, not the route's 30 s"
    assert ("grpc-timeout", "200m") in record.headers, "the deadline travels upstream unchanged"
    assert record.outcome == "reset"
    assert gw.stats.clusters["echo.local"].upstream_rq_timeout == 1


# -------------------------------------------------------------------- 4. cancel

@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_cancel_mid_stream_reaches_the_server(tmp_path, client, server):
    async with echo_through_gateway(tmp_path, server) as (gport, obs, _):
        async with grpc_client(client, gport) as c:
            down = await c.call("ServerStream", stream_request(1000, 100, 0.01),
                                cancel_after_messages=3, timeout=10)
            streamed = await obs.wait("ServerStream", timeout=3)
            up = await c.call("Bidi", [b"m%d" % i for i in range(100)], send_delay=0.02,
                              cancel_after=0.3, timeout=10)
            bidi = await obs.wait("Bidi", timeout=3)
            after = await c.call("Unary", b"next", timeout=5)
    assert down.status == 1 and down.count == 3
    assert streamed.outcome == "cancelled" and streamed.sent < 200
    assert streamed.ended - streamed.started < 1.5
    assert up.status == 1 and 0 < up.count < 100
    # grpcio's server may read a cancel of a bidi call as the end of input (it does without
    # the gateway too): its handler then ends "ok", but still at once.
    assert bidi.outcome in (("ok", "cancelled") if server == "grpcio" else ("cancelled",))
    assert bidi.received < 100
    assert bidi.ended - bidi.started < 1.5
    assert after.messages == [b"next"], "the connection survives the cancels"



@pytest.mark.parametrize("server", LIBRARIES)
async def test_client_connection_lost_cancels_the_server_calls(tmp_path, server):
    """No RST_STREAM at all: the client's connection just closes under two calls."""
    async with echo_through_gateway(tmp_path, server) as (gport, obs, _):
        h2 = await H2Client.connect(gport)
        calls = [asyncio.create_task(h2.request(
            "POST", path, headers=GRPC_HEAD, body=grpc_frame(body), timeout=5))
            for path, body in [("/test.Echo/Sleep", b"5"),
                               ("/test.Echo/ServerStream", stream_request(1000, 10, 0.01))]]
        async with asyncio.timeout(5):
            while len(obs.calls) < 2:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        h2.writer.transport.abort()
        await h2.close()
        await asyncio.gather(*calls, return_exceptions=True)
        sleep, stream = await obs.wait("Sleep"), await obs.wait("ServerStream")
        after = await grpc_call("grpclib", gport, "Unary", b"ok", timeout=5)
    for record in (sleep, stream):
        assert record.outcome == "cancelled", record
        assert record.ended - record.started < 1.5
    assert stream.sent < 1000
    assert after.messages == [b"ok"]


# ----------------------------------------------------- 5. the gateway's own errors

@pytest.mark.parametrize("client", LIBRARIES)
async def test_gateway_errors_in_grpc_terms(tmp_path, client):
    obs = Observations()
    dead = free_port()        # nothing listens here
    async with grpc_server("grpclib", obs) as bport:
        gport = free_port()
        routes = [grpc_route("dead", "dead.local", metadata=[{"name": "x-to", "match": {"exact": "dead"}}]),
                  grpc_route("slow", "slow.local", metadata=[{"name": "x-to", "match": {"exact": "slow"}}]),
                  grpc_route("other", "echo.local", serviceName="test.Other")]
        services = [grpc_service("echo.local", bport), grpc_service("dead.local", dead),
                    grpc_service("slow.local", bport,
                                 timeout={"perRequest": {"value": 200, "unit": "ms"}})]
        doc = grpc_doc(gport, routes, services)
        async with running_gateway(tmp_path, doc, admin=False) as gw:
            async with grpc_client(client, gport) as c:
                no_route = await c.call("Unary", b"x", timeout=5)
                unavailable = await c.call("Unary", b"x", timeout=5, metadata=[("x-to", "dead")])
                timed_out = await c.call("Sleep", sleep_request(5), timeout=5,
                                         metadata=[("x-to", "slow")])
            slept = await obs.wait("Sleep", timeout=3)
            async with h2_client(gport) as h2:
                raw = {name: await h2.request("POST", "/test.Echo/Sleep", body=grpc_frame(b"5"),
                                              headers=[*GRPC_HEAD, *extra], timeout=5)
                       for name, extra in [("no_route", []), ("dead", [("x-to", "dead")]),
                                           ("slow", [("x-to", "slow")])]}
    assert no_route.status == 12 and not no_route.messages
    assert unavailable.status == 14
    assert timed_out.status == 4
    assert slept.outcome == "cancelled" and slept.ended - slept.started < 1.5
    for name, response in raw.items():
        status, fields = _status_of(response)
        assert response.status == 200 and response.ended and response.trailers is None, name
        assert fields["content-type"] == "application/grpc", name
        assert status == {"no_route": "12", "dead": "14", "slow": "4"}[name], name
        assert fields.get("grpc-message"), name
    stats = gw.stats.clusters
    assert stats["dead.local"].upstream_cx_connect_fail == 2
    assert stats["slow.local"].upstream_rq_timeout == 2
    assert [c.method for c in obs.calls] == ["Sleep", "Sleep"]


# ------------------------------------------------------------------- 6. routing

def _meta(name, invert=False, **match):
    cond = {"name": name}
    if match:
        cond["match"] = match
    if invert:
        cond["invert"] = True
    return cond


@asynccontextmanager
async def two_backends(tmp_path, routes):
    """Backends a (a.local) and b (b.local), both grpclib (it reports :authority)."""
    obs_a, obs_b = Observations(), Observations()
    async with grpc_server("grpclib", obs_a) as port_a, grpc_server("grpclib", obs_b) as port_b:
        gport = free_port()
        doc = grpc_doc(gport, routes, [grpc_service("a.local", port_a), grpc_service("b.local", port_b)])
        async with running_gateway(tmp_path, doc, admin=False):
            yield gport, obs_a, obs_b


ROUTING_CASES = [
    # (metadata sent, backend expected)
    ([], "a"),
    ([("x-tier", "gold")], "b"),
    ([("x-tier", "golden")], "a"),              # exact is exact
    ([("x-user", "admin-7")], "b"),             # prefix
    ([("x-user", "root")], "a"),
    ([("x-build", "v12.beta")], "b"),           # regex, whole value
    ([("x-build", "v12.beta.2")], "a"),
    ([("x-n", "150")], "b"),                    # range [100, 200)
    ([("x-n", "200")], "a"),
    ([("x-n", "abc")], "a"),
    ([("x-region", "us")], "b"),                # invert: anything but eu
    ([("x-region", "eu")], "a"),
    ([("x-key-bin", b"\x00\x01")], "b"),        # -bin: its base64 wire text, unpadded as sent
    ([("x-key-bin", b"\x00\x02")], "a"),
]


@pytest.mark.parametrize("client", LIBRARIES)
async def test_metadata_matches_pick_the_backend(tmp_path, client):
    to_b = [
        grpc_route("tier", "b.local", metadata=[_meta("x-tier", exact="gold")], priority=1),
        grpc_route("user", "b.local", metadata=[_meta("x-user", prefix="adm")], priority=2),
        grpc_route("build", "b.local", metadata=[_meta("x-build", regex=r"v[0-9]+\.beta")], priority=3),
        grpc_route("n", "b.local", metadata=[_meta("x-n", range={"start": 100, "end": 200})], priority=4),
        grpc_route("region", "b.local", metadata=[_meta("x-region", invert=True, exact="eu")], priority=5),
        grpc_route("key", "b.local", metadata=[_meta("x-key-bin", exact="AAE")], priority=6),
        # serviceName is "/S/": a service name that is only a prefix of ours never matches
        grpc_route("near", "b.local", serviceName="test.Ech", priority=0),
        grpc_route("rest", "a.local", priority=9),
    ]
    async with two_backends(tmp_path, to_b) as (gport, obs_a, obs_b):
        counts = (0, 0)
        async with grpc_client(client, gport) as c:
            for i, (metadata, expected) in enumerate(ROUTING_CASES):
                result = await c.call("Unary", b"%d" % i, metadata=metadata, timeout=5)
                assert result.messages == [b"%d" % i], (metadata, result.status, result.message)
                seen = (len(obs_a.calls), len(obs_b.calls))
                assert seen[0] + seen[1] == i + 1
                got = "a" if seen[0] > counts[0] else "b"
                counts = seen
                assert got == expected, (metadata, got)
    assert len(obs_a.calls) + len(obs_b.calls) == len(ROUTING_CASES)



@pytest.mark.parametrize("client", LIBRARIES)
async def test_hostname_match_and_rewrite(tmp_path, client):
    routes = [
        grpc_route("keep", "a.local", metadata=[_meta("x-keep")],
                   rewrite={"hostname": {"defaultTargetHostname": "DISABLED"}}, priority=1),
        grpc_route("api", "a.local", hostname={"exact": "api.example.com"}, priority=2),
        grpc_route("rest", "b.local", priority=3),
    ]
    async with two_backends(tmp_path, routes) as (gport, obs_a, obs_b):
        async with grpc_client(client, gport, authority="api.example.com") as api:
            # routes with a hostname match are a host group tried before the others (2.9.2)
            by_host = json.loads((await api.call("Metadata", b"", timeout=5,
                                                 metadata=[("x-keep", "1")])).messages[0])
        async with grpc_client(client, gport, authority="other.example.com") as other:
            kept = json.loads((await other.call("Metadata", b"", timeout=5,
                                                metadata=[("x-keep", "1")])).messages[0])
            rest = json.loads((await other.call("Metadata", b"", timeout=5)).messages[0])
    assert [len(obs_a.calls), len(obs_b.calls)] == [2, 1]
    assert by_host["authority"] == "a.local", "rewritten to the target's name"
    assert kept["authority"] == "other.example.com", "rewrite DISABLED keeps the client's"
    assert rest["authority"] == "b.local"
    assert ["x-keep", "1"] in kept["metadata"]


# ------------------------------------------- 7. large streams, bounded memory

MIB = 1 << 20


def gateway_held_bytes(gw) -> int:
    """Bytes the gateway holds for its HTTP/2 traffic right now: response and request data
    waiting for a peer's window, codec output not yet written, and transport write buffers,
    on both sides."""
    def held(protocol, streams) -> int:
        total = sum(len(piece) for piece in protocol.conn._out)
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            total += transport.get_write_buffer_size()
        for stream in streams:
            total += sum(len(piece) for piece in stream.pending or ())
        return total
    total = 0
    for ctx in gw.contexts:
        for conn in list(ctx.connections):
            if isinstance(conn, Http2Downstream):
                total += held(conn, conn.streams.values())
    for cluster in gw.clusters.values():
        for endpoint in cluster.endpoints():
            for conn in getattr(endpoint, "conns", ()):
                total += held(conn, conn.streams.values())
    return total


class HeldProbe:
    """Samples gateway_held_bytes every few milliseconds while a call runs."""

    def __init__(self, gw):
        self.gw = gw
        self.peak = 0
        self.samples = 0
        self.task = None

    async def _run(self):
        while True:
            self.peak = max(self.peak, gateway_held_bytes(self.gw))
            self.samples += 1
            await asyncio.sleep(0.002)

    async def __aenter__(self):
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


# The gateway may hold about one stream window (256 KiB) plus a few frames per direction;
# twice that leaves room for transport buffers and stays far below the 64 MiB sent.
HELD_BOUND = 512 * 1024


@pytest.mark.parametrize("client", LIBRARIES)
async def test_large_server_stream_to_a_slow_client_stays_bounded(tmp_path, client):
    progress = Progress()
    async with echo_through_gateway(tmp_path, "grpclib") as (gport, obs, gw), HeldProbe(gw) as probe:
        call = asyncio.create_task(grpc_call(client, gport, "ServerStream", stream_request(64, MIB),
                                             read_delay=0.02, keep=False, progress=progress,
                                             timeout=30))
        ahead = 0
        while not call.done():
            record = obs.of("ServerStream")
            if record:
                ahead = max(ahead, record[0].sent_bytes - progress.nbytes)
            await asyncio.sleep(0.005)
        result = call.result()
        record = await obs.wait("ServerStream")
    assert result.status == 0 and result.count == 64 and result.nbytes == 64 * MIB
    assert record.sent_bytes == 64 * MIB
    print(f"peak held {probe.peak} in {probe.samples} samples; server ahead of client {ahead}")
    assert probe.samples > 50
    assert 0 < probe.peak <= HELD_BOUND, f"the gateway held {probe.peak} bytes"
    # What the server sent and the client has not read sits in the client's window, the
    # gateway (bounded above) and the server's own buffers, never in some unbounded queue.
    assert ahead <= 12 * MIB


class SlowSink:
    """A grpclib ClientStream handler that reads one message per `delay` seconds."""

    def __init__(self, delay: float):
        self.delay = delay
        self.received = 0
        self.received_bytes = 0

    def __mapping__(self):
        return {"/test.Echo/ClientStream": Handler(self._handle, Cardinality.STREAM_UNARY, bytes, bytes)}

    async def _handle(self, stream):
        async for message in stream:
            self.received += 1
            self.received_bytes += len(message)
            await asyncio.sleep(self.delay)
        await stream.send_message(b"%d,%d" % (self.received, self.received_bytes))


@pytest.mark.parametrize("client", LIBRARIES)
async def test_large_client_stream_to_a_slow_server_stays_bounded(tmp_path, client):
    sink = SlowSink(0.02)
    server = grpclib.server.Server([sink], codec=RawCodec())
    bport = free_port()
    await server.start("127.0.0.1", bport)
    try:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()], [grpc_service("echo.local", bport)])
        async with running_gateway(tmp_path, doc, admin=False) as gw, HeldProbe(gw) as probe:
            block = b"u" * MIB
            result = await grpc_call(client, gport, "ClientStream", [block] * 64, timeout=30)
    finally:
        server.close()
        await server.wait_closed()
    assert result.status == 0, (result.status, result.message)
    assert result.messages == [b"64,%d" % (64 * MIB)]
    assert sink.received_bytes == 64 * MIB
    print(f"peak held {probe.peak} in {probe.samples} samples")
    assert probe.samples > 50
    assert 0 < probe.peak <= HELD_BOUND, f"the gateway held {probe.peak} bytes"


# ------------------------------------------------- 8. a backend dies mid-stream

@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_backend_dying_mid_stream_fails_the_call_not_the_gateway(tmp_path, client, server):
    obs, spare_obs = Observations(), Observations()
    progress = Progress()
    dying = grpc_server(server, obs)
    bport = await dying.__aenter__()
    stopped = False
    try:
        async with grpc_server("grpclib", spare_obs) as spare:
            gport = free_port()
            routes = [grpc_route("spare", "spare.local", metadata=[_meta("x-spare")], priority=1),
                      grpc_route("echo", "echo.local", priority=2)]
            doc = grpc_doc(gport, routes, [grpc_service("echo.local", bport),
                                           grpc_service("spare.local", spare)])
            async with running_gateway(tmp_path, doc, admin=False), grpc_client(client, gport) as c:
                call = asyncio.create_task(c.call("ServerStream", stream_request(1000, 1000, 0.01),
                                                  progress=progress, keep=False, timeout=10))
                async with asyncio.timeout(5):
                    while progress.count < 5:
                        await asyncio.sleep(0.005)
                # the backend goes away: its server stops and drops the gateway's connection
                stopped = True
                await dying.__aexit__(None, None, None)
                result = await asyncio.wait_for(call, 5)
                after = await c.call("Unary", b"next", metadata=[("x-spare", "1")], timeout=5)
                again = await c.call("Unary", b"again", timeout=5)
    finally:
        if not stopped:
            await dying.__aexit__(None, None, None)
    assert result.status in (13, 14), (result.status, result.message, result.error)
    assert 5 <= result.count < 1000
    assert obs.last("ServerStream").outcome != "ok"
    assert after.status == 0 and after.messages == [b"next"]
    assert spare_obs.last("Unary").outcome == "ok"
    assert again.status == 14, "the dead backend is refused at connect: UNAVAILABLE, at once"


# --------------------------------------------------------------- 9. multiplexing

@pytest.mark.parametrize("client", LIBRARIES)
async def test_concurrent_calls_share_upstream_connections(tmp_path, client):
    async with echo_through_gateway(tmp_path, "grpclib") as (gport, obs, gw):
        async with grpc_client(client, gport) as c:
            results = await asyncio.gather(*(c.call("Unary", b"call %d" % i, timeout=10)
                                             for i in range(50)))
    assert [r.messages for r in results] == [[b"call %d" % i] for i in range(50)]
    assert len(obs.calls) == 50
    assert len({c.peer for c in obs.calls}) == 1, "50 calls, one upstream connection"
    assert gw.stats.clusters["echo.local"].upstream_cx_total == 1
    assert gw.stats.listeners[gport].downstream_cx_http2_total == 1


@pytest.mark.parametrize("client", LIBRARIES)
async def test_peer_stream_limit_queues_or_adds_connections(tmp_path, client):
    """grpcio's server takes at most 4 streams a connection; 20 concurrent calls all succeed."""
    async with echo_through_gateway(tmp_path, "grpcio",
                                    server_options=[("grpc.max_concurrent_streams", 4)]) \
            as (gport, obs, gw):
        async with grpc_client(client, gport) as c:
            results = await asyncio.gather(*(c.call("Sleep", sleep_request(0.1), timeout=10)
                                             for _ in range(20)))
            warm = await asyncio.gather(*(c.call("Sleep", sleep_request(0.1), timeout=10)
                                          for _ in range(20)))
    assert [(r.status, r.messages) for r in results + warm] == [(0, [b"slept"])] * 40, \
        [(r.status, r.message) for r in results + warm if r.status]
    assert len(obs.of("Sleep")) == 40 and all(r.outcome == "ok" for r in obs.calls)
    stats = gw.stats.clusters["echo.local"]
    # Streams are never spread wider than the peer's limit requires, nor pooled without end.
    assert 1 <= stats.upstream_cx_total <= 5 and len(obs.peers()) == stats.upstream_cx_total
    assert stats.upstream_rq_total == 40 and stats.upstream_rq_reset == 0


@pytest.mark.parametrize("instruction", ["rst=before&code=7", "goaway=before&last=0"])
async def test_refused_grpc_call_is_sent_again_once(tmp_path, instruction):
    """A stream the backend never processed (REFUSED_STREAM, or above GOAWAY's last stream
    id) is retried once even though gRPC calls are POSTs; refused twice, UNAVAILABLE."""
    obs = H2Observations()
    async with h2_origin(obs) as bport:
        gport = free_port()
        doc = grpc_doc(gport, [grpc_route()], [grpc_service("echo.local", bport)])
        async with running_gateway(tmp_path, doc, admin=False) as gw:
            result = await grpc_call("grpcio", gport, "ClientStream", [b"a" * 100, b"b" * 100],
                                     metadata=[("x-origin", instruction)], timeout=5)
    assert result.status == 14
    tries = obs.of("/test.Echo/ClientStream")
    assert len(tries) == 2, "sent twice: once, then the retry"
    # the retry carries the whole request body again (two 100-byte messages, framed)
    assert [r.body_bytes for r in tries] == [210, 210]
    if instruction.startswith("goaway"):
        assert tries[0].peer != tries[1].peer, "a draining connection takes no new stream"
    assert gw.stats.clusters["echo.local"].upstream_rq_retry_stale == 1


@pytest.mark.parametrize("client", LIBRARIES)
async def test_a_slow_stream_does_not_hold_up_its_neighbours(tmp_path, client):
    """One client connection, one slowly read stream and fast calls beside it: flow control
    is per stream through the gateway, so the fast ones finish while the slow one waits."""
    slow_progress = Progress()
    async with echo_through_gateway(tmp_path, "grpclib") as (gport, obs, gw):
        async with grpc_client(client, gport) as c:
            slow = asyncio.create_task(c.call("ServerStream", stream_request(40, 256 * 1024),
                                              read_delay=0.02, keep=False,
                                              progress=slow_progress, timeout=20))
            async with asyncio.timeout(5):
                while slow_progress.count < 2:
                    await asyncio.sleep(0.005)
            fast = await asyncio.gather(
                *(c.call("ServerStream", stream_request(8, 256 * 1024), keep=False, timeout=10)
                  for _ in range(4)),
                c.call("Bidi", [b"ping %d" % i for i in range(5)], lockstep=True, timeout=10))
            slow_count_when_fast_done = slow_progress.count
            result = await slow
    assert [(r.status, r.count) for r in fast] == [(0, 8)] * 4 + [(0, 5)]
    assert fast[-1].messages == [b"ping %d" % i for i in range(5)]
    assert slow_count_when_fast_done < 40, "the fast calls did not wait for the slow one"
    assert result.status == 0 and result.count == 40


@pytest.mark.parametrize("client,server", PAIRS, ids=PAIR_IDS)
async def test_one_large_message_each_way(tmp_path, client, server):
    big = bytes(range(256)) * (32 * 1024)          # 8 MiB, one gRPC message
    async with echo_through_gateway(tmp_path, server) as (gport, obs, _):
        result = await grpc_call(client, gport, "Unary", big, timeout=10)
        record = await obs.wait("Unary")
    assert result.status == 0 and result.messages == [big]
    assert record.received_bytes == len(big) and record.sent_bytes == len(big)


@pytest.mark.parametrize("server", LIBRARIES)
async def test_tls_on_both_sides(tmp_path, pki, server):
    """TLS listener (ALPN h2) in, TLS (ALPN h2) to the gRPC backend out."""
    obs = Observations()
    async with grpc_server(server, obs, tls=pki["server"]) as bport:
        gport = free_port()
        tls = {"enforce": True, "validation": {"trust": {"file": {"certificateChain": pki["ca_file"]}}}}
        doc = grpc_doc(gport, [grpc_route()], [grpc_service("echo.local", bport, tls=tls)],
                       tls=pki["server"])
        async with running_gateway(tmp_path, doc, admin=False) as gw:
            async with grpc_client("grpcio", gport, ca=pki["ca_file"], server_name="localhost") as c:
                results = {kind: await c.call(kind, CALLS[kind][0], timeout=5) for kind in CALLS}
    for kind, result in results.items():
        _check_kind(kind, result, obs.last(kind))
    assert gw.stats.clusters["echo.local"].upstream_cx_total == 1
