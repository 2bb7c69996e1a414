"""TLS and mutual TLS on gateway listeners, through the whole request path."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess

import aiohttp
import pytest

from gateway.certs import issue, make_ca
from harness import echo_backend, free_port, gateway_doc, route, running_gateway, service


@pytest.fixture
def pki(tmp_path):
    ca = make_ca("gateway test CA")
    ca_file, _ = ca.write(tmp_path, "ca")
    server_cert, server_key = issue(ca, "gateway.local", dns=("gateway.local", "localhost"),
                                    ips=("127.0.0.1",)).write(tmp_path, "server")
    client = issue(ca, "partner", dns=("partner.example.net",), uris=("spiffe://partner/app",),
                   client=True, server=False)
    client_cert, client_key = client.write(tmp_path, "client")
    stranger_ca = make_ca("someone else")
    stranger_cert, stranger_key = issue(stranger_ca, "partner", dns=("partner.example.net",),
                                        client=True, server=False).write(tmp_path, "stranger")
    other = issue(ca, "other", dns=("other.example.net",), client=True, server=False)
    other_cert, other_key = other.write(tmp_path, "other")
    return dict(ca=ca, ca_file=ca_file, server=(server_cert, server_key),
                client=(client_cert, client_key), stranger=(stranger_cert, stranger_key),
                other=(other_cert, other_key), dir=tmp_path)


def tls_doc(gport, bport, pki, mode="STRICT", validation=False, sans=None, admin_port=0):
    doc = gateway_doc(gport, [route("r", "/", "svc.local")], [service("svc.local", bport)],
                      admin_port=admin_port)
    tls = {"mode": mode, "certificate": {"file": {"certificateChain": pki["server"][0],
                                                  "privateKey": pki["server"][1]}}}
    if validation:
        tls["validation"] = {"trust": {"file": {"certificateChain": pki["ca_file"]}}}
        if sans:
            tls["validation"]["subjectAlternativeNames"] = {"match": {"exact": sans}}
    doc["virtualGateway"]["spec"]["listeners"][0]["tls"] = tls
    return doc


def client_context(pki, cert=None):
    ctx = ssl.create_default_context(cafile=pki["ca_file"])
    if cert is not None:
        ctx.load_cert_chain(*pki[cert])
    return ctx


async def https_get(port, ctx, path="/x", headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{port}{path}", ssl=ctx, headers=headers) as r:
            return r.status, await r.json()


def backend_headers(info):
    return dict(info["headers"])


async def test_strict_listener_serves_https_and_refuses_plaintext(tmp_path, pki):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, tls_doc(gport, bport, pki)):
        status, info = await https_get(gport, client_context(pki))
        assert status == 200
        headers = backend_headers(info)
        assert headers["x-forwarded-proto"] == "https"
        assert "x-forwarded-client-cert" not in headers
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{gport}/x") as r:
                    await r.read()


async def test_permissive_listener_serves_tls_and_plaintext_on_one_port(tmp_path, pki):
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, tls_doc(gport, bport, pki, mode="PERMISSIVE")):
        status, info = await https_get(gport, client_context(pki))
        assert status == 200 and backend_headers(info)["x-forwarded-proto"] == "https"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gport}/x") as r:
                assert r.status == 200
                assert backend_headers(await r.json())["x-forwarded-proto"] == "http"


async def test_mutual_tls_passes_identity_as_xfcc(tmp_path, pki):
    gport = free_port()
    doc = tls_doc(gport, 0, pki, validation=True, sans=["spiffe://partner/app"])
    async with echo_backend() as bport:
        doc["virtualServices"] = [service("svc.local", bport)]
        async with running_gateway(tmp_path, doc):
            status, info = await https_get(gport, client_context(pki, "client"),
                                           headers={"X-Forwarded-Client-Cert": "Hash=forged"})
            assert status == 200
            xfcc = backend_headers(info)["x-forwarded-client-cert"]
            assert xfcc.startswith("Hash=")
            assert "forged" not in xfcc
            assert 'Subject="CN=partner' in xfcc
            assert "URI=spiffe://partner/app" in xfcc
            assert "DNS=partner.example.net" in xfcc


@pytest.mark.parametrize("cert", [None, "stranger", "other"],
                         ids=["no-client-certificate", "other-ca", "san-mismatch"])
async def test_mutual_tls_rejections_never_reach_the_backend(tmp_path, pki, cert):
    gport, aport = free_port(), free_port()
    seen = []

    async def counting(request):
        from aiohttp import web
        seen.append(request.path)
        return web.Response(text="ok")

    async with echo_backend(handler=counting) as bport:
        doc = tls_doc(gport, bport, pki, validation=True, sans=["partner.example.net"],
                      admin_port=aport)
        async with running_gateway(tmp_path, doc):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await https_get(gport, client_context(pki, cert))
            await asyncio.sleep(0.1)
            assert seen == []
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{aport}/metrics") as r:
                    metrics = await r.text()
            assert f'gateway_downstream_tls_handshake_error_total{{listener="{gport}"' in metrics
            assert "gateway_downstream_tls_certificate_expiry_timestamp_seconds" in metrics


async def test_expired_client_certificate_rejected(tmp_path, pki):
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    expired = issue(pki["ca"], "partner", dns=("partner.example.net",), client=True, server=False,
                    not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    pki["expired"] = expired.write(tmp_path, "expired")
    gport = free_port()
    async with echo_backend() as bport, \
            running_gateway(tmp_path, tls_doc(gport, bport, pki, validation=True)):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await https_get(gport, client_context(pki, "expired"))
        status, _ = await https_get(gport, client_context(pki, "client"))
        assert status == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_https_with_alpn(tmp_path, pki):
    gport = free_port()
    async with echo_backend() as bport, running_gateway(tmp_path, tls_doc(gport, bport, pki)):
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sv", "--cacert", pki["ca_file"], f"https://localhost:{gport}/curl",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["path"] == "/curl"
        # curl offers h2 first and the gateway takes it: the request went over HTTP/2
        assert b"ALPN: server accepted h2" in err or b"ALPN, server accepted to use h2" in err
        assert b"HTTP/2 200" in err
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sv", "--http1.1", "--cacert", pki["ca_file"], f"https://localhost:{gport}/one",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["path"] == "/one"
        assert b"ALPN: server accepted http/1.1" in err or b"ALPN, server accepted to use http/1.1" in err


async def test_rotation_under_load_loses_no_request(tmp_path, pki):
    """Replace the served certificate while new TLS connections keep arriving."""
    gport = free_port()
    doc = tls_doc(gport, 0, pki)
    async with echo_backend() as bport:
        doc["virtualServices"] = [service("svc.local", bport)]
        async with running_gateway(tmp_path, doc) as gw:
            ctx = client_context(pki)
            served = set()
            failures = []
            stop = asyncio.Event()

            async def client():
                while not stop.is_set():
                    try:
                        reader, writer = await asyncio.open_connection(
                            "127.0.0.1", gport, ssl=ctx, server_hostname="localhost")
                        cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                        served.add(cert)
                        writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        data = await reader.read()
                        if not data.startswith(b"HTTP/1.1 200"):
                            failures.append(data[:40])
                        writer.close()
                    except Exception as exc:   # every failure counts against rotation
                        failures.append(repr(exc))

            tasks = [asyncio.create_task(client()) for _ in range(4)]
            await asyncio.sleep(0.5)
            new_cert, new_key = issue(pki["ca"], "gateway.local", dns=("localhost",)).write(
                tmp_path, "rotated")
            os.replace(new_key, pki["server"][1])        # key first, then the chain:
            os.replace(new_cert, pki["server"][0])       # the reload waits for a usable pair
            deadline = asyncio.get_running_loop().time() + 8
            while len(served) < 2 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            assert failures == []
            assert len(served) == 2                       # old certificate, then the new one
            assert gw.stats.listener_tls[gport].reloads_ok >= 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_s_client_refuses_tls_1_1(tmp_path, pki):
    async def run():
        gport = free_port()
        async with echo_backend() as bport, running_gateway(tmp_path, tls_doc(gport, bport, pki)):
            def probe(*flags):
                return subprocess.run(
                    ["openssl", "s_client", "-connect", f"127.0.0.1:{gport}", "-CAfile",
                     pki["ca_file"], "-alpn", "h2,http/1.1", *flags],
                    input=b"", capture_output=True, timeout=10)
            ok = await asyncio.to_thread(probe, "-tls1_2")
            old = await asyncio.to_thread(probe, "-tls1_1")
            return ok, old
    ok, old = asyncio.run(run())
    assert b"Verify return code: 0 (ok)" in ok.stdout
    assert b"ALPN protocol: h2" in ok.stdout
    assert old.returncode != 0 or b"Cipher is (NONE)" in old.stdout


async def test_sni_picks_the_certificate_for_the_requested_name(tmp_path, pki):
    gport = free_port()
    api_cert, api_key = issue(pki["ca"], "api.example.com", dns=("api.example.com",)).write(
        tmp_path, "api")
    doc = tls_doc(gport, 0, pki)
    async with echo_backend() as bport:
        doc["virtualServices"] = [service("svc.local", bport)]
        doc["virtualGateway"]["spec"]["listeners"][0]["sniCertificates"] = [
            {"serverNames": ["api.example.com"], "certificateChain": api_cert, "privateKey": api_key}]
        async with running_gateway(tmp_path, doc):
            async def subject_for(name):
                ctx = client_context(pki)
                ctx.check_hostname = name is not None
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", gport, ssl=ctx, server_hostname=name)
                cert = writer.get_extra_info("ssl_object").getpeercert()
                writer.close()
                return dict(x[0] for x in cert["subject"])["commonName"]
            assert await subject_for("api.example.com") == "api.example.com"
            assert await subject_for("localhost") == "gateway.local"        # the default
            assert await subject_for(None) == "gateway.local"
