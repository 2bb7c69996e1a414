"""The benchmark's reading of wrk reports (units, errors, malformed output)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import wrk_output  # noqa: E402

CLEAN = """\
Running 10s test @ http://127.0.0.1:8080/bench/hello
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  401.22us  12.01ms   88.12%
    Req/Sec    33.10k     2.01k   36.50k    71.00%
  Latency Distribution
     50%  846.00us
     75%    1.61ms
     90%    2.10ms
     99%    1.02s
  329402 requests in 10.00s, 47.12MB read
Requests/sec:  32938.47
Transfer/sec:      4.71MB
"""

WITH_ERRORS = """\
Running 1m test @ http://127.0.0.1:8080/bench/hello
  1 threads and 50 connections
  Latency Distribution
     50%    2.00ms
     75%    3.00ms
     90%    4.00ms
     99%    1.50m
  1200 requests in 1.00m, 1.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 42
Requests/sec:     20.00
Transfer/sec:     17.07KB
"""


def test_units_are_normalised_to_milliseconds():
    r = wrk_output.parse(CLEAN)
    assert r.requests_per_sec == pytest.approx(32938.47)
    assert r.requests == 329402
    assert r.duration_ms == pytest.approx(10_000)
    assert r.latency_ms == pytest.approx({"p50": 0.846, "p75": 1.61, "p90": 2.10, "p99": 1020.0})
    assert r.errors == 0 and r.socket_errors == {}


def test_socket_errors_and_non_2xx_are_counted():
    r = wrk_output.parse(WITH_ERRORS)
    assert r.socket_errors == {"connect": 0, "read": 3, "write": 1, "timeout": 7}
    assert r.non_2xx_3xx == 42
    assert r.errors == 53
    assert r.latency_ms["p99"] == pytest.approx(90_000.0)
    assert r.duration_ms == pytest.approx(60_000.0)
    assert r.to_json()["errors"] == 53


def test_report_without_latency_distribution_is_rejected():
    no_latency = "\n".join(l for l in CLEAN.splitlines() if "%  " not in l)
    with pytest.raises(ValueError, match="--latency"):
        wrk_output.parse(no_latency)


def test_text_that_is_not_a_wrk_report_is_rejected():
    with pytest.raises(ValueError, match="not a wrk report"):
        wrk_output.parse("unable to connect to 127.0.0.1:1 Connection refused\n")
