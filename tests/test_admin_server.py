"""The admin server over a real socket."""
from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.server import start_admin
from gateway.observability.stats import Stats


@pytest.fixture
async def admin():
    state = {"ready": False, "stats": [Stats(), Stats()],
             "config": {"virtualGateway": {"name": "gw"}, "routes": ["a", "b"]}}
    server = await start_admin("127.0.0.1", 0,
                               stats_provider=lambda: state["stats"],
                               config_provider=lambda: state["config"],
                               is_ready=lambda: state["ready"])
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as client:
        yield client, state
    await server.close()


async def test_ping(admin):
    client, _ = admin
    async with client.get("/ping") as r:
        assert r.status == 200 and await r.text() == "OK"


async def test_ready_follows_the_provider(admin):
    client, state = admin
    async with client.get("/ready") as r:
        assert r.status == 503 and await r.text() == "NOT READY"
    state["ready"] = True
    async with client.get("/ready") as r:
        assert r.status == 200 and await r.text() == "READY"


async def test_metrics_reflect_increments_across_workers(admin):
    client, state = admin
    w1, w2 = state["stats"]
    w1.listener(8080).downstream_rq_total += 2
    w2.listener(8080).downstream_rq_total += 3
    w1.route("r1", "items.local").observe(404, 0.002)

    async with client.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = await r.text()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("gateway_downstream_rq_total", (("listener", "8080"),))] == 5
    key = ("gateway_route_rq_total",
           (("code_class", "4xx"), ("route", "r1"), ("virtual_service", "items.local")))
    assert values[key] == 1

    w2.listener(8080).downstream_rq_total += 1       # next scrape sees it
    async with client.get("/metrics") as r:
        assert "gateway_downstream_rq_total{listener=\"8080\"} 6.0" in await r.text()


async def test_metrics_openmetrics_negotiation(admin):
    client, _ = admin
    async with client.get("/metrics",
                          headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).endswith("# EOF\n")


async def test_config_is_json(admin):
    client, state = admin
    async with client.get("/config") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert await r.json() == state["config"]


async def test_index_lists_endpoints(admin):
    client, _ = admin
    async with client.get("/") as r:
        text = await r.text()
    for path in ("/metrics", "/ping", "/ready", "/config"):
        assert path in text


async def test_unknown_path_is_404(admin):
    client, _ = admin
    async with client.get("/nope") as r:
        assert r.status == 404


async def test_close_frees_the_port():
    server = await start_admin("127.0.0.1", 0, stats_provider=list, config_provider=dict,
                               is_ready=lambda: True)
    port = server.port
    assert port > 0
    await server.close()
    again = await start_admin("127.0.0.1", port, stats_provider=list, config_provider=dict,
                              is_ready=lambda: True)
    assert again.port == port
    await again.close()
