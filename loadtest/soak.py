"""Soak: steady load at a share of the gateway's capacity while one backend flaps.

    .venv/bin/python loadtest/soak.py [--duration 60] [--load 0.8] [--flap-every 4] [--down-for 2]

Three nginx backends sit behind one virtual service with every traffic-policy
object App Mesh gives it: an http health check, outlier detection and a retry
policy.  The script first measures what the gateway (one worker, pinned to CPU 0)
serves flat out through that route, then runs h2load over HTTP/1.1 at `--load` of
that rate for `--duration` seconds while it kills one backend with SIGKILL every
`--flap-every` seconds and starts it again `--down-for` seconds later.

What it prints: the requests h2load sent and how they ended, the flaps, and the
gateway's own counters over the soak (retries, retries refused by the budget,
connect failures, resets, ejections, health check failures).  A request is lost
when it did not get a 2xx.  Every GET that fails on the flapping backend may be
retried on another endpoint, except when the retry budget (at most 20% of the
active requests retrying at once, at least 3: proxy/retry.py) says no: the burst of
failures in the moment a backend dies can exceed it.  So the policy allows exactly
`upstream_rq_retry_overflow` losses; the exit status is 1 when more were lost.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2load_output  # noqa: E402
from bench_procs import ManagedProcess, free_port, http_get, wait_for_port  # noqa: E402
from bench_targets import gateway_command, nginx_common, nginx_process  # noqa: E402
from bench_tools import ensure_debian_tools, ensure_h2load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = "0", "1"
SERVICE = "soak.local"
BACKENDS = ("b1", "b2", "b3")
FLAPPER = "b1"

# The gateway counters the report shows, summed over their label sets.
COUNTERS = (
    "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
    "upstream_cx_connect_fail", "upstream_rq_reset", "upstream_rq_timeout",
    "outlier_ejections_total", "health_check_failure", "health_check_success",
    "downstream_rq_total",
)


def backend(workdir: Path, name: str, port: int) -> ManagedProcess:
    conf = nginx_common(workdir, name) + f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health {{ return 200 "ok\\n"; }}
        location / {{ return 200 "{name} path=$uri\\n"; }}
    }}
}}
"""
    return nginx_process(name, conf, workdir, LOAD_CPU)


def gateway_config(port: int, admin: int, backend_ports: dict[str, int]) -> str:
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in backend_ports.values())
    return f"""\
virtualGateway:
  virtualGatewayName: soak-gw
  spec:
    listeners:
      - portMapping: {{port: {port}, protocol: http}}
gatewayRoutes:
  - gatewayRouteName: soak
    spec:
      httpRoute:
        match: {{prefix: /soak}}
        action:
          target: {{virtualService: {{virtualServiceName: {SERVICE}}}}}
virtualServices:
  - virtualServiceName: {SERVICE}
    protocol: http
    endpoints: [{endpoints}]
    healthCheck: {{protocol: http, path: /health, intervalMillis: 5000, timeoutMillis: 2000,
                  healthyThreshold: 2, unhealthyThreshold: 2}}
    outlierDetection: {{maxServerErrors: 5, interval: {{value: 1, unit: s}},
                        baseEjectionDuration: {{value: 5, unit: s}}, maxEjectionPercent: 50}}
    retryPolicy: {{maxRetries: 2, perRetryTimeout: {{value: 1, unit: s}},
                   httpRetryEvents: [server-error, gateway-error, stream-error],
                   tcpRetryEvents: [connection-error]}}
gateway:
  admin: {{address: 127.0.0.1, port: {admin}}}
  workers: 1
  drain: {{delaySeconds: 0, timeoutSeconds: 2}}
"""


def scrape(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        m = re.match(r"gateway_([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m is None:
            continue
        for name in (m.group(1), m.group(1).removesuffix("_total")):
            if name in out:
                out[name] += float(m.group(2))
                break
    return out


def h2load(port: int, connections: int, duration: float, rps_per_client: float | None,
           workdir: Path, tag: str) -> h2load_output.H2LoadResult:
    log = workdir / f"h2load-{tag}.log"
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "--h1", "-c", str(connections),
            "-D", f"{duration:g}", "--warm-up-time", "1", "--log-file", str(log)]
    if rps_per_client is not None:
        argv += ["--rps", f"{rps_per_client:.2f}"]
    argv.append(f"http://127.0.0.1:{port}/soak/item")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    (workdir / f"h2load-{tag}.out").write_text(done.stdout + done.stderr)
    return h2load_output.parse(done.stdout, log.read_text())


class Flapper(threading.Thread):
    """Kills one backend every `every` seconds and starts it again `down_for` later."""

    def __init__(self, proc: ManagedProcess, port: int, every: float, down_for: float):
        super().__init__(daemon=True)
        self.proc, self.port, self.every, self.down_for = proc, port, every, down_for
        self.stop_flag = threading.Event()
        self.flaps = 0

    def run(self) -> None:
        while not self.stop_flag.wait(self.every - self.down_for):
            # SIGKILL, not a graceful stop: in-flight requests die with their connections.
            child = self.proc.proc
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            self.proc.proc = None
            self.flaps += 1
            if self.stop_flag.wait(self.down_for):
                break
            self.proc.start()
        if self.proc.proc is None:
            self.proc.start()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--load", type=float, default=0.8, help="share of the measured capacity")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--flap-every", type=float, default=4.0)
    p.add_argument("--down-for", type=float, default=2.0)
    a = p.parse_args()
    if not 0 < a.down_for < a.flap_every:
        p.error("--down-for must be positive and shorter than --flap-every")
    ensure_debian_tools(need_nginx=True)
    ensure_h2load()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = REPO / "loadtest" / ".work" / f"soak-{stamp}"
    workdir.mkdir(parents=True)
    ports = {name: free_port() for name in BACKENDS}
    backends = {name: backend(workdir, name, port) for name, port in ports.items()}
    gport, admin = free_port(), free_port()
    conf = workdir / "gateway.yaml"
    conf.write_text(gateway_config(gport, admin, ports))
    gw = ManagedProcess("gateway", [gateway_command(REPO), "run", "-c", str(conf)],
                        workdir / "gateway.log", PROXY_CPU)
    procs = [*backends.values(), gw]
    try:
        for name, proc in backends.items():
            proc.start()
            wait_for_port(ports[name], 10, proc)
        gw.start()
        wait_for_port(gport, 20, gw)
        time.sleep(1.0)   # the first health checks make every endpoint healthy
        status, body = http_get(gport, "/soak/check")
        if status != 200 or b"path=/check" not in body:
            raise RuntimeError(f"sanity request through the gateway got {status} {body[:80]!r}")
        capacity = h2load(gport, a.connections, 5, None, workdir, "capacity")
        rate = capacity.requests_per_sec * a.load
        print(f"capacity: {capacity.requests_per_sec:,.0f} req/s flat out; "
              f"soak at {a.load:.0%} = {rate:,.0f} req/s for {a.duration:.0f} s, "
              f"{FLAPPER} killed every {a.flap_every:g} s for {a.down_for:g} s", flush=True)
        before = scrape(admin)
        flapper = Flapper(backends[FLAPPER], ports[FLAPPER], a.flap_every, a.down_for)
        flapper.start()
        try:
            soak = h2load(gport, a.connections, a.duration, rate / a.connections, workdir, "soak")
        finally:
            flapper.stop_flag.set()
            flapper.join()
        after = scrape(admin)
    finally:
        for proc in reversed(procs):
            proc.stop()
    delta = {k: after[k] - before[k] for k in COUNTERS}
    lost = soak.requests - soak.status_classes.get("2xx", 0)
    unexplained = max(0, lost - int(delta["upstream_rq_retry_overflow"]))
    rows = [
        ("requests finished (h2load, measured)", f"{soak.requests:,}"),
        ("rate achieved", f"{soak.requests_per_sec:,.0f} req/s (target {rate:,.0f})"),
        ("2xx", f"{soak.status_classes.get('2xx', 0):,}"),
        ("5xx", f"{soak.status_classes.get('5xx', 0):,}"),
        ("errored / timed out streams", f"{soak.errored:,} / {soak.timeout:,}"),
        ("**lost (not 2xx)**", f"**{lost:,}**"),
        ("lost beyond the retry budget's refusals", f"{unexplained:,}"),
        ("p50 / p99 / max", f"{soak.latency_ms['p50']:.2f} / {soak.latency_ms['p99']:.2f} / "
                            f"{soak.latency_ms['max']:.2f} ms"),
        (f"flaps of {FLAPPER}", str(flapper.flaps)),
        *((f"gateway {k}", f"{v:,.0f}") for k, v in delta.items()),
    ]
    print("\n| soak | value |\n|---|---:|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    results = REPO / "loadtest" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"soak-{stamp}.json"
    out.write_text(json.dumps({"settings": vars(a), "capacity_rps": capacity.requests_per_sec,
                               "target_rps": rate, "soak": soak.to_json(), "flaps": flapper.flaps,
                               "lost": lost, "lost_beyond_budget": unexplained,
                               "gateway_counters": delta}, indent=1))
    print(f"\nJSON: {out}\nlogs: {workdir}")
    return 0 if unexplained == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
