"""Demo backends over real sockets, and the demo's reading of config/gateway.yaml."""
from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from gateway.demo.backends import parse_spec, start_backends, stop_backends
from gateway.demo.run import BackendThread, _documents, backend_specs, curl_examples

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_each_backend_echoes_its_name_path_and_host():
    p1, p2 = free_port(), free_port()
    runners = await start_backends([("alpha", "127.0.0.1", p1), ("beta", "127.0.0.1", p2)])
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{p1}/item123?color=red&x=1",
                             headers={"Host": "alpha.local", "X-Trace": "t1"}) as r:
                assert r.status == 200
                assert r.headers["x-backend"] == "alpha"
                a = await r.json()
            async with s.post(f"http://127.0.0.1:{p2}/orders/42", data=b"hello",
                              headers={"Host": "beta.local:8080"}) as r:
                b = await r.json()
        assert (a["backend"], a["method"], a["path"], a["host"]) == \
            ("alpha", "GET", "/item123?color=red&x=1", "alpha.local")
        assert a["headers"]["X-Trace"] == "t1"
        assert (b["backend"], b["method"], b["path"], b["host"], b["body_bytes"]) == \
            ("beta", "POST", "/orders/42", "beta.local:8080", 5)
    finally:
        await stop_backends(runners)


async def test_path_is_reported_as_sent_and_repeated_headers_are_kept():
    port = free_port()
    runners = await start_backends([("gamma", "127.0.0.1", port)])
    try:
        raw = await raw_request(port, b"DELETE /a%2Fb/../c?q=%20 HTTP/1.1\r\nHost: gamma.local\r\n"
                                      b"X-Dup: one\r\nX-Dup: two\r\nConnection: close\r\n\r\n")
    finally:
        await stop_backends(runners)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["method"] == "DELETE"
    assert echo["path"] == "/a%2Fb/../c?q=%20"
    assert echo["headers"]["X-Dup"] == "one, two"


async def test_busy_port_names_the_backend_and_releases_the_others():
    p_ok = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OSError, match="'second'.*127.0.0.1:%d" % busy.getsockname()[1]):
            await start_backends([("first", "127.0.0.1", p_ok),
                                  ("second", "127.0.0.1", busy.getsockname()[1])])
    finally:
        busy.close()
    # The first backend was stopped again: its port is free.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p_ok))


def test_parse_spec():
    assert parse_spec("catalog=127.0.0.1:9001") == ("catalog", "127.0.0.1", 9001)
    for bad in ("catalog", "catalog=127.0.0.1", "=h:1", "c=h:0", "c=h:99999", "c=h:x"):
        with pytest.raises(Exception, match="NAME=HOST:PORT"):
            parse_spec(bad)


def test_demo_reads_the_walkthrough_config():
    docs = _documents(str(REPO / "config" / "gateway.yaml"))
    specs, notes = backend_specs(docs)
    assert specs == [("product-catalog", "127.0.0.1", 9001),
                     ("order-processing", "127.0.0.1", 9002),
                     ("product-catalog-v2", "127.0.0.1", 9003)]
    assert notes == []
    curls = "\n".join(curl_examples(docs))
    assert "-H 'x-version: v2' http://127.0.0.1:8080/products/item123" in curls
    assert "http://127.0.0.1:8080/orders/item123" in curls
    assert "http://127.0.0.1:9901/metrics" in curls


def test_demo_skips_endpoints_it_cannot_serve():
    docs = [{"virtualServices": [
        {"virtualServiceName": "remote.local", "endpoints": ["10.0.0.5:8080", "bogus"]},
        {"virtualServiceName": "dns.local", "dns": {"hostname": "x", "port": 1}},
        {"virtualServiceName": "canary.local",
         "weightedTargets": [{"weight": 90, "endpoints": ["127.0.0.1:7001"]},
                             {"weight": 10, "endpoints": ["[::1]:7002"]}]},
    ]}]
    specs, notes = backend_specs(docs)
    assert specs == [("canary-0", "127.0.0.1", 7001), ("canary-1", "::1", 7002)]
    assert any("10.0.0.5:8080" in n for n in notes)
    assert any("'bogus'" in n for n in notes)


async def test_backend_thread_serves_from_its_own_loop_and_stops():
    port = free_port()
    thread = BackendThread([("delta", "127.0.0.1", port)])
    thread.start()
    try:
        raw = await raw_request(port, b"GET /x HTTP/1.1\r\nHost: delta.local\r\n"
                                      b"Connection: close\r\n\r\n")
        assert b'"backend": "delta"' in raw and b'"host": "delta.local"' in raw
    finally:
        thread.stop()
    assert not thread.thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
