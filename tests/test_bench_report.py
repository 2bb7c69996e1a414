"""The TLS tables: CPU accounting of a process group, per-CPU-second figures and goal verdicts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import bench_report  # noqa: E402
from bench_procs import group_cpu_seconds  # noqa: E402

# Parent and forked child each burn 0.6 s of CPU (not wall time: the machine may be
# busy), mark it with a file, then sleep in a group of their own.
BUSY = ("import os, sys, time\nif os.fork() == 0:\n    pass\n"
        "while time.process_time() < 0.6:\n    pass\n"
        "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\ntime.sleep(30)\n")


def test_group_cpu_counts_every_process_of_the_group(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", BUSY, str(tmp_path)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = group_cpu_seconds(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert used >= 1.1            # two processes x 0.6 s of CPU each, in 10 ms ticks
    assert used < 5.0
    assert group_cpu_seconds(2 ** 22 + 1) == 0.0   # no such group (above pid_max)


def row(rnd: int, rps: float, cpu_seconds: float, duration_s: float = 10.0) -> dict:
    return {"round": rnd, "requests_per_sec": rps, "requests": int(rps * duration_s),
            "duration_ms": duration_s * 1000, "latency_ms": {"p50": 1.0, "p99": 3.0},
            "errors": 0, "socket_errors": {}, "non_2xx_3xx": 0,
            "proxy_cpu_seconds": cpu_seconds, "proxy_cpu_share": cpu_seconds / duration_s,
            "time_wait_origin_new": 0, "tls_version": "TLSv1.3", "cipher": "X", "resumed": 0}


def results(gateway_rps: float, gateway_cpu: float) -> dict:
    def target(*rounds: dict) -> dict:
        rs = list(rounds)
        return {"status": "ok", "rounds": rs, "summary": bench_report.summarise(rs),
                "tls": {"version": "TLSv1.3", "cipher": "X"}}

    return {
        "machine": {"nproc": 2, "usable_cpus": [0, 1], "proxy_cpu": "0", "load_cpu": "1",
                    "shared_cpu": False, "loadavg_at_start": [0.1, 0.1, 0.1]},
        "settings": {"threads": 1, "connections": 50, "duration": 10, "rounds": 1, "warmup": 0},
        "workloads": {"handshake": {"targets": {
            "gateway": target(row(1, gateway_rps, gateway_cpu)),
            # nginx only half busy: the client limited it, its per-CPU rate is 2x its raw rate.
            "nginx": target(row(1, 1000, 5.0)),
            "envoy": {"status": "skipped", "reason": "failed its TLS check: boom\nmore", "rounds": [],
                      "summary": None},
        }}},
    }


def test_goal_is_judged_raw_and_per_cpu_second():
    text = bench_report.render(results(gateway_rps=900, gateway_cpu=10.0), "handshake")
    # raw 900/1000 = 0.90x; per CPU-s 900/s vs 2000/s = 0.45x
    assert "gateway >= 0.8x nginx: 0.90x raw (met), 0.45x per proxy CPU-second (NOT met)" in text
    assert "Not CPU-bound (proxy below 90% of its core): nginx." in text
    assert "| envoy | skipped |" in text and "boom … more" in text
    assert "0 of 9,000 connections resumed" in text


def test_resumed_connections_are_flagged_as_errors():
    r = results(gateway_rps=900, gateway_cpu=10.0)
    gw = r["workloads"]["handshake"]["targets"]["gateway"]
    gw["rounds"][0]["resumed"] = 7
    text = bench_report.render(r, "handshake")
    assert "**7 resumed (not full handshakes)**" in text
