"""Prometheus exposition of the stats slot objects.

The request path never touches prometheus_client: it bumps plain attributes on
`stats.Stats`.  This collector turns those objects into metric families only
when someone scrapes, summing the `Stats` of every worker it is given.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.exposition import generate_latest

from .stats import LATENCY_BUCKETS, METRICS, PREFIX, TLS_METRICS, RouteStats, Stats

CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

_SCOPE_LABELS: dict[str, tuple[str, ...]] = {
    "listener": ("listener",),
    "route": ("route", "virtual_service"),
    "cluster": ("virtual_service",),
    "pool": ("virtual_service", "target"),
    "listener_check": ("listener",),
    "gateway": (),
}

# Rendered once: the `le` label values of the latency histogram.
_LE = tuple(repr(float(b)) for b in LATENCY_BUCKETS) + ("+Inf",)

_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
           "histogram": HistogramMetricFamily}


class _Merged:
    """Per-label-set sums of one scrape over several workers' `Stats`."""

    def __init__(self, stats_list: Iterable[Stats]) -> None:
        # label tuple -> {field: value}
        self.listener: dict[tuple[str, ...], dict[str, float]] = {}
        self.cluster: dict[tuple[str, ...], dict[str, float]] = {}
        self.pool: dict[tuple[str, ...], dict[str, float]] = {}
        self.listener_check: dict[tuple[str, ...], dict[str, float]] = {}
        self.gateway: dict[str, float] = {}
        self.route: dict[tuple[str, ...], _RouteSum] = {}
        for st in stats_list:
            for ls in st.listeners.values():
                _add_slots(self.listener.setdefault((str(ls.port),), {}), ls)
            for cs in st.clusters.values():
                _add_slots(self.cluster.setdefault((cs.virtual_service,), {}), cs)
            for ps in getattr(st, "pools", ()):
                _add_slots(self.pool.setdefault((ps.virtual_service, ps.target), {}), ps, ps.LABELS)
            for lc in getattr(st, "listener_checks", {}).values():
                _add_slots(self.listener_check.setdefault((str(lc.port),), {}), lc)
            for rs in st.routes.values():
                key = (rs.route, rs.virtual_service)
                acc = self.route.get(key)
                if acc is None:
                    acc = self.route[key] = _RouteSum()
                acc.add(rs)
            for kind, name, _help, scope in METRICS:
                if scope == "gateway":
                    self.gateway[name] = self.gateway.get(name, 0) + getattr(st, name, 0)


def _add_slots(acc: dict[str, float], obj: object, labels: int = 1) -> None:
    # The first slots are the labels (port / virtual_service ...), the rest are numbers.
    for name in type(obj).__slots__[labels:]:
        acc[name] = acc.get(name, 0) + getattr(obj, name)


class _RouteSum:
    __slots__ = ("by_class", "buckets", "duration_sum", "rate_limited")

    def __init__(self) -> None:
        self.by_class = [0] * 6
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.rate_limited = 0

    def add(self, rs: RouteStats) -> None:
        for i, v in enumerate(rs.by_class):
            self.by_class[i] += v
        for i, v in enumerate(rs.buckets):
            self.buckets[i] += v
        self.duration_sum += rs.duration_sum
        self.rate_limited += rs.rate_limited


def _family(kind: str, name: str, help_text: str, scope: str) -> Metric:
    labels = list(_SCOPE_LABELS[scope])
    if name == "route_rq":
        labels.append("code_class")
    return _FAMILY[kind](PREFIX + name, help_text, labels=labels)


class StatsCollector(Collector):
    """A custom collector reading `Stats` objects at scrape time."""

    def __init__(self, stats_provider: Callable[[], list[Stats]]) -> None:
        self._provider = stats_provider

    def describe(self) -> Iterator[Metric]:
        # Lets a registry with auto_describe learn the names without a scrape.
        for kind, name, help_text, scope in METRICS:
            yield _family(kind, name, help_text, scope)

    def collect(self) -> Iterator[Metric]:
        merged = _Merged(self._provider())
        for kind, name, help_text, scope in METRICS:
            fam = _family(kind, name, help_text, scope)
            if scope == "gateway":
                fam.add_metric([], merged.gateway.get(name, 0))
            elif scope in ("listener", "cluster", "pool", "listener_check"):
                rows = getattr(merged, scope)
                for labels, values in rows.items():
                    fam.add_metric(list(labels), values.get(name, 0))
            elif name == "route_rq":
                for labels, acc in merged.route.items():
                    for i, cls in enumerate(CODE_CLASSES, start=1):
                        fam.add_metric([*labels, cls], acc.by_class[i])
            elif name == "route_rq_rate_limited":
                for labels, acc in merged.route.items():
                    fam.add_metric(list(labels), acc.rate_limited)
            elif name == "route_rq_duration_seconds":
                for labels, acc in merged.route.items():
                    cumulative, running = [], 0
                    for le, n in zip(_LE, acc.buckets):
                        running += n
                        cumulative.append((le, running))
                    fam.add_metric(list(labels), cumulative, acc.duration_sum)
            else:
                raise AssertionError(f"no exposition rule for route metric {name!r}")
            yield fam
        yield from _tls_families(self._provider())


def _tls_families(stats_list: list[Stats]) -> Iterator[Metric]:
    fams = {name: _FAMILY[kind](PREFIX + name, help_text, labels=labels)
            for (kind, name, help_text), labels in zip(TLS_METRICS, (
                ["listener"], ["listener", "reason"], ["listener", "result"], ["listener"],
                ["listener", "path"], ["virtual_service"], ["virtual_service", "reason"]))}
    down: dict[str, dict] = {}
    up: dict[str, dict] = {}
    for st in stats_list:
        for port, ts in getattr(st, "listener_tls", {}).items():
            acc = down.setdefault(str(port), {"handshakes": 0, "errors": {}, "ok": 0, "failed": 0,
                                              "plain": 0, "expiry": {}})
            acc["handshakes"] += ts.handshakes
            for reason, n in ts.handshake_failures.items():
                acc["errors"][reason] = acc["errors"].get(reason, 0) + n
            acc["ok"] += ts.reloads_ok
            acc["failed"] += ts.reloads_failed
            acc["plain"] += ts.plaintext_connections
            acc["expiry"].update(ts.cert_not_after)
        for tls in getattr(st, "upstream_tls", ()):
            us = tls.stats
            acc = up.setdefault(tls.service_name, {"handshakes": 0, "errors": {}})
            acc["handshakes"] += us.handshake
            for reason, n in (("verify_error", us.fail_verify_error), ("verify_san", us.fail_verify_san),
                              ("connection_error", us.connection_error)):
                acc["errors"][reason] = acc["errors"].get(reason, 0) + n
    for port, acc in down.items():
        fams["downstream_tls_handshake"].add_metric([port], acc["handshakes"])
        for reason, n in acc["errors"].items():
            fams["downstream_tls_handshake_error"].add_metric([port, reason], n)
        fams["downstream_tls_reload"].add_metric([port, "ok"], acc["ok"])
        fams["downstream_tls_reload"].add_metric([port, "failed"], acc["failed"])
        fams["downstream_tls_plaintext_cx"].add_metric([port], acc["plain"])
        for path, when in acc["expiry"].items():
            fams["downstream_tls_certificate_expiry_timestamp_seconds"].add_metric([port, path], when)
    for service, acc in up.items():
        fams["upstream_tls_handshake"].add_metric([service], acc["handshakes"])
        for reason, n in acc["errors"].items():
            fams["upstream_tls_handshake_error"].add_metric([service, reason], n)
    yield from fams.values()


def render_metrics(stats_list: list[Stats]) -> bytes:
    """Prometheus text exposition of `stats_list` (summed)."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: stats_list))
    return generate_latest(registry)
