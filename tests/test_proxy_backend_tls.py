"""TLS from the gateway to backends, through the whole request path."""
from __future__ import annotations

import ssl

import aiohttp
from aiohttp import web

from gateway.certs import issue, make_ca
from harness import free_port, gateway_doc, route, running_gateway, service


async def tls_backend(tmp_path, ca, *, name="backend", require_client_cert_from=None):
    server = issue(ca, "backend.local", dns=("backend.local",), ips=("127.0.0.1",))
    cert, key = server.write(tmp_path, f"server-{name}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if require_client_cert_from is not None:
        ca_file, _ = require_client_cert_from.write(tmp_path, "client-ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca_file)

    async def handler(request):
        peer = request.transport.get_extra_info("peercert")
        return web.json_response({"name": name, "path": request.path_qs,
                                  "client_cert": bool(peer)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner, port


def tls_service(name, port, ca_file, **policy):
    return service(name, port, tls={"validation": {"trust": {"file": {"certificateChain": ca_file}}},
                                    **policy})


async def test_requests_reach_a_tls_backend_over_pooled_connections(tmp_path):
    ca = make_ca("mesh CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    runner, bport = await tls_backend(tmp_path, ca)
    gport = free_port()
    doc = gateway_doc(gport, [route("r", "/", "backend.local")],
                      [tls_service("backend.local", bport, ca_file)])
    try:
        async with running_gateway(tmp_path, doc) as gw:
            async with aiohttp.ClientSession() as s:
                for i in range(5):
                    async with s.get(f"http://127.0.0.1:{gport}/x{i}") as r:
                        assert r.status == 200
                        assert (await r.json())["path"] == f"/x{i}"
            stats = gw.stats.cluster("backend.local")
            assert stats.upstream_cx_total == 1 and stats.upstream_cx_reused == 4
    finally:
        await runner.cleanup()


async def test_untrusted_backend_certificate_is_503(tmp_path):
    mesh_ca, other_ca = make_ca("mesh CA"), make_ca("someone else")
    ca_file, _ = mesh_ca.write(tmp_path, "ca")
    runner, bport = await tls_backend(tmp_path, other_ca)
    gport = free_port()
    doc = gateway_doc(gport, [route("r", "/", "backend.local")],
                      [tls_service("backend.local", bport, ca_file)])
    try:
        async with running_gateway(tmp_path, doc):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{gport}/x") as r:
                    assert r.status == 503
                    assert "upstream connect error" in await r.text()
    finally:
        await runner.cleanup()


async def test_backend_san_list_mismatch_is_503(tmp_path):
    ca = make_ca("mesh CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    runner, bport = await tls_backend(tmp_path, ca)
    gport = free_port()
    policy = {"validation": {"trust": {"file": {"certificateChain": ca_file}},
                             "subjectAlternativeNames": {"match": {"exact": ["other.local"]}}}}
    doc = gateway_doc(gport, [route("r", "/", "backend.local")],
                      [service("backend.local", bport, tls=policy)])
    try:
        async with running_gateway(tmp_path, doc):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{gport}/x") as r:
                    assert r.status == 503
    finally:
        await runner.cleanup()


async def test_mutual_tls_to_backend_with_gateway_default_policy(tmp_path):
    ca = make_ca("mesh CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    client = issue(ca, "gateway", uris=("spiffe://mesh/gateway",), client=True, server=False)
    client_cert, client_key = client.write(tmp_path, "gateway-client")
    runner, bport = await tls_backend(tmp_path, ca, require_client_cert_from=ca)
    gport = free_port()
    doc = gateway_doc(gport, [route("r", "/", "backend.local")], [service("backend.local", bport)])
    doc["virtualGateway"]["spec"]["backendDefaults"] = {"clientPolicy": {"tls": {
        "validation": {"trust": {"file": {"certificateChain": ca_file}}},
        "certificate": {"file": {"certificateChain": client_cert, "privateKey": client_key}}}}}
    try:
        async with running_gateway(tmp_path, doc):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{gport}/x") as r:
                    assert r.status == 200
                    assert (await r.json())["client_cert"] is True
    finally:
        await runner.cleanup()
