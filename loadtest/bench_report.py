"""Turn the benchmark's per-round results into Markdown tables, one per workload.

The http table is the original one, unchanged. The TLS tables add the proxy's
CPU share and the work done per CPU-second of the proxy: on a 2-core machine
one core of load generator cannot always keep one core of proxy busy (a full
TLS handshake costs the client about as much as the server), and then the raw
rate measures the client while the per-CPU-second figure still compares the
proxies. The h2c and grpc tables have the same columns, in streams, plus the
direct row (h2load against the h2c origin: the ceiling of the load core).
"""
from __future__ import annotations

import statistics

import bench_targets as targets
import bench_targets_h2 as targets_h2

WORKLOAD_TITLES = {
    "http": "keep-alive HTTP/1.1",
    "tls": "keep-alive HTTPS (TLS terminated at the proxy, plaintext keep-alive to the origin)",
    "resume": "a new connection per request with a resumed TLS session (wrk, Connection: close)",
    "handshake": "a new connection per request with a full TLS handshake (hsload, never resumes)",
    "h2c": ("multiplexed HTTP/2 over cleartext (h2c prior knowledge), forwarded as HTTP/1.1 "
            "keep-alive"),
    "grpc": "gRPC unary calls over h2c, forwarded over h2c to a gRPC responder",
}
H2_WORKLOADS = frozenset(("h2c", "grpc"))
# The gateway's goals on one core: workload -> (issue, reference proxy, minimum ratio).
GOALS = {"tls": (3, "envoy", 1.5), "handshake": (3, "nginx", 0.8),
         "h2c": (4, "envoy", 1.0), "grpc": (4, "envoy", 1.0)}
# Below this share of its core a proxy was not the bottleneck: the client was.
SATURATED_CPU = 0.9


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}us" if v < 1 else f"{v:.2f}ms"


def summarise(rounds: list[dict]) -> dict | None:
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return None
    def median_of(key: str) -> float | None:
        # h2load without its log has no percentiles: None rather than a made-up number.
        vals = [r["latency_ms"].get(key) for r in ok]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    out = {
        "rps": statistics.median(r["requests_per_sec"] for r in ok),
        "p50_ms": median_of("p50"),
        "p99_ms": median_of("p99"),
        "errors": sum(r["errors"] for r in ok),
        "rounds_ok": len(ok),
    }
    with_cpu = [r for r in ok if r.get("proxy_cpu_seconds")]
    if with_cpu:
        out["cpu_share"] = statistics.median(r["proxy_cpu_share"] for r in with_cpu)
        # A row may bring its own figure (h2load: its warm-up shares the CPU window).
        out["per_cpu_second"] = statistics.median(
            r["per_cpu_second"] if "per_cpu_second" in r else r["requests"] / r["proxy_cpu_seconds"]
            for r in with_cpu)
    return out


def _error_text(rounds: list[dict]) -> str:
    parts: list[str] = []
    non = sum(r.get("non_2xx_3xx", 0) for r in rounds if "error" not in r)
    if non:
        parts.append(f"{non} non-2xx/3xx")
    sock: dict[str, int] = {}
    for r in rounds:
        for k, v in r.get("socket_errors", {}).items():
            sock[k] = sock.get(k, 0) + v
    parts += [f"{v} socket {k}" for k, v in sock.items() if v]
    resumed = sum(r.get("resumed", 0) for r in rounds)
    if resumed:
        parts.append(f"{resumed} resumed (not full handshakes)")
    failed = sum(1 for r in rounds if "error" in r)
    if failed:
        parts.append(f"{failed} failed run(s)")
    return "**" + ", ".join(parts) + "**" if parts else "0"


def _h2_error_text(rounds: list[dict]) -> str:
    ok = [r for r in rounds if "error" not in r]
    parts: list[str] = []
    non = sum(r.get("non_2xx", 0) for r in ok)
    if non:
        parts.append(f"{non} non-2xx")
    errored = sum(r.get("errored", 0) for r in ok)
    if errored:
        parts.append(f"{errored} stream/connection errors")
    timeout = sum(r.get("timeout", 0) for r in ok)
    if timeout:
        parts.append(f"{timeout} timeouts")
    # h2load's "failed" may hold what the three above do not (e.g. a status it cannot parse).
    other = sum(r.get("errors", 0) for r in ok) - non - errored
    if other > 0:
        parts.append(f"{other} other failed")
    failed = sum(1 for r in rounds if "error" in r)
    if failed:
        parts.append(f"{failed} failed run(s)")
    return "**" + ", ".join(parts) + "**" if parts else "0"


def _one_line(reason: str, limit: int = 160) -> str:
    """First and last line of a multi-line reason (message ... final traceback line)."""
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1]}"
    return text.replace("|", "/")[:limit]


def _ratio(summ: dict, name: str, ref: str, key: str = "rps") -> str:
    a, b = summ.get(name), summ.get(ref)
    if not a or not b or not b.get(key) or key not in a:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def _machine_line(m: dict) -> str:
    return (f"Machine: nproc={m['nproc']}, usable CPUs {m['usable_cpus']}; proxies pinned to CPU "
            f"{m['proxy_cpu']}, origin + wrk pinned to CPU {m['load_cpu']}"
            + (" (only one CPU: numbers are not meaningful)" if m["shared_cpu"] else "")
            + f"; 1-min load average before starting: {m['loadavg_at_start'][0]}")


def _load_line(workload: str, s: dict) -> str:
    route = (f"GET {targets.BENCH_PREFIX}{targets.ORIGIN_PATH} -> origin {targets.ORIGIN_PATH} "
             f"Host {targets.ORIGIN_HOST}")
    rounds = f"{s['rounds']} alternating round(s), {s['warmup']}s warm-up"
    wrk = f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s --latency"
    if workload == "http":
        return f"Load: {wrk}, {rounds}; keep-alive HTTP/1.1 {route}"
    if workload in H2_WORKLOADS:
        h2load = (f"h2load -c{s.get('h2_connections', 8)} -m{s.get('h2_streams', 32)} "
                  f"-D{s['duration']} --warm-up-time {s.get('h2load_warmup', 1)}")
        if workload == "grpc":
            return (f"Load: {h2load} -d <one {len(targets_h2.GRPC_REQUEST)}-byte gRPC message> -H "
                    f"'content-type: application/grpc' -H 'te: trailers' http://..., {rounds}; "
                    f"unary POST /bench.Echo/Unary -> gRPC origin over h2c, :authority "
                    f"{targets.ORIGIN_HOST}; a call counts as successful on HTTP 200")
        return (f"Load: {h2load} http://... (h2c prior knowledge), {rounds}; {route}, "
                "HTTP/1.1 keep-alive to the origin")
    if workload == "handshake":
        return (f"Load: hsload -c{s['connections']} -d{s['duration']}s, {rounds}; per connection: "
                f"TCP connect, full TLS handshake (no session cache, no tickets), one {route}, "
                "close; latency is connect to last byte")
    extra = " -H 'Connection: close'" if workload == "resume" else ""
    return f"Load: {wrk}{extra} https://..., {rounds}; {WORKLOAD_TITLES[workload]}; {route}"


def _round_text(r: dict) -> str:
    if "error" in r:
        return f"r{r['round']}: FAILED ({r['error'][:60]})"
    text = (f"r{r['round']}: {r['requests_per_sec']:,.0f} "
            f"{fmt_ms(r['latency_ms']['p50'])} {fmt_ms(r['latency_ms']['p99'])}")
    if "proxy_cpu_share" in r:
        text += f" cpu {r['proxy_cpu_share']:.0%}"
    return text


def _gateway_notes(gw: dict) -> list[str]:
    lines: list[str] = []
    if gw.get("time_wait_after"):
        tw = gw["time_wait_after"]
        lines += ["", f"TIME_WAIT sockets toward the origin port right after the last gateway "
                      f"round: {tw['dport']} (closed by the client side), {tw['sport']} "
                      f"(closed by the origin)."]
    if gw.get("metrics"):
        lines += ["", "Gateway counters after the run: " + ", ".join(
            f"{k.removeprefix('gateway_')}={v:,.0f}" for k, v in gw["metrics"].items())]
    return lines


def render(results: dict, workload: str = "http") -> str:
    if workload == "http":
        return _render_http(results)
    return _render_cpu_table(results, workload)


def _render_http(results: dict) -> str:
    tgts = results["workloads"]["http"]["targets"]
    summ = {n: t.get("summary") for n, t in tgts.items()}
    lines = [
        _machine_line(results["machine"]),
        _load_line("http", results["settings"]),
        "",
        "| target | req/s (median) | p50 | p99 | vs Envoy | vs nginx | errors | "
        "new TIME_WAIT to origin per round |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, t in tgts.items():
        s_ = summ[name]
        if t["status"] != "ok" or s_ is None:
            lines.append(f"| {name} | skipped | | | | | {_one_line(t.get('reason', 'no data'))} | |")
            continue
        tw = ", ".join(str(r.get("time_wait_origin_new", "-")) for r in t["rounds"])
        lines.append(f"| {name} | {s_['rps']:,.0f} | {fmt_ms(s_['p50_ms'])} | "
                     f"{fmt_ms(s_['p99_ms'])} | {_ratio(summ, name, 'envoy')} | "
                     f"{_ratio(summ, name, 'nginx')} | {_error_text(t['rounds'])} | {tw} |")
    lines += ["", "Per round (req/s, p50, p99):", ""]
    for name, t in tgts.items():
        runs = []
        for r in t.get("rounds", []):
            if "error" in r:
                runs.append(f"r{r['round']}: FAILED ({r['error'][:60]})")
            else:
                runs.append(f"r{r['round']}: {r['requests_per_sec']:,.0f} "
                            f"{fmt_ms(r['latency_ms']['p50'])} {fmt_ms(r['latency_ms']['p99'])}")
        lines.append(f"- {name}: " + ("; ".join(runs) if runs else _one_line(t.get("reason", "no runs"))))
    lines += _gateway_notes(tgts.get("gateway", {}))
    return "\n".join(lines)


def _render_cpu_table(results: dict, workload: str) -> str:
    """The TLS and HTTP/2 tables: rate, latency, ratios, proxy CPU and work per CPU-second."""
    w = results["workloads"][workload]
    tgts = w["targets"]
    summ = {n: t.get("summary") for n, t in tgts.items()}
    h2 = workload in H2_WORKLOADS
    unit = "handshakes" if workload == "handshake" else "streams" if h2 else "req"
    errors = _h2_error_text if h2 else _error_text
    lines = [
        f"### {workload}: {WORKLOAD_TITLES[workload]}",
        "",
        _machine_line(results["machine"]),
        _load_line(workload, results["settings"]),
        ("The direct row is h2load against an nginx serving the same over h2c: the ceiling of "
         "the load core; it has no proxy, hence no CPU columns." if h2 else
         "No direct row: the origin speaks plaintext only."),
        "",
        f"| target | {unit}/s (median) | p50 | p99 | vs Envoy | vs nginx | proxy CPU | "
        f"{unit} per proxy CPU-second | per CPU-s vs Envoy | per CPU-s vs nginx | errors | "
        "new TIME_WAIT to origin per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, t in tgts.items():
        s_ = summ[name]
        if t["status"] != "ok" or s_ is None:
            status = t["status"] if t["status"] != "ok" else "skipped"
            lines.append(f"| {name} | {status} | | | | | | | | | "
                         f"{_one_line(t.get('reason', 'no data'))} | |")
            continue
        tw = ", ".join(str(r.get("time_wait_origin_new", "-")) for r in t["rounds"])
        cpu = f"{s_['cpu_share']:.0%}" if "cpu_share" in s_ else "-"
        per = f"{s_['per_cpu_second']:,.0f}" if "per_cpu_second" in s_ else "-"
        lines.append(
            f"| {name} | {s_['rps']:,.0f} | {fmt_ms(s_['p50_ms'])} | {fmt_ms(s_['p99_ms'])} | "
            f"{_ratio(summ, name, 'envoy')} | {_ratio(summ, name, 'nginx')} | {cpu} | {per} | "
            f"{_ratio(summ, name, 'envoy', 'per_cpu_second')} | "
            f"{_ratio(summ, name, 'nginx', 'per_cpu_second')} | {errors(t['rounds'])} | {tw} |")

    lines += ["", f"Per round ({unit}/s, p50, p99, proxy CPU):", ""]
    for name, t in tgts.items():
        runs = [_round_text(r) for r in t.get("rounds", [])]
        lines.append(f"- {name}: " + ("; ".join(runs) if runs else _one_line(t.get("reason", "no runs"))))

    if h2:
        lines += _h2_notes(workload, tgts, summ)
    else:
        lines += ["", "TLS negotiated:", ""]
        for name, t in tgts.items():
            if t["status"] != "ok":
                continue
            lines.append(f"- {name}: {_negotiated(workload, t)}")

    unsaturated = [n for n, s_ in summ.items()
                   if s_ and n != "direct" and s_.get("cpu_share", 1.0) < SATURATED_CPU]
    if unsaturated:
        lines += ["", f"Not CPU-bound (proxy below {SATURATED_CPU:.0%} of its core): "
                      f"{', '.join(unsaturated)}. For these the load generator on the other core "
                      "was the limit, so compare the per-CPU-second columns."]
    if workload in GOALS:
        lines += ["", _goal_line(workload, summ)]
    lines += _gateway_notes(tgts.get("gateway", {}))
    return "\n".join(lines)


def _h2_notes(workload: str, tgts: dict, summ: dict) -> list[str]:
    lines = ["", "p50/p99 are computed from h2load's per-request log (request start to end of "
                 "response); the summary h2load prints has only min/max/mean/sd."]
    if any(s_ and s_.get("p99_ms") is None for s_ in summ.values()):
        lines.append("A row without p50/p99 had no per-request log: h2load's mean is in the "
                     "JSON results instead.")
    if workload == "grpc":
        lines += ["", "h2load sees only the :status of a call, not its grpc-status trailer: a "
                      "call counts as successful on HTTP 200. Before the load each target "
                      "answered one call with the expected message and grpc-status 0."]
    return lines


def _negotiated(workload: str, t: dict) -> str:
    probe = t.get("tls") or {}
    text = (f"{probe.get('version', '?')} {probe.get('cipher', '?')} "
            "(sanity request, Python client)")
    ok = [r for r in t.get("rounds", []) if "error" not in r]
    if workload == "handshake" and ok:
        seen = sorted({f"{r.get('tls_version', '?')} {r.get('cipher', '?')}" for r in ok})
        resumed = sum(r.get("resumed", 0) for r in ok)
        text = (f"{', '.join(seen)} (hsload); {resumed} of "
                f"{sum(r['requests'] for r in ok):,} connections resumed")
    if "resumes" in t:
        text += f"; a reconnect resumes the session: {'yes' if t['resumes'] else 'NO'}"
    return text


def _goal_line(workload: str, summ: dict) -> str:
    issue, ref, need = GOALS[workload]
    what = " streams/s" if workload in H2_WORKLOADS else ""
    raw = _ratio(summ, "gateway", ref)
    per = _ratio(summ, "gateway", ref, "per_cpu_second")
    if raw == "-":
        return (f"Goal (issue {issue}): gateway >= {need}x {ref}{what} — not measured "
                "(a row is missing).")

    def verdict(r: str) -> str:
        return "met" if r != "-" and float(r[:-1]) >= need else "NOT met"

    return (f"Goal (issue {issue}): gateway >= {need}x {ref}{what}: {raw} raw ({verdict(raw)}), "
            f"{per} per proxy CPU-second ({verdict(per)}).")
