"""The benchmark's reading of h2load's summary and per-request log.

Every fixture is h2load 1.52's real output (Debian nghttp2-client), captured
from runs against nginx and a small h2 server; the logs are h2load's own
--log-file rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import h2load_output  # noqa: E402

# h2load 1.52 (Debian nghttp2-client): 8 x 32 streams against nginx h2c, -D 3 --warm-up-time 1.

H2C_CLEAN = """\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 1s of warm-up time and 3s of main duration for measurements.
Warm-up started for thread #0.
progress: 12% of clients started
progress: 25% of clients started
progress: 37% of clients started
progress: 50% of clients started
progress: 62% of clients started
progress: 75% of clients started
progress: 87% of clients started
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 4.00s, 72056.33 req/s, 6.94MB/s
requests: 216169 total, 216169 started, 216169 done, 216169 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 216170 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 20.82MB (21833127) total, 13.16MB (13795901) headers (space savings 50.51%), 9.13MB (9572632) data
                     min         max         mean         sd        +/- sd
time for request:       82us     19.56ms      3.51ms      1.30ms    89.41%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    8957.24     9082.87     9006.68       42.29    75.00%
"""


# 2 clients at 20 req/s each, alternating a gRPC call (200) and an unknown path (404).

MIXED_404 = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 1s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.00s, 40.00 req/s, 6.86KB/s
requests: 80 total, 82 started, 80 done, 40 succeeded, 40 failed, 0 errored, 0 timeout
status codes: 40 2xx, 0 3xx, 40 4xx, 0 5xx
traffic: 13.71KB (14040) total, 6.04KB (6180) headers (space savings 49.51%), 9.67KB (9900) data
                     min         max         mean         sd        +/- sd
time for request:      129us      3.96ms       418us       582us    97.50%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :      19.99       19.99       19.99        0.00   100.00%
"""

MIXED_404_LOG_HEAD = (
    "1795335652957424\t200\t263\n"
    "1795335652957646\t200\t197\n"
    "1795335653008001\t404\t286\n"
    "1795335653008070\t404\t313\n"
    "1795335653057626\t200\t289\n"
    "1795335653057872\t200\t151\n"
    "1795335653107265\t404\t276\n"
    "1795335653107336\t404\t310\n"
    "1795335653158048\t200\t364\n"
    "1795335653157972\t200\t456\n"
    "1795335653207617\t404\t332\n"
    "1795335653207736\t404\t320\n"
)


# An h2 server answering 200, 503, 200 and resetting the 4th stream (INTERNAL_ERROR), in turn.

RESETS = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 15.00 req/s, 395B/s
requests: 20 total, 20 started, 20 done, 10 succeeded, 10 failed, 5 errored, 0 timeout
status codes: 10 2xx, 0 3xx, 0 4xx, 5 5xx
traffic: 395B (395) total, 66B (66) headers (space savings 91.20%), 60B (60) data
                     min         max         mean         sd        +/- sd
time for request:      490us      4.68ms       911us      1.04ms    93.33%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :      14.99       14.99       14.99        0.00   100.00%
"""

RESETS_LOG = (
    "1795335684108334\t200\t490\n"
    "1795335684159080\t503\t732\n"
    "1795335684209000\t200\t562\n"
    "1795335684258772\t-1\t574\n"
    "1795335684308598\t200\t771\n"
    "1795335684358630\t503\t657\n"
    "1795335684411806\t200\t572\n"
    "1795335684458582\t-1\t513\n"
    "1795335684508349\t200\t619\n"
    "1795335684559179\t503\t619\n"
    "1795335684608980\t200\t581\n"
    "1795335684658724\t-1\t2318\n"
    "1795335684708227\t200\t601\n"
    "1795335684759102\t503\t4678\n"
    "1795335684808976\t200\t683\n"
    "1795335684858903\t-1\t661\n"
    "1795335684908785\t200\t713\n"
    "1795335684958735\t503\t706\n"
    "1795335685009501\t200\t683\n"
    "1795335685058374\t-1\t510\n"
)


# nginx answering /hello with 200 and /moved with 301, alternately.

REDIRECTS = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 10.00 req/s, 1.78KB/s
requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 5 2xx, 5 3xx, 0 4xx, 0 5xx
traffic: 1.78KB (1820) total, 1.22KB (1250) headers (space savings 46.58%), 1.98KB (2030) data
                     min         max         mean         sd        +/- sd
time for request:      161us      2.92ms       453us       865us    90.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       9.99        9.99        9.99        0.00   100.00%
"""

REDIRECTS_LOG = (
    "1795335715504502\t200\t161\n"
    "1795335715604888\t301\t161\n"
    "1795335715704258\t200\t167\n"
    "1795335715804622\t301\t164\n"
    "1795335715904982\t200\t170\n"
    "1795335716004355\t301\t189\n"
    "1795335716104758\t200\t192\n"
    "1795335716204147\t301\t217\n"
    "1795335716304571\t200\t192\n"
    "1795335716404975\t301\t2915\n"
)


# nginx with keepalive_requests 100: GOAWAY during the warm-up, and h2load does not reconnect.

GOAWAY_IN_WARMUP = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 1s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 9.57KB (9800) headers (space savings 50.51%), 6.64KB (6800) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00     0.00%
"""


# Nothing listening on the port.

REFUSED = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"""


def test_clean_run_rate_counts_and_durations():
    r = h2load_output.parse(H2C_CLEAN)
    assert r.requests_per_sec == 72056.33
    assert r.requests == 216169
    assert r.duration_ms == 3000.0 and r.warmup_ms == 1000.0    # not "finished in 4.00s"
    assert r.errors == 0 and r.non_2xx == 0
    assert r.protocol == "h2c"
    assert r.status_classes == {"2xx": 216170, "3xx": 0, "4xx": 0, "5xx": 0}


def test_without_log_only_mean_and_max_are_known():
    lat = h2load_output.parse(H2C_CLEAN).latency_ms
    assert lat["p50"] is None and lat["p99"] is None
    assert lat["mean"] == pytest.approx(3.51) and lat["max"] == pytest.approx(19.56)


def test_resets_and_5xx_are_errors_and_stay_out_of_latency():
    r = h2load_output.parse(RESETS, RESETS_LOG)
    assert (r.succeeded, r.failed, r.errored) == (10, 10, 5)
    assert r.non_2xx == 5 and r.errors == 10       # 5 x 503 + 5 reset streams
    assert r.log_statuses == {"-1": 5, "200": 10, "503": 5}
    # The 15 answered streams, sorted (us): 490 562 572 581 601 619 619 657 683 683 706
    # 713 732 771 4678; nearest rank. The reset streams' 2318 us is not among them.
    assert r.latency_ms["p50"] == pytest.approx(0.657)
    assert r.latency_ms["p75"] == pytest.approx(0.713)
    assert r.latency_ms["p90"] == pytest.approx(0.771)
    assert r.latency_ms["p99"] == pytest.approx(4.678)
    assert r.latency_ms["max"] == pytest.approx(4.678)
    assert r.latency_ms["mean"] == pytest.approx(0.911)   # from the summary


def test_4xx_counted_once():
    r = h2load_output.parse(MIXED_404, MIXED_404_LOG_HEAD)
    assert r.requests == 80 and r.requests_per_sec == 40.0
    assert r.duration_ms == 2000.0
    assert r.errors == 40 and r.non_2xx == 40
    assert r.log_statuses == {"200": 6, "404": 6}   # the 12 rows given


def test_3xx_is_an_error_here_though_h2load_counts_it_as_success():
    r = h2load_output.parse(REDIRECTS, REDIRECTS_LOG)
    assert r.succeeded == 10 and r.failed == 0
    assert r.errors == 5 and r.non_2xx == 5
    assert r.log_statuses == {"200": 5, "301": 5}


@pytest.mark.parametrize("text", [GOAWAY_IN_WARMUP, REFUSED], ids=["goaway", "refused"])
def test_a_run_that_finished_nothing_is_an_error_not_a_zero(text: str):
    with pytest.raises(ValueError, match="no request in the measured duration"):
        h2load_output.parse(text, "")


def test_not_an_h2load_report():
    with pytest.raises(ValueError, match="not an h2load report"):
        h2load_output.parse("Running 10s test @ http://127.0.0.1:8080/\nRequests/sec: 10\n")
    truncated = H2C_CLEAN.split("status codes:")[0]
    with pytest.raises(ValueError, match="not an h2load report"):
        h2load_output.parse(truncated)


def test_empty_log_for_a_run_with_requests_is_refused():
    with pytest.raises(ValueError, match="log is empty"):
        h2load_output.parse(H2C_CLEAN, "")


def test_malformed_log_line_names_its_number():
    bad = RESETS_LOG.replace("1795335684209000\t200\t562", "1795335684209000 200 562")
    with pytest.raises(ValueError, match="line 3"):
        h2load_output.parse_log(bad)


def test_nearest_rank_percentiles():
    log = "".join(f"{1000 + i}\t200\t{i * 1000}\n" for i in range(1, 101))   # 1..100 ms
    stats = h2load_output.parse_log(log)
    assert stats.rows == 100
    assert stats.latency_ms == {"p50": 50.0, "p75": 75.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


def test_status_zero_row_is_a_completed_stream():
    # Seen at the start of the measured stretch: the response headers arrived during
    # h2load's warm-up, so the log has no status, but the stream completed normally.
    stats = h2load_output.parse_log("1795335652957424\t0\t4000\n1795335652957646\t200\t2000\n")
    assert stats.statuses == {0: 1, 200: 1}
    assert stats.latency_ms["max"] == 4.0


def test_to_json_carries_errors():
    d = h2load_output.parse(RESETS, RESETS_LOG).to_json()
    assert d["errors"] == 10 and d["non_2xx"] == 5 and d["requests"] == 20
