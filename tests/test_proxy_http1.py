"""The HTTP/1.1 request path end to end: real client sockets, gateway, real backends."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from harness import (echo_backend, free_port, gateway_doc, raw_backend, raw_exchange, route,
                     running_gateway, service)


def basic_doc(gport, bport, **kw):
    return gateway_doc(
        gport,
        [route("products", "/products", "product-catalog.local"),
         route("orders", "/orders", "orders.local",
               rewrite={"prefix": {"defaultPrefix": "DISABLED"},
                        "hostname": {"defaultTargetHostname": "DISABLED"}})],
        [service("product-catalog.local", bport), service("orders.local", bport)], **kw)


async def get(port, path, headers=None, method="GET", data=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{port}{path}", headers=headers,
                             data=data) as r:
            return r.status, r.headers, await r.read()


async def test_default_rewrites_host_and_prefix(tmp_path):
    gport = free_port()
    async with echo_backend("catalog") as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        status, _, body = await get(gport, "/products/item123?x=1")
        assert status == 200
        info = __import__("json").loads(body)
        assert info["path"] == "/item123?x=1"
        assert info["host"] == "product-catalog.local"
        headers = dict(info["headers"])
        assert headers["x-envoy-original-path"] == "/products/item123?x=1"


async def test_disabled_rewrites_keep_host_and_path(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        status, _, body = await get(gport, "/orders/7?y=2", headers={"Host": "shop.example.com:8443"})
        info = __import__("json").loads(body)
        assert status == 200
        assert info["path"] == "/orders/7?y=2"
        assert info["host"] == "shop.example.com:8443"


async def test_forwarding_headers_and_hop_by_hop(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        request = (b"GET /products/a HTTP/1.1\r\nHost: h\r\n"
                   b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                   b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 10.1.2.3\r\n"
                   b"X-Forwarded-Proto: https\r\nX-Request-Id: abc-123\r\nX-Keep: yes\r\n"
                   b"X-Forwarded-Client-Cert: Hash=forged\r\n\r\n")
        responses, _, _ = await raw_exchange(gport, request, until_closed=False)
        info = responses[0].json()
        headers = dict(info["headers"])
        for hop in ("x-secret-hop", "keep-alive", "proxy-connection", "x-forwarded-client-cert"):
            assert hop not in headers
        assert headers.get("connection", "keep-alive").lower() == "keep-alive"
        assert headers["te"] == "trailers"
        assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-port"] == str(gport)
        assert headers["x-request-id"] == "abc-123"
        assert headers["x-keep"] == "yes"


async def test_request_id_generated_when_absent(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        ids = set()
        for _ in range(3):
            _, _, body = await get(gport, "/products/a")
            rid = dict(__import__("json").loads(body)["headers"])["x-request-id"]
            assert len(rid) == 36 and rid.count("-") == 4
            ids.add(rid)
        assert len(ids) == 3


async def test_keep_alive_reuses_upstream_connection(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)) as gw:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.get(f"http://127.0.0.1:{gport}/products/{i}") as r:
                    assert r.status == 200
                    await r.read()
        stats = gw.stats.cluster("product-catalog.local")
        assert stats.upstream_rq_total == 20
        assert stats.upstream_cx_total == 1
        assert stats.upstream_cx_reused == 19
        assert gw.stats.listener(gport).downstream_cx_total == 1


async def test_pipelined_requests_answered_in_order(tmp_path):
    gport = free_port()

    async def slow_first(request):
        from aiohttp import web
        if request.path == "/slow":
            await asyncio.sleep(0.3)
        return web.Response(text=request.path)

    async with echo_backend(handler=slow_first) as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport)):
        request = b"".join(b"GET /products/%s HTTP/1.1\r\nHost: x\r\n\r\n" % p
                           for p in (b"slow", b"a", b"nope-not-routed", b"b"))
        request = request.replace(b"/products/nope-not-routed", b"/unrouted")
        responses, _, _ = await raw_exchange(gport, request, until_closed=False, count=4)
        assert [r.status for r in responses] == [200, 200, 404, 200]
        assert [r.body for r in responses if r.status == 200] == [b"/slow", b"/a", b"/b"]


async def test_head_request(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        request = (b"HEAD /products/a HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /products/b HTTP/1.1\r\nHost: x\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", gport)
        writer.write(request)
        data = b""
        async with asyncio.timeout(5):
            while data.count(b"HTTP/1.1 200") < 2 or not data.rstrip().endswith(b"}"):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
        writer.close()
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length:" in head.lower()
        # The HEAD answer carries no body: the next bytes are the GET's response.
        assert rest.startswith(b"HTTP/1.1 200")
        assert b'"path": "/b"' in rest


async def test_chunked_request_and_response(tmp_path):
    gport = free_port()

    async def chunked_echo(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (body[:3], body[3:]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\nx-trailer: done\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_backend(chunked_echo) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        request = (b"POST /products/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        responses, raw, _ = await raw_exchange(gport, request, until_closed=False)
        assert responses[0].status == 200
        assert responses[0].body == b"hello world"
        assert responses[0].header("transfer-encoding") == "chunked"
        assert b"x-trailer: done" in raw


async def test_expect_100_continue(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        reader, writer = await asyncio.open_connection("127.0.0.1", gport)
        writer.write(b"POST /products/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        body = await reader.readexactly(length)
        assert b'"body_length": 5' in body
        writer.close()


async def test_informational_103_forwarded(tmp_path):
    gport = free_port()

    async def early_hints(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async with raw_backend(early_hints) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        responses, raw, _ = await raw_exchange(gport, b"GET /products/x HTTP/1.1\r\nHost: x\r\n\r\n",
                                               until_closed=False, count=2)
        assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        assert responses[-1].status == 200 and responses[-1].body == b"ok"


async def test_websocket_echo_through_gateway(tmp_path):
    gport = free_port()
    from aiohttp import web

    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo {msg.data} via {request.path} host {request.host}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async with echo_backend(routes=[("GET", "/ws", ws_handler)]) as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport)) as gw:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{gport}/products/ws") as ws:
                await ws.send_str("hi")
                assert (await ws.receive_str(timeout=5)) == "echo hi via /ws host product-catalog.local"
                payload = bytes(range(256)) * 400
                await ws.send_bytes(payload)
                assert (await ws.receive_bytes(timeout=5)) == payload[::-1]
        await asyncio.sleep(0.1)
        assert gw.stats.listener(gport).downstream_rq_upgrade == 1


async def test_no_route_is_404_with_flag(tmp_path):
    gport = free_port()
    log = tmp_path / "access.log"
    doc = basic_doc(gport, 1, access_log={"path": str(log)})
    async with running_gateway(tmp_path, doc) as gw:
        status, _, body = await get(gport, "/elsewhere")
        assert status == 404
        assert body == b"no route matched the request\n"
        gw.access_log.flush()
        line = log.read_text()
        assert '"GET /elsewhere HTTP/1.1" 404 NR' in line


async def test_connection_refused_is_503_uf(tmp_path):
    gport = free_port()
    dead = free_port()
    log = tmp_path / "access.log"
    async with running_gateway(tmp_path, basic_doc(gport, dead, access_log={"path": str(log)})) as gw:
        status, _, body = await get(gport, "/products/x")
        assert status == 503
        assert b"connection failure" in body
        gw.access_log.flush()
        assert " 503 UF " in log.read_text()
        assert gw.stats.cluster("product-catalog.local").upstream_cx_connect_fail == 1


async def test_no_endpoints_is_503_uh(tmp_path):
    gport = free_port()
    doc = gateway_doc(gport, [route("r", "/", "empty.local")],
                      [{"virtualServiceName": "empty.local", "dns": {"hostname": "nonexistent.invalid", "port": 80}}])
    async with running_gateway(tmp_path, doc):
        status, _, body = await get(gport, "/x")
        assert status == 503
        assert body == b"no healthy upstream\n"


async def test_upstream_reset_before_response_is_502(tmp_path):
    gport = free_port()

    async def reset(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async with raw_backend(reset) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        status, _, body = await get(gport, "/products/x", method="POST", data=b"x")
        assert status == 502
        assert b"reset" in body or b"termination" in body


async def test_invalid_upstream_response_is_502(tmp_path):
    gport = free_port()

    async def garbage(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
        await writer.drain()

    async with raw_backend(garbage) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        status, _, body = await get(gport, "/products/x")
        assert status == 502
        assert body == b"upstream sent an invalid HTTP response\n"


async def test_upstream_timeout_is_504(tmp_path):
    gport = free_port()

    async def stall(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async with raw_backend(stall) as bport:
        doc = gateway_doc(gport, [route("r", "/", "slow.local")],
                          [service("slow.local", bport, timeout={"perRequest": {"value": 300, "unit": "ms"}})])
        async with running_gateway(tmp_path, doc) as gw:
            loop = asyncio.get_running_loop()
            start = loop.time()
            status, _, body = await get(gport, "/x")
            elapsed = loop.time() - start
            assert status == 504
            assert body == b"upstream request timeout\n"
            assert 0.25 <= elapsed < 1.5
            assert gw.stats.cluster("slow.local").upstream_rq_timeout == 1


async def test_malformed_request_gets_400_and_close(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        responses, _, closed = await raw_exchange(gport, b"GET /products/x HTTP/1.1\r\nHost x\r\n\r\n")
        assert responses[0].status == 400
        assert responses[0].header("connection") == "close"
        assert closed


async def test_header_section_over_limit_is_431(tmp_path):
    gport = free_port()
    doc_limits = {"maxRequestHeaderBytes": 4096}
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport, limits=doc_limits)):
        request = b"GET /products/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        responses, _, closed = await raw_exchange(gport, request)
        assert responses[0].status == 431 and closed
        # Many small headers add up the same way.
        request = b"GET /products/x HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(60)) + b"\r\n"
        responses, _, closed = await raw_exchange(gport, request)
        assert responses[0].status == 431 and closed


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: -5\r\n",
    b"Content-Length: +5\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
async def test_ambiguous_framing_rejected_and_never_forwarded(tmp_path, framing):
    gport = free_port()
    received = []

    async def recorder(reader, writer):
        received.append(await reader.read(65536))
        writer.close()

    async with raw_backend(recorder) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        request = b"POST /products/x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nhello"
        responses, _, closed = await raw_exchange(gport, request)
        assert responses[0].status == 400
        assert closed
        await asyncio.sleep(0.1)
        assert received == []


async def test_stale_pooled_connection_is_retried_once(tmp_path):
    gport = free_port()
    served = []

    async def one_request_per_connection(reader, writer):
        # Answers one request keep-alive style, then closes without a word when the
        # next request arrives: the race of a backend's idle timeout.
        await reader.readuntil(b"\r\n\r\n")
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            pass
        writer.transport.abort()

    async with raw_backend(one_request_per_connection) as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport)) as gw:
        for _ in range(3):
            status, _, body = await get(gport, "/products/x")
            assert (status, body) == (200, b"ok")
        assert gw.stats.cluster("product-catalog.local").upstream_rq_retry_stale == 2
        # A POST is not replayed: the backend may have acted on it.
        status, _, _ = await get(gport, "/products/x", method="POST", data=b"x")
        assert status == 502


async def test_dns_endpoints(tmp_path):
    gport = free_port()
    async with echo_backend("dns-backend") as bport:
        doc = gateway_doc(gport, [route("r", "/", "dns.local")],
                          [{"virtualServiceName": "dns.local",
                            "dns": {"hostname": "localhost", "port": bport, "ipPreference": "IPv4_ONLY"}}])
        async with running_gateway(tmp_path, doc) as gw:
            status, _, body = await get(gport, "/x")
            assert status == 200 and b"dns-backend" in body
            endpoints = list(gw.clusters["dns.local"].endpoints())
            assert [e.label for e in endpoints] == [f"127.0.0.1:{bport}"]


async def test_round_robin_across_endpoints(tmp_path):
    gport = free_port()
    async with echo_backend("a") as pa, echo_backend("b") as pb:
        doc = gateway_doc(gport, [route("r", "/", "rr.local")], [service("rr.local", pa, pb)])
        async with running_gateway(tmp_path, doc):
            names = []
            for _ in range(6):
                _, _, body = await get(gport, "/x")
                names.append(__import__("json").loads(body)["name"])
            assert sorted(names) == ["a", "a", "a", "b", "b", "b"]
            assert names[0] != names[1]


async def test_metrics_and_ready_on_admin(tmp_path):
    gport = free_port()
    aport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport, admin_port=aport)):
        for _ in range(3):
            await get(gport, "/products/a")
        await get(gport, "/nowhere")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{aport}/metrics") as r:
                text = await r.text()
            async with s.get(f"http://127.0.0.1:{aport}/ready") as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{aport}/config") as r:
                config = await r.json()
        assert 'gateway_route_rq_total{code_class="2xx",route="products",virtual_service="product-catalog.local"} 3.0' in text
        assert 'code_class="4xx",route=""' in text
        assert "gateway_route_rq_duration_seconds_bucket" in text
        assert 'gateway_upstream_cx_reused_total{virtual_service="product-catalog.local"} 2.0' in text
        assert config["virtual_gateway"]["listeners"][0]["port"] == gport


async def test_stream_idle_timeout_is_504(tmp_path):
    gport = free_port()

    async def stall(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async with raw_backend(stall) as bport:
        doc = gateway_doc(gport, [route("r", "/", "idle.local")],
                          [service("idle.local", bport, timeout={
                              "perRequest": {"value": 0, "unit": "s"},
                              "idle": {"value": 400, "unit": "ms"}})])
        async with running_gateway(tmp_path, doc):
            status, _, body = await get(gport, "/x")
            assert status == 504
            assert body == b"upstream stream idle timeout\n"


async def test_idle_pooled_connections_expire(tmp_path):
    gport = free_port()
    async with echo_backend() as bport:
        doc = gateway_doc(gport, [route("r", "/", "svc.local")],
                          [service("svc.local", bport, timeout={"idle": {"value": 1, "unit": "s"}})])
        async with running_gateway(tmp_path, doc) as gw:
            assert (await get(gport, "/a"))[0] == 200
            stats = gw.stats.cluster("svc.local")
            assert stats.upstream_cx_idle == 1
            await asyncio.sleep(2.5)
            assert stats.upstream_cx_idle_expired == 1
            assert stats.upstream_cx_idle == 0
            assert (await get(gport, "/b"))[0] == 200
            assert stats.upstream_cx_total == 2


async def test_json_access_log(tmp_path):
    gport = free_port()
    log = tmp_path / "access.json"
    fmt = {"path": str(log), "format": {"json": [
        {"key": "status", "value": "%RESPONSE_CODE%"},
        {"key": "path", "value": "%REQ(:PATH)%"},
        {"key": "original", "value": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"},
        {"key": "route", "value": "%ROUTE_NAME%"},
        {"key": "upstream", "value": "%UPSTREAM_HOST%"},
        {"key": "cluster", "value": "%UPSTREAM_CLUSTER%"},
        {"key": "flags", "value": "%RESPONSE_FLAGS%"},
        {"key": "sent", "value": "%BYTES_SENT%"}]}}
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport, access_log=fmt)) as gw:
        _, _, body = await get(gport, "/products/item1?q=1")
        await get(gport, "/nowhere")
        gw.access_log.flush()
        lines = [__import__("json").loads(line) for line in log.read_text().splitlines()]
        assert lines[0] == {"status": "200", "path": "/item1?q=1", "original": "/products/item1?q=1",
                            "route": "products", "upstream": f"127.0.0.1:{bport}",
                            "cluster": "product-catalog.local", "flags": "-", "sent": str(len(body))}
        assert lines[1]["status"] == "404" and lines[1]["flags"] == "NR"
        assert lines[1]["route"] == "-" and lines[1]["path"] == "/nowhere"


async def test_endless_header_value_is_cut_off_with_431(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport, limits={"maxRequestHeaderBytes": 4096})):
        reader, writer = await asyncio.open_connection("127.0.0.1", gport)
        writer.write(b"GET /products/x HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        response = b""
        async with asyncio.timeout(5):
            try:
                while sent < 1024 * 1024 and not response:
                    writer.write(b"a" * 1024)
                    await writer.drain()
                    sent += 1024
                    try:
                        response = await asyncio.wait_for(reader.read(100), 0.01)
                    except asyncio.TimeoutError:
                        pass
            except ConnectionError:
                pass
        writer.close()
        assert response.startswith(b"HTTP/1.1 431")
        assert sent < 64 * 1024


async def test_slow_header_section_gets_408(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport,
                                                limits={"requestHeaderTimeoutSeconds": 1})) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gport)
        writer.write(b"GET /products/x HTTP/1.1\r\nHost: x\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 408")
        writer.close()
        # Other clients were served normally meanwhile.
        assert (await get(gport, "/products/y"))[0] == 200


async def test_idle_keep_alive_connection_closed(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport,
                                                limits={"downstreamIdleTimeoutSeconds": 1})) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gport)
        writer.write(b"GET /products/x HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert first.startswith(b"HTTP/1.1 200")
        rest = await asyncio.wait_for(reader.read(), 5)   # EOF from the gateway
        assert rest == b""
        assert gw.stats.listener(gport).downstream_cx_idle_timeout == 1


async def test_close_delimited_response_is_rechunked_or_closed(tmp_path):
    gport = free_port()

    async def until_close(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()
        writer.close()

    async with raw_backend(until_close) as bport, running_gateway(tmp_path, basic_doc(gport, bport)):
        responses, _, _ = await raw_exchange(
            gport, b"GET /products/x HTTP/1.1\r\nHost: x\r\n\r\n", until_closed=False)
        assert responses[0].header("transfer-encoding") == "chunked"
        assert responses[0].body == b"part one, part two" and responses[0].complete
        # An HTTP/1.0 client cannot take chunks: the body ends with the connection.
        responses, raw, closed = await raw_exchange(gport, b"GET /products/x HTTP/1.0\r\n\r\n")
        assert closed and raw.endswith(b"part one, part two")
        assert responses[0].header("transfer-encoding") is None


async def test_pipelined_request_keeps_its_own_connection_header(tmp_path):
    """Per-request head fields travel with the exchange, not with the connection:
    a queued request is forwarded with the hop-by-hop fields it named itself."""
    gport = free_port()

    async def echo_slow_first(request):
        from aiohttp import web
        if request.path == "/slow":
            await asyncio.sleep(0.2)
        return web.json_response({"path": request.path,
                                  "x-drop": request.headers.get("x-drop")})

    async with echo_backend(handler=echo_slow_first) as bport, \
            running_gateway(tmp_path, basic_doc(gport, bport)):
        request = (b"GET /products/slow HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /products/listed HTTP/1.1\r\nHost: x\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\n"
                   b"GET /products/plain HTTP/1.1\r\nHost: x\r\nX-Drop: 2\r\n\r\n")
        responses, _, _ = await raw_exchange(gport, request, until_closed=False, count=3)
        assert [r.json() for r in responses] == [
            {"path": "/slow", "x-drop": None},
            {"path": "/listed", "x-drop": None},
            {"path": "/plain", "x-drop": "2"}]
