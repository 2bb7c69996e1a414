"""The routing memo (Exchange._route): repeated requests reuse the routing decision, and
nothing the memo keys on too coarsely can send a request to the wrong route."""
from __future__ import annotations

import json

import aiohttp

from gateway.proxy import exchange
from harness import echo_backend, free_port, gateway_doc, route, running_gateway, service


async def fetch(session, port, path, headers=None):
    async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        body = await r.read()
        return r.status, (json.loads(body) if r.status == 200 else body)


def host_and_header_doc(gport, bport):
    return gateway_doc(
        gport,
        [route("v2", "/products", "v2.local", headers=[{"name": "x-version", "match": {"exact": "v2"}}]),
         route("v1", "/products", "v1.local"),
         route("shop", "/products", "shop.local", hostname={"exact": "shop.example.com"})],
        [service("v1.local", bport), service("v2.local", bport), service("shop.local", bport)])


async def test_repeated_target_is_routed_by_headers_every_time(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, host_and_header_doc(gport, bport)) as gw, \
            aiohttp.ClientSession() as s:
        seen = []
        for headers in (None, {"x-version": "v2"}, None, {"x-version": "v2"}, {"x-version": "v3"}):
            status, info = await fetch(s, gport, "/products/1", headers)
            assert status == 200
            seen.append(info["host"])
        assert seen == ["v1.local", "v2.local", "v1.local", "v2.local", "v1.local"]
        # The default host group tests a header: nothing of it was memoised.
        assert not gw.contexts[0].decisions


async def test_memo_keys_on_host_method_and_query(tmp_path):
    gport = free_port()
    async with echo_backend() as bport, aiohttp.ClientSession() as s:
        doc = gateway_doc(
            gport,
            [route("shop", "/products", "shop.local", hostname={"exact": "shop.example.com"}),
             route("post", "/products", "post.local", hostname={"exact": "api.example.com"},
                   method="POST"),
             route("api", "/products", "api.local", hostname={"exact": "api.example.com"},
                   queryParameters=[{"name": "v", "match": {"exact": "2"}}])],
            [service("shop.local", bport), service("post.local", bport), service("api.local", bport)])
        async with running_gateway(tmp_path, doc) as gw:
            for _ in range(2):   # the second round is served from the memo
                _, info = await fetch(s, gport, "/products/1", {"Host": "shop.example.com"})
                assert (info["host"], info["path"]) == ("shop.local", "/1")
                _, info = await fetch(s, gport, "/products/1?v=2", {"Host": "api.example.com"})
                assert (info["host"], info["path"]) == ("api.local", "/1?v=2")
                status, _ = await fetch(s, gport, "/products/1", {"Host": "api.example.com"})
                assert status == 404
                async with s.post(f"http://127.0.0.1:{gport}/products/1",
                                  headers={"Host": "api.example.com"}) as r:
                    assert json.loads(await r.read())["host"] == "post.local"
            # Misses (404s) are not remembered; the three routed requests are.
            assert len(gw.contexts[0].decisions) == 3


async def test_memo_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(exchange, "DECISION_MEMO_SIZE", 8)
    gport = free_port()
    async with echo_backend() as bport, aiohttp.ClientSession() as s:
        doc = gateway_doc(gport, [route("p", "/p", "svc.local")], [service("svc.local", bport)])
        async with running_gateway(tmp_path, doc) as gw:
            decisions = gw.contexts[0].decisions
            for i in range(30):
                _, info = await fetch(s, gport, f"/p/{i}")
                assert info["path"] == f"/{i}"
                assert len(decisions) <= 8
            long_target = "/p/" + "x" * exchange.MEMO_TARGET_MAX
            decisions.clear()
            _, info = await fetch(s, gport, long_target)
            assert info["path"] == long_target[2:]
            assert not decisions   # long targets are routed but never memoised
