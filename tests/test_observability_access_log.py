"""Access-log formatting, validation and file output."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from gateway.config.model import AccessLog
from gateway.observability.access_log import (DEFAULT_FORMAT, AccessLogger, FormatError,
                                              check_format, compile_format)
from gateway.observability.stats import Stats

# 2026-11-22T05:16:00.123Z
START = 1795324560.123


def exchange(**over) -> SimpleNamespace:
    ex = SimpleNamespace(
        start_time=START, duration=0.0429, response_duration=0.0311,
        method="GET", original_path="/api/v1/items?x=1", path="/v1/items?x=1",
        protocol="HTTP/1.1",
        request_headers=[(b"host", b"shop.example.com:8443"), (b"user-agent", b"curl/8.5"),
                         (b"x-request-id", b"abc-123"), (b"accept", b"text/html"),
                         (b"accept", b"application/json")],
        response_headers=[(b"Content-Type", b"application/json"),
                          (b"x-envoy-upstream-service-time", b"31")],
        trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"fine")],
        status=200, response_flags="-", bytes_received=12, bytes_sent=345,
        upstream_host="10.0.1.7:8080", cluster="items.local", route_name="items-route",
        downstream_remote=("192.0.2.10", 51234), downstream_local=("10.0.0.5", 8443),
        local_reply_body=None, requested_server_name="shop.example.com",
        upstream_failure_reason=None, grpc_status=None,
    )
    for k, v in over.items():
        setattr(ex, k, v)
    return ex


def render(fmt: str, **over) -> str:
    return "".join(g(exchange(**over)) for g in compile_format(fmt))


def logger_for(tmp_path, **kw) -> AccessLogger:
    return AccessLogger(AccessLog(path=str(tmp_path / "access.log"), **kw))


# ------------------------------------------------------------------ operators

@pytest.mark.parametrize("fmt, expected", [
    ("%START_TIME%", "2026-11-22T05:16:00.123Z"),
    ("%REQ(:METHOD)%", "GET"),
    ("%REQ(USER-AGENT)%", "curl/8.5"),
    ("%REQ(user-agent)%", "curl/8.5"),
    ("%REQ(ACCEPT)%", "text/html,application/json"),
    ("%REQ(X-MISSING?USER-AGENT)%", "curl/8.5"),
    ("%REQ(X-REQUEST-ID?USER-AGENT)%", "abc-123"),
    ("%REQ(X-MISSING?X-ALSO-MISSING)%", "-"),
    ("%REQ(USER-AGENT):4%", "curl"),
    ("%REQ(:AUTHORITY)%", "shop.example.com:8443"),
    ("%RESP(CONTENT-TYPE)%", "application/json"),
    ("%RESP(content-type):4%", "appl"),
    ("%RESP(X-NOPE)%", "-"),
    ("%TRAILER(GRPC-MESSAGE)%", "fine"),
    ("%RESPONSE_CODE%", "200"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%BYTES_RECEIVED%", "12"),
    ("%BYTES_SENT%", "345"),
    ("%DURATION%", "42"),
    ("%RESPONSE_DURATION%", "31"),
    ("%PROTOCOL%", "HTTP/1.1"),
    ("%UPSTREAM_HOST%", "10.0.1.7:8080"),
    ("%UPSTREAM_CLUSTER%", "items.local"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "192.0.2.10:51234"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "192.0.2.10"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.5:8443"),
    ("%REQUESTED_SERVER_NAME%", "shop.example.com"),
    ("%ROUTE_NAME%", "items-route"),
    ("%LOCAL_REPLY_BODY%", "-"),
    ("%GRPC_STATUS%", "OK"),      # from the trailers
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
    ("100%% sure", "100% sure"),
    ("no operators", "no operators"),
])
def test_operator(fmt, expected):
    assert render(fmt) == expected


def test_path_is_as_forwarded_and_original_path_only_after_rewrite():
    assert render("%REQ(:PATH)%") == "/v1/items?x=1"
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH)%") == "/api/v1/items?x=1"
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%") == "/api/v1/items?x=1"
    same = dict(original_path="/a?b", path="/a?b")
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH)%", **same) == "-"
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", **same) == "/a?b"


def test_client_sent_original_path_header_is_ignored():
    hdrs = [(b"x-envoy-original-path", b"/forged")]
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH)%", request_headers=hdrs,
                  original_path="/a", path="/a") == "-"


def test_never_forwarded_request_logs_the_received_path():
    assert render("%REQ(:PATH)%", path=None, original_path="/nowhere") == "/nowhere"
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH)%", path=None, original_path="/nowhere") == "-"


def test_authority_prefers_h2_pseudo_header():
    hdrs = [(b":authority", b"h2.example"), (b"host", b"h1.example")]
    assert render("%REQ(:AUTHORITY)%", request_headers=hdrs) == "h2.example"


def test_missing_values_render_dash():
    fmt = ("%RESPONSE_DURATION% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% "
           "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %REQUESTED_SERVER_NAME% "
           "%RESP(CONTENT-TYPE)% %TRAILER(GRPC-STATUS)% %PROTOCOL%")
    out = render(fmt, response_duration=None, upstream_host=None, cluster=None, route_name=None,
                 downstream_remote=None, downstream_local=None, requested_server_name=None,
                 response_headers=None, trailers=None, protocol=None)
    assert out == " ".join(["-"] * 10)


def test_no_response_code_is_zero_like_envoy():
    assert render("%RESPONSE_CODE%", status=0) == "0"


def test_empty_header_value_is_empty_not_dash():
    assert render("[%REQ(X-EMPTY)%]", request_headers=[(b"x-empty", b"")]) == "[]"


def test_flags_local_reply_and_failure_reason():
    out = render("%RESPONSE_FLAGS%|%LOCAL_REPLY_BODY%|%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                 response_flags="UF,URX", local_reply_body="no healthy upstream\n",
                 upstream_failure_reason="connection refused")
    assert out == "UF,URX|no healthy upstream|connection refused"


def test_ipv6_addresses():
    remote = ("2001:db8::1", 4000)
    assert render("%DOWNSTREAM_REMOTE_ADDRESS%", downstream_remote=remote) == "[2001:db8::1]:4000"
    assert render("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                  downstream_remote=remote) == "2001:db8::1"


@pytest.mark.parametrize("fmt, expected", [
    ("%GRPC_STATUS%", "Unavailable"),
    ("%GRPC_STATUS(CAMEL_STRING)%", "Unavailable"),
    ("%GRPC_STATUS(SNAKE_STRING)%", "UNAVAILABLE"),
    ("%GRPC_STATUS(NUMBER)%", "14"),
])
def test_grpc_status(fmt, expected):
    assert render(fmt, grpc_status="14") == expected


def test_grpc_status_outside_the_table_is_printed_as_is():
    assert render("%GRPC_STATUS%", grpc_status="99") == "99"


def test_custom_start_time():
    assert render("%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)%") == \
        "2026/11/22 05:16:00.123 1795324560"
    assert render("%START_TIME(%6f|%f|%%s)%") == "123000|123000000|%s"


def test_start_time_milliseconds_do_not_drift_below():
    # 0.123 is not exact in binary; truncating naively would print .122
    assert render("%START_TIME%", start_time=1795324560.123) == "2026-11-22T05:16:00.123Z"
    assert render("%START_TIME%", start_time=1795324560.0) == "2026-11-22T05:16:00.000Z"


def test_non_utf8_header_bytes_are_kept_visible():
    assert render("%REQ(X-B)%", request_headers=[(b"x-b", b"a\xffb")]) == "a\\xffb"


def test_truncation_applies_to_either_alternative():
    assert render("%REQ(X-MISSING?X-REQUEST-ID):3%") == "abc"
    assert render("%REQ(USER-AGENT):0%") == ""


# ----------------------------------------------------------------- validation

@pytest.mark.parametrize("fmt, needle", [
    ("%FOO%", "unknown operator %FOO%"),
    ("a %START_TIME% %BOGUS_THING(x)%", "unknown operator %BOGUS_THING%"),
    ("%REQ()%", "needs a header name"),
    ("%REQ%", "needs a header name"),
    ("%REQ(A?B?C)%", "at most one alternative"),
    ("%REQ(bad header)%", "not a valid header name"),
    ("%DURATION(x)%", "takes no argument"),
    ("%DURATION:5%", "length limit applies only"),
    ("%GRPC_STATUS(LOUD)%", "expected CAMEL_STRING"),
    ("100% sure", "malformed operator at position 3"),
    ("%REQ(USER-AGENT", "malformed operator"),
    ("trailing %", "malformed operator"),
    ("%req(user-agent)%", "malformed operator"),
])
def test_bad_formats_are_rejected(fmt, needle):
    msg = check_format(fmt)
    assert msg is not None and needle in msg, msg
    with pytest.raises(FormatError):
        compile_format(fmt)


def test_good_formats_pass_check():
    assert check_format(DEFAULT_FORMAT) is None
    assert check_format("%REQ(X-A?X-B):10% %%") is None


def test_logger_rejects_bad_json_value_naming_the_key(tmp_path):
    with pytest.raises(FormatError, match="'code'.*%NOPE%"):
        logger_for(tmp_path, json_format=(("code", "%NOPE%"),))


# ------------------------------------------------------------------ lines

def test_default_line(tmp_path):
    lg = logger_for(tmp_path)
    hdrs = [(b"host", b"shop.example.com"), (b"user-agent", b"curl/8.5"),
            (b"x-forwarded-for", b"198.51.100.1"), (b"x-request-id", b"r-1")]
    line = lg.format(exchange(request_headers=hdrs))
    assert line == ('[2026-11-22T05:16:00.123Z] "GET /api/v1/items?x=1 HTTP/1.1" 200 - 12 345 42 '
                    '31 "198.51.100.1" "curl/8.5" "r-1" "shop.example.com" "10.0.1.7:8080"\n')
    lg.close()


def test_default_line_for_a_no_route_reply(tmp_path):
    lg = logger_for(tmp_path)
    line = lg.format(exchange(path=None, original_path="/nope", status=404, response_flags="NR",
                              upstream_host=None, response_headers=[], response_duration=None,
                              request_headers=[]))
    assert line == ('[2026-11-22T05:16:00.123Z] "GET /nope HTTP/1.1" 404 NR 12 345 42 '
                    '- "-" "-" "-" "-" "-"\n')
    lg.close()


def test_text_newline_appended_only_when_missing(tmp_path):
    a = logger_for(tmp_path, text_format="%RESPONSE_CODE%")
    b = logger_for(tmp_path, text_format="%RESPONSE_CODE%\n")
    assert a.format(exchange()) == "200\n"
    assert b.format(exchange()) == "200\n"
    a.close(); b.close()


def test_json_line_keeps_key_order_and_string_values(tmp_path):
    lg = logger_for(tmp_path, json_format=(("status", "%RESPONSE_CODE%"),
                                           ("agent", "%REQ(USER-AGENT)%"),
                                           ("host", "%UPSTREAM_HOST%"),
                                           ("quote", 'say "%REQ(X-Q)%"'),
                                           ("bytes", "%BYTES_SENT%")))
    line = lg.format(exchange(upstream_host=None, request_headers=[(b"x-q", b'a"\\b'),
                                                                   (b"user-agent", b"ua")]))
    assert line.endswith("}\n") and line.count("\n") == 1
    obj = json.loads(line)
    assert list(obj) == ["status", "agent", "host", "quote", "bytes"]
    assert obj == {"status": "200", "agent": "ua", "host": "-", "quote": 'say "a"\\b"',
                   "bytes": "345"}
    lg.close()


# ------------------------------------------------------------------ writing

def test_log_buffers_until_flush_then_appends(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("existing\n")
    lg = AccessLogger(AccessLog(path=str(path), text_format="%RESPONSE_CODE% %REQ(:PATH)%"))
    lg.log(exchange(status=200))
    lg.log(exchange(status=503, path="/x"))
    assert path.read_text() == "existing\n"        # nothing before flush
    lg.flush()
    assert path.read_text() == "existing\n200 /v1/items?x=1\n503 /x\n"
    lg.flush()                                      # empty buffer: no-op
    lg.log(exchange(status=404))
    lg.close()                                      # close flushes
    assert path.read_text().splitlines()[-1] == "404 /v1/items?x=1"


def test_log_flushes_by_itself_past_64k(tmp_path):
    path = tmp_path / "access.log"
    lg = AccessLogger(AccessLog(path=str(path), text_format="%REQ(X-PAD)%"))
    pad = b"p" * 1000
    for _ in range(70):
        lg.log(exchange(request_headers=[(b"x-pad", pad)]))
    written = path.read_text()
    assert 64 * 1024 < len(written) < 70 * 1001
    assert written.count("\n") == len(written) // 1001
    lg.close()
    assert path.read_text().count("\n") == 70


def test_write_error_is_counted_and_line_dropped(tmp_path):
    stats = Stats()
    path = tmp_path / "access.log"
    lg = AccessLogger(AccessLog(path=str(path), text_format="%RESPONSE_CODE%"), stats=stats)
    lg.log(exchange())
    lg.flush()
    # A descriptor that refuses writes stands in for a full disk or a dead pipe.
    os.close(lg._fd)
    lg._fd = os.open(str(path), os.O_RDONLY)
    lg.log(exchange())
    lg.log(exchange())
    lg.flush()                                      # must not raise
    assert lg.write_errors == 2
    assert stats.access_log_write_errors == 2
    assert path.read_text() == "200\n"
    lg.flush()
    lg.close()


def test_logging_after_close_is_counted_not_raised(tmp_path):
    lg = logger_for(tmp_path)
    lg.close()
    lg.log(exchange())
    lg.flush()
    assert lg.write_errors == 1


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "access.log"
    lg = AccessLogger(AccessLog(path=str(path), text_format="%RESPONSE_CODE%"))
    lg.log(exchange(status=201))
    os.rename(path, tmp_path / "access.log.1")
    lg.reopen()                                     # flushes into the rotated file first
    lg.log(exchange(status=202))
    lg.close()
    assert (tmp_path / "access.log.1").read_text() == "201\n"
    assert path.read_text() == "202\n"


def test_unopenable_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot open access log"):
        AccessLogger(AccessLog(path=str(tmp_path / "no" / "such" / "dir.log")))


def test_dev_stdout_works(capfd):
    lg = AccessLogger(AccessLog(path="/dev/stdout", text_format="hello %RESPONSE_CODE%"))
    lg.log(exchange())
    lg.close()
    assert capfd.readouterr().out == "hello 200\n"


def test_grpc_status_from_the_backend_trailers_or_a_trailers_only_head():
    # The backend's status, when the gateway did not answer itself.
    assert render("%GRPC_STATUS(NUMBER)%") == "0"
    assert render("%GRPC_STATUS%", trailers=None,
                  response_headers=[(b"content-type", b"application/grpc"),
                                    (b"grpc-status", b"12")]) == "Unimplemented"
    assert render("%GRPC_STATUS%", trailers=None) == "-"
