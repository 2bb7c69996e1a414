"""Upstream TLS: policy choice, real handshakes against a TLS backend, SAN rule, mTLS, rotation.

Connections are opened the way the pool opens them: loop.create_connection with the
compiled context and the endpoint's SNI, then verify_peer on the ssl object.
"""
from __future__ import annotations

import asyncio
import os
import ssl

import pytest
import uvloop

from gateway import certs
from gateway.config import model
from gateway.upstream.tls import (
    UpstreamTls, UpstreamTlsError, UpstreamTlsRegistry, dns_name_matches, policy_for,
    upstream_tls_for, verify_peer,
)

SERVICE = "catalog.local"


# ----------------------------------------------------------------- fixtures


class Pki:
    def __init__(self, root):
        self.root = root
        self.ca = certs.make_ca("upstream test CA")
        self.ca_path, _ = self.ca.write(root, "ca")

    def server(self, stem: str, *, ca: certs.Issued | None = None, **names) -> tuple[str, str]:
        return certs.issue(ca or self.ca, stem, **names).write(self.root, stem)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def service(tls: model.ClientPolicyTls | None = None, name: str = SERVICE) -> model.VirtualService:
    return model.VirtualService(
        name=name, protocol="http",
        groups=(model.BackendGroup(weight=1, endpoints=(model.Address("127.0.0.1", 1),)),),
        tls=tls)


def policy(trust: str, sans: tuple[str, ...] = (), *, enforce: bool = True,
           ports: tuple[int, ...] = (), cert: tuple[str, str] | None = None) -> model.ClientPolicyTls:
    return model.ClientPolicyTls(
        validation=model.TlsValidation(trust, sans), enforce=enforce, ports=ports,
        certificate=model.TlsFileCertificate(*cert) if cert else None)


class Backend:
    """A TLS HTTP/1.1 keep-alive backend that answers each request with its
    connection number and the request number on that connection."""

    def __init__(self, cert: tuple[str, str], *, client_ca: str | None = None,
                 max_version: ssl.TLSVersion | None = None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        ctx.set_alpn_protocols(["http/1.1"])
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        if max_version:
            ctx.maximum_version = max_version
        ctx.sni_callback = self._sni
        self.ctx = ctx
        self.connections = 0
        self.sni: list[str | None] = []
        self.client_cns: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def _sni(self, sslobj, name, ctx):
        self.sni.append(name)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        self.connections += 1
        number = self.connections
        peer = writer.get_extra_info("peercert")
        if peer:
            self.client_cns.append(dict(x[0] for x in peer["subject"])["commonName"])
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                served += 1
                body = f"conn={number} req={served}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


class Client(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1 client protocol (Content-Length responses only)."""

    def __init__(self):
        self.transport = None
        self.buf = b""
        self.waiter: asyncio.Future | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(rest) >= length and self.waiter and not self.waiter.done():
            self.buf = rest[length:]
            self.waiter.set_result(rest[:length].decode())

    def connection_lost(self, exc):
        error = exc or ConnectionResetError("closed by backend")
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(exc)

    async def get(self, path: str = "/") -> str:
        if self.lost.done():
            raise ConnectionResetError(f"connection already closed: {self.lost.result()}")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {SERVICE}\r\n\r\n".encode())
        return await asyncio.wait_for(self.waiter, 5)


async def connect(tls: UpstreamTls, port: int, *, host: str = "127.0.0.1",
                  dns: model.DnsDiscovery | None = None) -> tuple[Client, str | None]:
    """Open a connection exactly as the pool would; return it with the SAN verdict."""
    peer = tls.peer_for(host, dns)
    loop = asyncio.get_running_loop()
    transport, client = await asyncio.wait_for(
        loop.create_connection(Client, host, port, ssl=tls.context,
                               server_hostname=peer.server_hostname), 5)
    reason = tls.check(transport.get_extra_info("ssl_object"), peer)
    if reason is not None:
        transport.abort()
    return client, reason


def dns(hostname: str, port: int) -> model.DnsDiscovery:
    return model.DnsDiscovery(hostname=hostname, port=port)


# ------------------------------------------------------------ policy choice


def test_ports_filter(pki):
    p = policy(pki.ca_path, ports=(8443,))
    reg = UpstreamTlsRegistry()
    assert upstream_tls_for(service(), p, 8443, registry=reg) is not None
    assert upstream_tls_for(service(), p, 8080, registry=reg) is None


def test_enforce_false_means_plaintext_and_opens_no_file():
    p = policy("/nonexistent/ca.pem", enforce=False)
    assert upstream_tls_for(service(), p, 443, registry=UpstreamTlsRegistry()) is None
    assert upstream_tls_for(service(p), None, 443, registry=UpstreamTlsRegistry()) is None


def test_no_policy_means_plaintext():
    assert upstream_tls_for(service(), None, 443, registry=UpstreamTlsRegistry()) is None


def test_service_policy_overrides_default(pki):
    default = policy(pki.ca_path, ("default.local",))
    own = policy(pki.ca_path, ("own.local",))
    assert policy_for(service(own), default, 443) is own
    assert policy_for(service(), default, 443) is default
    # The service's policy replaces the default wholesale: its port list and its
    # enforce flag decide, the default is not consulted as a fallback.
    assert policy_for(service(policy(pki.ca_path, ports=(9443,))), default, 443) is None
    assert policy_for(service(policy(pki.ca_path, enforce=False)), default, 443) is None


def test_one_context_per_service_policy(pki):
    reg = UpstreamTlsRegistry()
    default = policy(pki.ca_path)
    a1 = reg.get(service(), default, 8443)
    a2 = reg.get(service(), default, 9443)
    b = reg.get(service(name="other.local"), default, 8443)
    assert a1 is a2 and a1.context is a2.context
    assert b is not a1 and b.service_name == "other.local"
    assert len(reg) == 2
    reg.retain([service(name="other.local")], default)
    assert list(reg) == [b]
    reg.retain([service(name="other.local", tls=policy(pki.ca_path, ("x",)))], default)
    assert len(reg) == 0


def test_unreadable_files_give_a_clear_error(pki, tmp_path):
    with pytest.raises(UpstreamTlsError, match=r"catalog\.local.*missing\.pem"):
        UpstreamTls(SERVICE, policy(str(tmp_path / "missing.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UpstreamTlsError, match="junk.pem"):
        UpstreamTls(SERVICE, policy(str(junk)))
    with pytest.raises(UpstreamTlsError, match="client certificate"):
        UpstreamTls(SERVICE, policy(pki.ca_path, cert=(pki.ca_path, str(tmp_path / "nokey.pem"))))


def test_trust_comes_from_the_policy_file_only(pki):
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    ctx = tls.context
    cas = ctx.get_ca_certs()
    assert [dict(x[0] for x in c["subject"])["commonName"] for c in cas] == ["upstream test CA"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


# ------------------------------------------------------------- name matching


@pytest.mark.parametrize("pattern, name, ok", [
    ("catalog.apps.local", "catalog.apps.local", True),
    ("Catalog.Apps.Local", "catalog.apps.local.", True),
    ("*.apps.local", "catalog.apps.local", True),
    ("*.apps.local", "a.b.apps.local", False),
    ("*.apps.local", "apps.local", False),
    ("*.apps.local", ".apps.local", False),
    ("c*.apps.local", "catalog.apps.local", False),
    ("*", "catalog", False),
    ("catalog.apps.local", "other.apps.local", False),
])
def test_dns_name_matches(pattern, name, ok):
    assert dns_name_matches(pattern, name) is ok


def test_verify_peer_without_tls():
    assert verify_peer(None, ("x",)) == "not a TLS connection"


# ------------------------------------------------------------ handshakes


async def test_good_certificate_static_ip_endpoint(pki):
    cert = pki.server("backend", dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        client, reason = await connect(tls, backend.port)
        assert reason is None
        assert await client.get() == "conn=1 req=1"
        assert client.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        client.transport.close()
    # A static IP endpoint sends the virtual service name as SNI.
    assert backend.sni == [SERVICE]
    assert tls.stats.handshake == 1 and tls.stats.fail_verify_san == 0


async def test_static_ip_endpoint_accepts_ip_san(pki):
    cert = pki.server("by-ip", ips=("127.0.0.1",))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        client, reason = await connect(tls, backend.port)
        assert reason is None
        client.transport.close()


async def test_untrusted_ca_fails_the_handshake(pki):
    other = certs.make_ca("someone else")
    cert = pki.server("rogue", ca=other, dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await connect(tls, backend.port)
        assert backend.connections == 0
    message = tls.handshake_failed(info.value)
    assert "server certificate rejected" in message
    assert tls.stats.fail_verify_error == 1 and tls.stats.handshake == 0
    assert tls.stats.fail_reasons == {"CERTIFICATE_VERIFY_FAILED": 1}


async def test_expired_certificate_fails_the_handshake(pki):
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    cert = pki.server("expired", dns=(SERVICE,), not_before=now - dt.timedelta(days=10),
                      not_after=now - dt.timedelta(days=1))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await connect(tls, backend.port)
    assert "expired" in tls.handshake_failed(info.value)


async def test_san_list_matches_uri_or_dns(pki):
    cert = pki.server("spiffe", dns=("catalog.internal",), uris=("spiffe://mesh/catalog",))
    async with Backend(cert) as backend:
        for sans in (("spiffe://mesh/catalog",), ("nope.local", "catalog.internal")):
            tls = UpstreamTls(SERVICE, policy(pki.ca_path, sans))
            client, reason = await connect(tls, backend.port)
            assert reason is None, sans
            assert await client.get() == f"conn={backend.connections} req=1"
            client.transport.close()


async def test_san_list_mismatch_is_refused(pki):
    # The certificate names the service, but an explicit SAN list replaces that rule.
    cert = pki.server("catalog", dns=(SERVICE,), uris=("spiffe://mesh/catalog",))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path, ("spiffe://mesh/payments", "payments.local")))
    async with Backend(cert) as backend:
        client, reason = await connect(tls, backend.port)
        assert reason is not None
        assert "spiffe://mesh/catalog" in reason and "payments.local" in reason
        await asyncio.wait_for(client.lost, 5)
        assert client.transport.is_closing()
    assert tls.stats.fail_verify_san == 1 and tls.stats.handshake == 0


async def test_uri_san_list_is_exact(pki):
    cert = pki.server("spiffe2", uris=("spiffe://mesh/catalog/v2",))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path, ("spiffe://mesh/catalog",)))
    async with Backend(cert) as backend:
        _, reason = await connect(tls, backend.port)
    assert reason is not None


async def test_hostname_verification_with_one_label_wildcard(pki):
    cert = pki.server("wild", dns=("*.apps.local",))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        client, reason = await connect(tls, backend.port, dns=dns("catalog.apps.local", backend.port))
        assert reason is None
        assert await client.get() == "conn=1 req=1"
        client.transport.close()
        for name in ("a.b.apps.local", "apps.local"):
            _, reason = await connect(tls, backend.port, dns=dns(name, backend.port))
            assert reason is not None and name in reason
    # SNI is the DNS service-discovery hostname.
    assert backend.sni == ["catalog.apps.local", "a.b.apps.local", "apps.local"]
    assert tls.stats.handshake == 1 and tls.stats.fail_verify_san == 2


async def test_dns_endpoint_does_not_accept_the_service_name(pki):
    # With DNS discovery the expected name is the DNS hostname, not the virtual service name.
    cert = pki.server("svcname", dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        _, reason = await connect(tls, backend.port, dns=dns("catalog.svc.cluster.local", backend.port))
    assert reason is not None


async def test_static_ip_endpoint_without_matching_san_is_refused(pki):
    cert = pki.server("elsewhere", dns=("elsewhere.local",), ips=("10.9.9.9",))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        _, reason = await connect(tls, backend.port)
    assert reason is not None


async def test_mtls_with_the_policy_certificate(pki, tmp_path):
    client_ca = certs.make_ca("client CA")
    client_ca_path, _ = client_ca.write(tmp_path, "client-ca")
    client_cert = certs.issue(client_ca, "gateway-client", dns=("gateway.local",),
                              client=True, server=False).write(tmp_path, "gw-client")
    server_cert = pki.server("mtls-backend", dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path, cert=client_cert))
    async with Backend(server_cert, client_ca=client_ca_path) as backend:
        client, reason = await connect(tls, backend.port)
        assert reason is None
        assert await client.get() == "conn=1 req=1"
        client.transport.close()
    assert backend.client_cns == ["gateway-client"]


@pytest.mark.parametrize("max_version", [None, ssl.TLSVersion.TLSv1_2])
async def test_mtls_without_a_client_certificate_fails(pki, tmp_path, max_version):
    client_ca = certs.make_ca("client CA")
    client_ca_path, _ = client_ca.write(tmp_path, "client-ca")
    server_cert = pki.server("mtls-backend", dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(server_cert, client_ca=client_ca_path, max_version=max_version) as backend:
        if max_version == ssl.TLSVersion.TLSv1_2:
            # TLS 1.2: the backend's refusal ends the handshake itself.
            # Depending on timing the client reads the alert or only the hang-up.
            with pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
                await connect(tls, backend.port)
            assert "handshake failed" in tls.handshake_failed(info.value)
            assert tls.stats.connection_error == 1
        else:
            # TLS 1.3: the client finishes first; the backend's alert arrives on the
            # first read, so the pool sees a reset on the first request.
            client, reason = await connect(tls, backend.port)
            assert reason is None
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await client.get()
    assert backend.client_cns == []


async def test_keep_alive_reuses_one_tls_connection(pki):
    cert = pki.server("backend", dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    async with Backend(cert) as backend:
        client, reason = await connect(tls, backend.port)
        assert reason is None
        answers = [await client.get(f"/{i}") for i in range(5)]
        client.transport.close()
    assert answers == [f"conn=1 req={i}" for i in range(1, 6)]
    assert backend.connections == 1
    assert tls.stats.handshake == 1


async def test_rotation_of_the_trust_file(pki, tmp_path):
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))
    assert tls.reload_if_changed() is False
    new_ca = certs.make_ca("rotated CA")
    cert = certs.issue(new_ca, "rotated-backend", dns=(SERVICE,)).write(tmp_path, "rotated")
    async with Backend(cert) as backend:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(tls, backend.port)

        # A broken trust file: the old context stays, the failure is counted once.
        old = tls.context
        with open(pki.ca_path, "w") as fh:
            fh.write("-----BEGIN CERTIFICATE-----\ngarbage\n")
        assert tls.reload_if_changed() is False
        assert tls.reload_if_changed() is False
        assert tls.context is old
        assert tls.stats.reload_error == 1

        new_ca.write(tmp_path, "ca")                  # atomic replace of ca.pem
        assert tls.reload_if_changed() is True
        assert tls.context is not old
        assert tls.stats.reload_ok == 1
        client, reason = await connect(tls, backend.port)
        assert reason is None
        assert await client.get() == "conn=1 req=1"
        client.transport.close()


def test_rotation_of_the_client_certificate(pki, tmp_path):
    first = certs.issue(pki.ca, "client-1", client=True, server=False).write(tmp_path, "client")
    tls = UpstreamTls(SERVICE, policy(pki.ca_path, cert=first))
    old = tls.context
    certs.issue(pki.ca, "client-2", client=True, server=False).write(tmp_path, "client")
    assert tls.reload_if_changed() is True and tls.context is not old
    os.remove(first[1])
    assert tls.reload_if_changed() is False
    assert tls.stats.reload_error == 1


def test_handshakes_under_uvloop(pki):
    """The gateway runs on uvloop; its SSL transport must behave the same."""
    good = pki.server("uv-backend", dns=(SERVICE,))
    rogue = pki.server("uv-rogue", ca=certs.make_ca("rogue"), dns=(SERVICE,))
    tls = UpstreamTls(SERVICE, policy(pki.ca_path))

    async def main():
        async with Backend(good) as backend:
            client, reason = await connect(tls, backend.port)
            assert reason is None
            assert [await client.get(), await client.get()] == ["conn=1 req=1", "conn=1 req=2"]
            client.transport.close()
        async with Backend(rogue) as backend:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(tls, backend.port)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
