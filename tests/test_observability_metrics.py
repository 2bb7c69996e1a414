"""Prometheus exposition of the stats slot objects."""
from __future__ import annotations

import math

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.prometheus import StatsCollector, render_metrics
from gateway.observability.stats import LATENCY_BUCKETS, METRICS, TLS_METRICS, Stats


def samples(stats_list) -> dict[tuple[str, frozenset], float]:
    text = render_metrics(stats_list).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(stats_list) -> dict[str, str]:
    text = render_metrics(stats_list).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def lbl(**kw) -> frozenset:
    return frozenset(kw.items())


def test_every_table_entry_is_exposed_with_its_type():
    st = Stats()
    st.listener(8080)
    st.cluster("a.local")
    st.route("r", "a.local")
    fams = families([st])
    for kind, name, _help, _scope in METRICS:
        # The parser names counter families without their `_total` sample suffix.
        family = "gateway_" + (name.removesuffix("_total") if kind == "counter" else name)
        assert fams.get(family) == kind, name
    for kind, name, _help in TLS_METRICS:
        family = "gateway_" + name
        assert fams.get(family) == kind, name
    assert len(fams) == len(METRICS) + len(TLS_METRICS)


def test_counters_get_total_suffix_and_labels():
    st = Stats()
    ls = st.listener(8080)
    ls.downstream_rq_total += 5
    ls.downstream_rq_no_route += 2
    cs = st.cluster("items.local")
    cs.upstream_cx_connect_fail += 3
    cs.upstream_cx_active = 4
    got = samples([st])
    assert got[("gateway_downstream_rq_total", lbl(listener="8080"))] == 5
    assert got[("gateway_downstream_rq_no_route_total", lbl(listener="8080"))] == 2
    assert got[("gateway_downstream_cx_total", lbl(listener="8080"))] == 0
    assert got[("gateway_upstream_cx_connect_fail_total", lbl(virtual_service="items.local"))] == 3
    assert got[("gateway_upstream_cx_active", lbl(virtual_service="items.local"))] == 4
    assert got[("gateway_access_log_write_errors_total", lbl())] == 0


def test_route_requests_by_code_class():
    st = Stats()
    rs = st.route("r1", "items.local")
    for status in (200, 201, 204, 404, 503, 503, 101, 302):
        rs.observe(status, 0.001)
    got = samples([st])
    want = {"1xx": 1, "2xx": 3, "3xx": 1, "4xx": 1, "5xx": 2}
    for cls, n in want.items():
        key = ("gateway_route_rq_total", lbl(route="r1", virtual_service="items.local",
                                             code_class=cls))
        assert got[key] == n, cls


def test_latency_histogram_is_cumulative():
    st = Stats()
    rs = st.route("r1", "items.local")
    for seconds in (0.0004, 0.001, 0.003, 0.2, 100.0):
        rs.observe(200, seconds)
    got = samples([st])
    route = dict(route="r1", virtual_service="items.local")

    def bucket(le: str) -> float:
        return got[("gateway_route_rq_duration_seconds_bucket", lbl(le=le, **route))]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2          # le is inclusive
    assert bucket("0.005") == 3
    assert bucket("0.25") == 4
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    assert got[("gateway_route_rq_duration_seconds_count", lbl(**route))] == 5
    assert math.isclose(got[("gateway_route_rq_duration_seconds_sum", lbl(**route))],
                        0.0004 + 0.001 + 0.003 + 0.2 + 100.0)
    les = {dict(k[1])["le"] for k in got if k[0] == "gateway_route_rq_duration_seconds_bucket"}
    assert len(les) == len(LATENCY_BUCKETS) + 1


def test_several_workers_are_summed():
    a, b = Stats(), Stats()
    a.listener(8080).downstream_cx_active = 3
    b.listener(8080).downstream_cx_active = 4
    b.listener(9090).downstream_rq_total = 1
    a.cluster("x").upstream_rq_total = 10
    b.cluster("x").upstream_rq_total = 5
    a.route("r", "x").observe(200, 0.01)
    b.route("r", "x").observe(500, 2.0)
    a.access_log_write_errors = 1
    b.access_log_write_errors = 2
    got = samples([a, b])
    assert got[("gateway_downstream_cx_active", lbl(listener="8080"))] == 7
    assert got[("gateway_downstream_rq_total", lbl(listener="9090"))] == 1
    assert got[("gateway_upstream_rq_total", lbl(virtual_service="x"))] == 15
    assert got[("gateway_route_rq_duration_seconds_count", lbl(route="r", virtual_service="x"))] == 2
    assert got[("gateway_route_rq_total", lbl(route="r", virtual_service="x", code_class="5xx"))] == 1
    assert got[("gateway_access_log_write_errors_total", lbl())] == 3


def test_collector_reads_live_values_at_each_scrape():
    st = Stats()
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: [st]))
    assert registry.get_sample_value("gateway_downstream_rq_total", {"listener": "80"}) is None
    st.listener(80).downstream_rq_total += 1
    assert registry.get_sample_value("gateway_downstream_rq_total", {"listener": "80"}) == 1
    st.listener(80).downstream_rq_total += 1
    assert registry.get_sample_value("gateway_downstream_rq_total", {"listener": "80"}) == 2


def test_empty_stats_render_valid_text():
    text = render_metrics([]).decode()
    fams = {f.name for f in text_string_to_metric_families(text)}
    assert "gateway_downstream_rq" in fams
