"""A listener's own healthCheck (gateway/listener/self_check.py): the gateway probes itself
and /ready follows the result.

The configuration loader refuses intervals under 5 s (spec 2.14).  So each test writes a
healthCheck within the spec's ranges (which the loader really parses and which the test
checks), then swaps the parsed policy for one with the same protocol and path and 100 ms
intervals, as tests/test_upstream_health.py does for endpoints.  Nothing else is replaced:
the probes are real connections to the running gateway's listeners, through its routing to
real backends, and readiness and metrics are read over HTTP from the admin server.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.certs import issue, make_ca
from gateway.config.load import load_config
from gateway.config.model import HealthCheckPolicy
from gateway.runtime import Gateway
from gateway.upstream.health import USER_AGENT
from tests.grpc_peers import grpclib_health
from tests.h2_peers import H2Observations, h2_origin
from tests.harness import echo_backend, free_port, gateway_doc, route, service

SVC = "svc.local"
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"    # grpc.health.v1 HealthCheckResponse{status}


def policy(protocol="http", path="/health", interval=100, timeout=500, healthy=2,
           unhealthy=2) -> HealthCheckPolicy:
    return HealthCheckPolicy(protocol, interval, timeout, healthy, unhealthy, path=path)


def listeners(doc) -> list[dict]:
    return doc["virtualGateway"]["spec"]["listeners"]


@asynccontextmanager
async def self_checked(tmp_path, doc, checks: dict[int, HealthCheckPolicy]):
    """A running gateway (admin on a free port) whose listeners, by port, check themselves."""
    for listener in listeners(doc):
        check = checks.get(listener["portMapping"]["port"])
        if check is not None:
            listener["healthCheck"] = {
                "protocol": check.protocol, "intervalMillis": 5000, "timeoutMillis": 2000,
                "healthyThreshold": check.healthy_threshold,
                "unhealthyThreshold": check.unhealthy_threshold,
                **({"path": check.path} if check.path is not None else {})}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config, _ = load_config(str(path))
    vg = config.virtual_gateway
    for listener in vg.listeners:
        if listener.port in checks:
            assert listener.health_check == replace(checks[listener.port], interval_millis=5000,
                                                    timeout_millis=2000)
    config = replace(config, virtual_gateway=replace(vg, listeners=tuple(
        replace(listener, health_check=checks[listener.port]) if listener.port in checks
        else listener for listener in vg.listeners)))
    gw = Gateway(config, admin=True)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(timeout=1.0)


async def admin_get(gw, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.admin.port}{path}") as r:
            return r.status, await r.text()


async def until_ready(gw, status: int, timeout: float = 3.0) -> str:
    """Poll /ready until it answers `status`; its body."""
    seen = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                seen = await admin_get(gw, "/ready")
                if seen[0] == status:
                    return seen[1]
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"/ready did not answer {status} within {timeout} s; "
                             f"last answer {seen}") from None


async def until(condition, timeout=3.0, what="condition"):
    """Wait for condition() (a plain or async callable) to hold."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                held = condition()
                if asyncio.iscoroutine(held):
                    held = await held
                if held:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None


async def metrics(gw) -> dict[tuple[str, str], float]:
    """(sample name, listener label) -> value, from a real scrape."""
    _, text = await admin_get(gw, "/metrics")
    return {(s.name, s.labels["listener"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if "listener" in s.labels and len(s.labels) == 1}


def check_values(values, port) -> tuple[float, float, float]:
    """(successes, failures, healthy) of the listener's self check."""
    key = str(port)
    return (values[("gateway_listener_health_check_success_total", key)],
            values[("gateway_listener_health_check_failure_total", key)],
            values[("gateway_listener_health_check_healthy", key)])


class ProbeLog:
    """A backend /health handler recording each probe with what /ready said as it arrived
    (the state before that probe's result)."""

    def __init__(self):
        self.gw = None
        self.seen: list[dict] = []

    def routes(self, name: str):
        async def handler(request: web.Request) -> web.Response:
            while self.gw is None:          # set by the test once the gateway has started
                await asyncio.sleep(0.005)
            status, body = await admin_get(self.gw, "/ready")
            self.seen.append({"name": name, "ready": status, "ready_body": body,
                              "host": request.headers.get("Host"),
                              "user_agent": request.headers.get("User-Agent"),
                              "proto": request.headers.get("X-Forwarded-Proto")})
            return web.Response(text="ok")
        return [("GET", "/health", handler)]

    def of(self, name: str) -> list[dict]:
        return [s for s in self.seen if s["name"] == name]


# ------------------------------------------------------------- http: the whole cycle

async def test_http_listener_ready_after_first_probe_then_follows_its_backend(tmp_path):
    check = policy(interval=100, timeout=500, healthy=2, unhealthy=2)
    gport = free_port()
    log = ProbeLog()
    backend = echo_backend("first", routes=log.routes("first"))
    bport = await backend.__aenter__()
    try:
        doc = gateway_doc(gport, [route("r", "/")], [service(SVC, bport)])
        async with self_checked(tmp_path, doc, {gport: check}) as gw:
            log.gw = gw
            await until_ready(gw, 200)
            first = log.of("first")
            # The first probe came while /ready was 503 and waiting; its success alone made
            # the listener healthy (spec 2.14), so the second one found /ready 200.
            assert first[0]["ready"] == 503
            assert first[0]["ready_body"].startswith("NOT READY\n")
            assert f"listener {gport} (http GET /health Host localhost)" in first[0]["ready_body"]
            assert "waiting for its first health check" in first[0]["ready_body"]
            await until(lambda: len(log.of("first")) >= 2, what="a second probe")
            assert log.of("first")[1]["ready"] == 200
            # An ordinary request through the listener: Host rewritten to the service.
            assert first[0]["host"] == SVC and first[0]["proto"] == "http"
            assert first[0]["user_agent"] == USER_AGENT.decode()

            # Backend gone: the gateway answers the probes 503 (no healthy upstream).
            await backend.__aexit__(None, None, None)
            _, failures_before, _ = check_values(await metrics(gw), gport)
            samples = []

            async def scraped_unhealthy():
                successes, failures, healthy = check_values(await metrics(gw), gport)
                samples.append((failures - failures_before, healthy))
                return healthy == 0
            await until(scraped_unhealthy, what="listener unhealthy")
            # Healthy through the first failure, unhealthy from the second (unhealthyThreshold).
            assert all(healthy == 1 for failed, healthy in samples if failed < 2), samples
            assert samples[-1][0] >= 2
            body = await until_ready(gw, 503)
            assert body.startswith(
                f"NOT READY\nlistener {gport} (http GET /health Host localhost): ")
            assert "unhealthy after" in body and "last failure: status 503" in body

            # Back on the same port: healthy again after healthyThreshold successes.
            async with echo_backend("second", port=bport, routes=log.routes("second")):
                await until_ready(gw, 200)
                second = log.of("second")
                assert [s["ready"] for s in second[:2]] == [503, 503]
                assert "1 of 2 consecutive successes" in second[1]["ready_body"]
                await until(lambda: len(log.of("second")) >= 3, what="a third probe")
                assert log.of("second")[2]["ready"] == 200
    finally:
        await backend.__aexit__(None, None, None)


async def test_a_health_path_without_a_route_is_never_ready(tmp_path):
    gport = free_port()
    seen = []

    async def handler(request):
        seen.append(request.path)
        return web.Response(text="ok")

    async with echo_backend("b", handler=handler) as bport:
        doc = gateway_doc(gport, [route("app", "/app")], [service(SVC, bport)])
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            async def failed_thrice():
                return check_values(await metrics(gw), gport)[1] >= 3
            await until(failed_thrice, what="three failed probes")
            status, body = await admin_get(gw, "/ready")
            values = await metrics(gw)
    assert status == 503
    assert body == (f"NOT READY\nlistener {gport} (http GET /health Host localhost): no health "
                    f"check has passed yet; last failure: status 404\n")
    successes, failures, healthy = check_values(values, gport)
    assert (successes, healthy) == (0, 0) and failures >= 3
    # The probes went through the listener's routing and matched nothing.
    assert values[("gateway_downstream_rq_no_route_total", str(gport))] >= 3
    assert seen == []


async def test_metrics_per_listener_and_ready_names_the_failing_one(tmp_path):
    good, bad, plain = free_port(), free_port(), free_port()
    check = policy(interval=3000, timeout=500)        # one probe each within the test
    async with echo_backend("b") as bport:
        doc = gateway_doc(good, [route("r", "/health")], [service(SVC, bport)])
        listeners(doc).append({"portMapping": {"port": bad, "protocol": "http"}})
        listeners(doc).append({"portMapping": {"port": plain, "protocol": "http"}})
        checks = {good: check, bad: replace(check, path="/missing")}
        async with self_checked(tmp_path, doc, checks) as gw:
            async def both_probed():
                values = await metrics(gw)
                return all(sum(check_values(values, p)[:2]) == 1 for p in (good, bad))
            await until(both_probed, what="a probe of each listener")
            values = await metrics(gw)
            status, body = await admin_get(gw, "/ready")
    assert check_values(values, good) == (1, 0, 1)
    assert check_values(values, bad) == (0, 1, 0)
    assert not [k for k in values if k[1] == str(plain) and "health_check" in k[0]]
    assert status == 503
    assert body == (f"NOT READY\nlistener {bad} (http GET /missing Host localhost): no health "
                    f"check has passed yet; last failure: status 404\n")


async def test_host_is_a_route_hostname_that_routes_the_probe(tmp_path):
    gport = free_port()
    log = ProbeLog()
    keep_host = {"hostname": {"defaultTargetHostname": "DISABLED"}}
    async with echo_backend("b", routes=log.routes("b")) as bport:
        # No route without a hostname, so "localhost" routes nothing; aaa.example.test comes
        # first in routing order but has no route for /health; zzz.example.test has one.
        aaa = route("aaa", "/app", hostname={"exact": "aaa.example.test"}, rewrite=keep_host)
        zzz = route("zzz", "/", hostname={"exact": "zzz.example.test"}, rewrite=keep_host)
        doc = gateway_doc(gport, [aaa, zzz], [service(SVC, bport)])
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            log.gw = gw
            await until_ready(gw, 200)
    assert log.seen[0]["host"] == "zzz.example.test"


# -------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("self-check-pki")
    ca = make_ca("self check test CA")
    ca_file, _ = ca.write(d, "ca")
    server = issue(ca, "gateway.local", dns=("*.wild.test", "gateway.local", "localhost"),
                   ips=("127.0.0.1",)).write(d, "server")
    return {"ca_file": ca_file, "server": server}


def with_tls(doc, pki, mode, validation=False):
    tls = {"mode": mode, "certificate": {"file": {"certificateChain": pki["server"][0],
                                                  "privateKey": pki["server"][1]}}}
    if validation:
        tls["validation"] = {"trust": {"file": {"certificateChain": pki["ca_file"]}}}
    listeners(doc)[0]["tls"] = tls
    return doc


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
async def test_tls_listener_is_probed_over_tls_with_its_certificate_name(tmp_path, pki, mode):
    gport = free_port()
    log = ProbeLog()
    access = tmp_path / "access.log"
    async with echo_backend("b", routes=log.routes("b")) as bport:
        doc = with_tls(gateway_doc(gport, [route("r", "/")], [service(SVC, bport)], access_log={
            "path": str(access),
            "format": {"text": "%REQ(:AUTHORITY)% %PROTOCOL% %REQ(:PATH)% %REQ(USER-AGENT)%\n"}}),
            pki, mode)
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            log.gw = gw
            await until_ready(gw, 200)
            gw.access_log.flush()
            tls_stats = gw.stats.listener_tls[gport]
            handshakes, plaintext = tls_stats.handshakes, tls_stats.plaintext_connections
            # SNI: the certificate's first DNS name that is not a wildcard.  (The access
            # log's %REQUESTED_SERVER_NAME% is not filled in yet, so it is read here.)
            assert gw.self_check.checks[0].target.server_hostname == "gateway.local"
    assert log.seen[0]["proto"] == "https"
    assert access.read_text().splitlines()[0] == \
        f"localhost HTTP/1.1 /health {USER_AGENT.decode()}"
    assert handshakes >= 1 and plaintext == 0


async def test_sni_falls_back_to_the_sni_certificates_names(tmp_path, pki):
    ca = make_ca("sni test CA")
    default = issue(ca, "by ip", ips=("127.0.0.1",)).write(tmp_path, "default")
    named = issue(ca, "probe", dns=("probe.example.test",)).write(tmp_path, "named")
    gport = free_port()
    async with echo_backend("b") as bport:
        doc = gateway_doc(gport, [route("r", "/")], [service(SVC, bport)])
        listeners(doc)[0]["tls"] = {"mode": "STRICT", "certificate": {"file": {
            "certificateChain": default[0], "privateKey": default[1]}}}
        listeners(doc)[0]["sniCertificates"] = [{
            "serverNames": ["*.wild.test", "probe.example.test"],
            "certificateChain": named[0], "privateKey": named[1]}]
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            await until_ready(gw, 200)
            assert gw.self_check.checks[0].target.server_hostname == "probe.example.test"


async def test_strict_mtls_listener_probe_is_the_tls_handshake(tmp_path, pki):
    gport = free_port()
    seen = []

    async def handler(request):
        seen.append(request.path)
        return web.Response(text="ok")

    async with echo_backend("b", handler=handler) as bport:
        doc = with_tls(gateway_doc(gport, [route("r", "/")], [service(SVC, bport)]), pki,
                       "STRICT", validation=True)
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            await until_ready(gw, 200)
            failures = dict(gw.stats.listener_tls[gport].handshake_failures)
    # No request can pass without a client certificate: the handshake was the probe, and
    # the listener counted each as a refused one.
    assert seen == []
    assert failures.get("no_client_certificate", 0) >= 1, failures


async def test_permissive_mtls_listener_is_probed_in_plaintext(tmp_path, pki):
    gport = free_port()
    log = ProbeLog()
    async with echo_backend("b", routes=log.routes("b")) as bport:
        doc = with_tls(gateway_doc(gport, [route("r", "/")], [service(SVC, bport)]), pki,
                       "PERMISSIVE", validation=True)
        async with self_checked(tmp_path, doc, {gport: policy()}) as gw:
            log.gw = gw
            await until_ready(gw, 200)
            plaintext = gw.stats.listener_tls[gport].plaintext_connections
    assert log.seen[0]["proto"] == "http" and plaintext >= 1


# ---------------------------------------------------------------- http2 and gRPC

@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-over-tls"])
async def test_http2_listener_probed_over_http2(tmp_path, pki, tls):
    gport = free_port()
    obs = H2Observations()
    async with h2_origin(obs) as bport:
        r = {"gatewayRouteName": "h2", "spec": {"http2Route": {
            "match": {"prefix": "/"},
            "action": {"target": {"virtualService": {"virtualServiceName": SVC}}}}}}
        doc = gateway_doc(gport, [r], [service(SVC, bport, protocol="http2")])
        listeners(doc)[0]["portMapping"]["protocol"] = "http2"
        if tls:
            with_tls(doc, pki, "STRICT")
        async with self_checked(tmp_path, doc, {gport: policy("http2")}) as gw:
            await until_ready(gw, 200)
            h2_connections = gw.stats.listeners[gport].downstream_cx_http2_total
        record = await obs.wait("/health")
    assert (record.method, record.path, record.authority) == ("GET", "/health", SVC)
    assert dict(record.headers)["user-agent"] == USER_AGENT.decode()
    assert dict(record.headers)["x-forwarded-proto"] == ("https" if tls else "http")
    assert h2_connections >= 1     # the probe spoke HTTP/2 to the listener


async def test_grpc_listener_probed_with_grpc_health_v1(tmp_path):
    gport = free_port()
    state = {"answer": SERVING, "requests": []}
    async with grpclib_health(state) as bport:
        r = {"gatewayRouteName": "health", "spec": {"grpcRoute": {
            "match": {"serviceName": "grpc.health.v1.Health"},
            "action": {"target": {"virtualService": {"virtualServiceName": SVC}}}}}}
        doc = gateway_doc(gport, [r], [service(SVC, bport, protocol="grpc")])
        listeners(doc)[0]["portMapping"]["protocol"] = "grpc"
        async with self_checked(tmp_path, doc, {gport: policy("grpc", None)}) as gw:
            await until_ready(gw, 200)
            assert state["requests"][0] == b""           # HealthCheckRequest{service: ""}
            state["answer"] = NOT_SERVING
            body = await until_ready(gw, 503)
            assert body.startswith(f"NOT READY\nlistener {gport} (grpc "
                                   f"/grpc.health.v1.Health/Check :authority localhost): ")
            assert "last failure: serving status 2 (want SERVING)" in body
            state["answer"] = SERVING
            await until_ready(gw, 200)
