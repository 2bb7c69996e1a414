"""Listener TLS (gateway.listener.tls + accept): real handshakes against a tiny echo server.

Every scenario runs on the default asyncio loop and on uvloop.  Clients are blocking
Python ssl sockets in a thread, `openssl s_client` and `curl`.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography.hazmat.primitives import serialization

from gateway.certs import Issued, issue, make_ca
from gateway.config import model
from gateway.listener import tls as tlsmod
from gateway.listener.accept import start_permissive_server, start_server
from gateway.listener.tls import ALPN_PROTOCOLS, TlsTermination

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    def runner(coro):
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro, 30))
    return runner


# ------------------------------------------------------------------ certificates


@dataclass
class Pki:
    dir: Path
    ca: Issued
    other_ca: Issued
    server: Issued
    client: Issued

    def path(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("test CA")
    other_ca = make_ca("other CA")
    server = issue(ca, "localhost", dns=("localhost", "127.0.0.1"))
    client = issue(ca, "demo-client", dns=("client.local",), uris=("spiffe://demo/client",),
                   client=True, server=False)
    now = dt.datetime.now(dt.timezone.utc)
    items = {
        "ca": ca, "other-ca": other_ca, "server": server, "client": client,
        "client-other-ca": issue(other_ca, "demo-client", uris=("spiffe://demo/client",),
                                 client=True, server=False),
        "client-expired": issue(ca, "demo-client", uris=("spiffe://demo/client",), client=True,
                                server=False, not_before=now - dt.timedelta(days=30),
                                not_after=now - dt.timedelta(days=1)),
        "client-wrong-san": issue(ca, "intruder", dns=("intruder.local",),
                                  uris=("spiffe://demo/intruder",), client=True, server=False),
        "a": issue(ca, "a.example.com", dns=("a.example.com",)),
        "wild": issue(ca, "wild", dns=("*.wild.example",)),
        "odd-client": issue(ca, 'Odd "quoted", name; x=y', dns=("one.local", "two.local"),
                            uris=("spiffe://demo/q?a=1;b=2",), client=True, server=False),
    }
    for stem, item in items.items():
        item.write(d, stem)
    return Pki(d, ca, other_ca, server, client)


def listener(pki: Pki, mode: str = "STRICT", *, mtls: bool = False, sans: tuple[str, ...] = (),
             cert: str = "server", sni: tuple[model.SniCertificate, ...] = (),
             trust: str = "ca") -> model.Listener:
    validation = model.TlsValidation(pki.path(f"{trust}.pem"), sans) if mtls else None
    return model.Listener(
        8443, "http",
        tls=model.ListenerTls(mode, model.TlsFileCertificate(pki.path(f"{cert}.pem"),
                                                             pki.path(f"{cert}-key.pem")),
                              validation),
        sni_certificates=sni)


def client_ctx(pki: Pki, cert: str | None = None, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(pki.path(f"{cert}.pem"), pki.path(f"{cert}-key.pem"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


# ------------------------------------------------------------------ echo server


class Echo(asyncio.Protocol):
    """Stands in for the HTTP protocol: answers `info` with what the listener saw."""

    made = 0

    def __init__(self, tls: TlsTermination | None):
        self.tls = tls
        type(self).made += 1

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.xfcc = self.tls.xfcc(self.ssl_object) if self.ssl_object and self.tls else None

    def data_received(self, data: bytes) -> None:
        so = self.ssl_object
        info = {"tls": so is not None,
                "xfcc": self.xfcc.decode() if self.xfcc else None,
                "alpn": so.selected_alpn_protocol() if so else None,
                "version": so.version() if so else None,
                "direct_io": so is not None and all(
                    type(getattr(so, m)).__name__ == "builtin_function_or_method"
                    for m in ("read", "write", "pending"))}
        if data.startswith(b"GET "):
            body = json.dumps(info).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                                 % len(body) + body)
            self.transport.close()
        elif data.startswith(b"info"):
            self.transport.write(json.dumps(info).encode() + b"\n")
        else:
            self.transport.write(b"echo:" + data)


@asynccontextmanager
async def serving(lst: model.Listener, **kw):
    tls = TlsTermination(lst)
    made_before = Echo.made
    server = await start_server(asyncio.get_running_loop(), "127.0.0.1", 0,
                                lambda: Echo(tls), tls=tls, **kw)
    port = server.sockets[0].getsockname()[1]
    try:
        yield tls, port, (lambda: Echo.made - made_before)
    finally:
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------- clients


class Conn:
    """A blocking client connection (used from a worker thread)."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None, sni: str | None = "localhost",
                 session: ssl.SSLSession | None = None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session) if ctx else raw

    def ask(self, data: bytes = b"info\n") -> bytes:
        self.sock.sendall(data)
        return self.sock.recv(65536)

    def info(self) -> dict:
        return json.loads(self.ask())

    def close(self) -> None:
        self.sock.close()


@dataclass
class Seen:
    """What the client saw of the server, captured before closing."""
    der: bytes | None
    cipher: str | None
    alpn: str | None


async def call(port, ctx, data=b"info\n", sni="localhost", session=None) -> tuple[bytes, Seen]:
    def go():
        c = Conn(port, ctx, sni, session)
        try:
            reply = c.ask(data)
            if ctx is None:
                return reply, Seen(None, None, None)
            return reply, Seen(c.sock.getpeercert(binary_form=True), c.sock.cipher()[0],
                               c.sock.selected_alpn_protocol())
        finally:
            c.close()
    return await asyncio.to_thread(go)


async def refused(port, ctx, sni="localhost") -> str:
    """The client must get no answer: returns how the connection ended."""
    def go():
        try:
            c = Conn(port, ctx, sni)
            try:
                reply = c.ask()
            finally:
                c.close()
        except (ssl.SSLError, ConnectionError) as exc:
            return type(exc).__name__ + ": " + str(exc)
        assert reply == b"", f"got a reply: {reply!r}"
        return "eof"
    return await asyncio.to_thread(go)


async def settle(tls: TlsTermination, want: int) -> None:
    """Server-side accounting runs on the loop just after the client saw the failure."""
    for _ in range(100):
        if sum(tls.stats.handshake_failures.values()) >= want:
            return
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------- modes


def test_strict_serves_tls_and_refuses_plaintext(run, pki):
    async def main():
        async with serving(listener(pki, "STRICT")) as (tls, port, made):
            reply, _ = await call(port, client_ctx(pki))
            info = json.loads(reply)
            assert info["tls"] is True and info["xfcc"] is None
            assert tls.stats.handshakes == 1
            def go():
                c = Conn(port, None)
                try:
                    return c.ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                except ConnectionError:
                    return b""
                finally:
                    c.close()
            assert await asyncio.to_thread(go) == b""
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {"protocol": 1}
            assert made() == 1     # the plaintext client never got a protocol instance
    run(main())


def test_tls_records_go_through_the_ssl_objects_c_methods(run, pki):
    """The transport reads and writes through DirectSSLObject's C methods (no Python
    frame per record); payloads spanning many records still arrive whole."""
    async def main():
        async with serving(listener(pki, "STRICT")) as (tls, port, made):
            reply, _ = await call(port, client_ctx(pki))
            assert json.loads(reply)["direct_io"] is True
            payload = bytes(range(256)) * 1024          # 256 KiB: sixteen-odd TLS records

            def go():
                c = Conn(port, client_ctx(pki))
                try:
                    c.sock.sendall(b"x" + payload)
                    want, got = 1 + len(payload), b""
                    while len(got.replace(b"echo:", b"")) < want:
                        chunk = c.sock.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    return got
                finally:
                    c.close()
            got = await asyncio.to_thread(go)
            # Echo answers each read on its own: strip the "echo:" prefixes it adds.
            assert got.startswith(b"echo:x")
            assert got.replace(b"echo:", b"") == b"x" + payload
    run(main())


def test_permissive_serves_tls_and_plaintext_on_one_port(run, pki):
    async def main():
        async with serving(listener(pki, "PERMISSIVE")) as (tls, port, made):
            plain, _ = await call(port, None)
            assert json.loads(plain)["tls"] is False
            secure, _ = await call(port, client_ctx(pki))
            assert json.loads(secure)["tls"] is True
            plain2, _ = await call(port, None, b"hello")
            assert plain2 == b"echo:hello"      # the peeked byte was not consumed
            assert tls.stats.plaintext_connections == 2 and tls.stats.handshakes == 1
            assert made() == 3
    run(main())


def test_permissive_with_mtls_still_admits_plaintext(run, pki):
    async def main():
        async with serving(listener(pki, "PERMISSIVE", mtls=True)) as (tls, port, made):
            assert json.loads((await call(port, None))[0])["tls"] is False
            await refused(port, client_ctx(pki))          # TLS without a certificate
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {"no_client_certificate": 1}
            info = json.loads((await call(port, client_ctx(pki, "client")))[0])
            assert info["xfcc"].startswith("Hash=")
    run(main())


def test_permissive_silent_client_is_dropped_after_timeout(run, pki):
    async def main():
        async with serving(listener(pki, "PERMISSIVE"), first_byte_timeout=0.2) as (tls, port, made):
            def go():
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    return s.recv(10)        # the server closes: EOF
            assert await asyncio.to_thread(go) == b""
            assert tls.stats.first_byte_timeouts == 1 and made() == 0
            # and the listener is still fine
            assert json.loads((await call(port, None))[0])["tls"] is False
    run(main())


def test_permissive_client_closing_before_sending_is_harmless(run, pki):
    async def main():
        async with serving(listener(pki, "PERMISSIVE")) as (tls, port, made):
            def go():
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            await asyncio.to_thread(go)
            await asyncio.sleep(0.05)
            assert made() == 0 and tls.stats.first_byte_timeouts == 0
            assert json.loads((await call(port, client_ctx(pki)))[0])["tls"] is True
    run(main())


def test_start_permissive_server_with_a_bare_context(run, pki):
    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.path("server.pem"), pki.path("server-key.pem"))
        server = await start_permissive_server(asyncio.get_running_loop(), "127.0.0.1", 0,
                                               lambda: Echo(None), ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            assert (await call(port, None, b"x"))[0] == b"echo:x"
            assert (await call(port, client_ctx(pki), b"y"))[0] == b"echo:y"
        finally:
            server.close()
            await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(OSError):
            await call(port, None, b"z")        # no longer listening
    run(main())


def test_stalled_and_abandoned_handshakes_are_counted(run, pki):
    async def main():
        async with serving(listener(pki), handshake_timeout=0.3) as (tls, port, made):
            def stall():
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"\x16\x03\x01\x02\x00")      # half a ClientHello, then silence
                    try:
                        return s.recv(10)
                    except ConnectionError:
                        return b""
            assert await asyncio.to_thread(stall) == b""
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {"timeout": 1}

            def abandon():
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"\x16\x03\x01\x02\x00\x01")
            await asyncio.to_thread(abandon)
            await settle(tls, 2)
            assert tls.stats.handshake_failures == {"timeout": 1, "connection_closed": 1}
            assert made() == 0
    run(main())


def test_closing_the_server_drops_pending_handshakes(run, pki):
    async def main():
        tls = TlsTermination(listener(pki))
        server = await start_server(asyncio.get_running_loop(), "127.0.0.1", 0,
                                    lambda: Echo(tls), tls=tls)
        port = server.sockets[0].getsockname()[1]
        s = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 5)
        s.sendall(b"\x16\x03\x01")
        await asyncio.sleep(0.05)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 2)
        assert await asyncio.to_thread(s.recv, 10) == b""
        s.close()
    run(main())


def test_disabled_mode_is_not_terminated_and_opens_no_files(pki):
    lst = model.Listener(8443, "http", tls=model.ListenerTls(
        "DISABLED", model.TlsFileCertificate("/nonexistent.pem", "/nonexistent-key.pem")))
    assert tlsmod.termination_for(lst) is None
    assert tlsmod.termination_for(model.Listener(8080, "http")) is None
    with pytest.raises(ValueError):
        TlsTermination(lst)
    assert isinstance(tlsmod.termination_for(listener(pki)), TlsTermination)


def test_unusable_files_fail_at_startup_naming_the_file(pki, tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    bad = model.Listener(8443, "http", tls=model.ListenerTls(
        "STRICT", model.TlsFileCertificate(str(tmp_path / "junk.pem"), pki.path("server-key.pem"))))
    with pytest.raises(tlsmod.TlsConfigError, match="junk.pem"):
        TlsTermination(bad)
    mismatch = model.Listener(8443, "http", tls=model.ListenerTls(
        "STRICT", model.TlsFileCertificate(pki.path("server.pem"), pki.path("client-key.pem"))))
    with pytest.raises(tlsmod.TlsConfigError, match="server.pem"):
        TlsTermination(mismatch)


# -------------------------------------------------------------------------- mTLS


MTLS_REFUSALS = [
    (None, "no_client_certificate"),
    ("client-other-ca", "unknown_ca"),
    ("client-expired", "certificate_expired"),
    ("client-wrong-san", "san_mismatch"),
]


@pytest.mark.parametrize("cert,reason", MTLS_REFUSALS, ids=[r for _, r in MTLS_REFUSALS])
def test_mtls_refusals_never_reach_the_backend(run, pki, cert, reason):
    async def main():
        lst = listener(pki, mtls=True, sans=("spiffe://demo/client", "other.local"))
        async with serving(lst) as (tls, port, made):
            await refused(port, client_ctx(pki, cert))
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {reason: 1}
            assert tls.stats.handshakes == 0
            assert made() == 0
            # TLS 1.2 too: there the handshake itself fails on the client side
            await refused(port, client_ctx(pki, cert, maximum_version=ssl.TLSVersion.TLSv1_2))
            await settle(tls, 2)
            assert tls.stats.handshake_failures == {reason: 2}
            assert made() == 0
    run(main())


def test_mtls_good_certificate_and_xfcc(run, pki):
    async def main():
        lst = listener(pki, mtls=True, sans=("client.local",))     # a DNS SAN matches too
        async with serving(lst) as (tls, port, made):
            info = json.loads((await call(port, client_ctx(pki, "client")))[0])
            der = pki.client.cert.public_bytes(serialization.Encoding.DER)
            assert info["xfcc"] == (
                f"Hash={hashlib.sha256(der).hexdigest()};"
                'Subject="CN=demo-client,O=appmesh-gateway dev";'
                "URI=spiffe://demo/client;DNS=client.local")
            assert tls.stats.handshakes == 1 and tls.stats.handshake_failures == {}
    run(main())


def test_mtls_without_san_list_accepts_any_trusted_certificate(run, pki):
    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            info = json.loads((await call(port, client_ctx(pki, "client-wrong-san")))[0])
            assert "URI=spiffe://demo/intruder" in info["xfcc"]
    run(main())


def test_xfcc_quotes_and_escapes_like_envoy(run, pki):
    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            xfcc = json.loads((await call(port, client_ctx(pki, "odd-client")))[0])["xfcc"]
            _hash, rest = xfcc.split(";", 1)
            # RFC 4514 escapes the DN specials with a backslash; inside the quoted XFCC
            # value backslash and '"' are escaped again (quoted-pair), so a parser
            # undoing one level gets the RFC 4514 DN back.
            assert rest == (r'Subject="CN=Odd \\\"quoted\\\"\\, name\\; x=y,O=appmesh-gateway dev";'
                            r'URI="spiffe://demo/q?a=1;b=2";DNS=one.local;DNS=two.local')
    run(main())


def test_xfcc_never_carries_control_characters():
    from gateway.listener.tls import _header_safe
    assert _header_safe('Subject="CN=a\r\nx: y"') == b'Subject="CN=a\\0D\\0Ax: y"'
    assert _header_safe("CN=\u00e9") == b"CN=\\C3\\A9"


def test_check_peer_and_xfcc_are_computed_once_per_connection(run, pki):
    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            calls = 0
            real = tlsmod._identity

            def counting(der):
                nonlocal calls
                calls += 1
                return real(der)
            tlsmod._identity = counting
            try:
                await call(port, client_ctx(pki, "client"))
            finally:
                tlsmod._identity = real
            assert calls == 1
    run(main())


# ------------------------------------------------------------- SNI, ALPN, policy


def sni_listener(pki):
    return listener(pki, sni=(
        model.SniCertificate(("a.example.com",), model.TlsFileCertificate(pki.path("a.pem"), pki.path("a-key.pem"))),
        model.SniCertificate(("*.wild.example",), model.TlsFileCertificate(pki.path("wild.pem"), pki.path("wild-key.pem"))),
    ))


def der_of(item: Issued) -> bytes:
    return item.cert.public_bytes(serialization.Encoding.DER)


def test_sni_selects_certificate_with_default(run, pki):
    async def main():
        async with serving(sni_listener(pki)) as (tls, port, made):
            expect = {
                "a.example.com": (pki.dir / "a.pem"),
                "A.Example.COM": (pki.dir / "a.pem"),
                "x.wild.example": (pki.dir / "wild.pem"),
                "localhost": (pki.dir / "server.pem"),
                "deep.x.wild.example": (pki.dir / "server.pem"),   # one label only
            }
            for name, pem in expect.items():
                ctx = client_ctx(pki, check_hostname=False)
                _, sock = await call(port, ctx, sni=name)
                got = sock.der
                assert got == ssl.PEM_cert_to_DER_cert(pem.read_text()), name
            # no SNI at all (IP literal): the default
            ctx = client_ctx(pki, check_hostname=False)
            _, sock = await call(port, ctx, sni=None)
            assert sock.der == der_of(pki.server)
    run(main())


def test_alpn_offers_h2_then_http11(run, pki):
    assert ALPN_PROTOCOLS == ("h2", "http/1.1")

    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            ctx = client_ctx(pki)
            ctx.set_alpn_protocols(["http/1.1"])     # an HTTP/1.1-only client keeps HTTP/1.1
            info = json.loads((await call(port, ctx))[0])
            assert info["alpn"] == "http/1.1"
            ctx = client_ctx(pki)
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            reply, sock = await call(port, ctx)
            assert sock.alpn == "h2"
            ctx = client_ctx(pki)                    # no ALPN at all: HTTP/1.1 by default
            info = json.loads((await call(port, ctx))[0])
            assert info["alpn"] is None
    run(main())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_refused_tls12_and_13_accepted(run, pki):
    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            old = client_ctx(pki)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            with pytest.raises(ssl.SSLError):
                await call(port, old)
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {"protocol": 1}
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = client_ctx(pki, minimum_version=version, maximum_version=version)
                reply, sock = await call(port, ctx)
                assert json.loads(reply)["version"] == ("TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    run(main())


def test_tls12_uses_ecdhe_aead_only(run, pki):
    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            weak = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
            weak.set_ciphers("AES128-SHA:AES256-SHA:AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
            with pytest.raises(ssl.SSLError):
                await call(port, weak)
            good = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
            _, sock = await call(port, good)
            name = sock.cipher
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    run(main())


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(run, pki, version):
    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            v = getattr(ssl.TLSVersion, version)
            ctx = client_ctx(pki, "client", minimum_version=v, maximum_version=v)

            def go():
                first = Conn(port, ctx)
                first.info()             # TLS 1.3 tickets arrive after the handshake
                session = first.sock.session
                first.close()
                second = Conn(port, ctx, session=session)
                info = second.info()
                reused = second.sock.session_reused
                second.close()
                return reused, info
            reused, info = await asyncio.to_thread(go)
            assert reused is True
            assert info["xfcc"] and "spiffe://demo/client" in info["xfcc"]   # identity kept
    run(main())


# ------------------------------------------------------------------ command-line clients


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def test_openssl_s_client(run, pki):
    openssl = _tool("openssl")

    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            async def s_client(*args):
                proc = await asyncio.create_subprocess_exec(
                    openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                    "-CAfile", pki.path("ca.pem"), "-alpn", "http/1.1", "-ign_eof", *args,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                # the echo server answers GET and closes, which ends s_client
                out, _ = await proc.communicate(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return out.decode(errors="replace")
            out = await s_client("-cert", pki.path("client.pem"), "-key", pki.path("client-key.pem"))
            assert "Verify return code: 0 (ok)" in out
            assert "ALPN protocol: http/1.1" in out
            assert '"xfcc": "Hash=' in out
            out = await s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
            assert '"xfcc"' not in out
            out = await s_client()      # no client certificate
            assert '"xfcc"' not in out
            await settle(tls, 2)
            assert tls.stats.handshake_failures == {"protocol": 1, "no_client_certificate": 1}
    run(main())


def test_curl_https_and_plain_on_permissive(run, pki):
    curl = _tool("curl")

    async def main():
        async with serving(listener(pki, "PERMISSIVE", mtls=True)) as (tls, port, made):
            async def get(*args):
                proc = await asyncio.create_subprocess_exec(
                    curl, "-sS", "--max-time", "5", *args,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, err = await proc.communicate()
                return proc.returncode, out.decode(), err.decode()
            code, out, err = await get("--http1.1", "--cacert", pki.path("ca.pem"), "--cert", pki.path("client.pem"),
                                       "--key", pki.path("client-key.pem"),
                                       "--resolve", f"localhost:{port}:127.0.0.1",
                                       f"https://localhost:{port}/")
            assert code == 0, err
            info = json.loads(out)
            assert info["tls"] and info["alpn"] == "http/1.1" and "spiffe://demo/client" in info["xfcc"]
            code, out, err = await get(f"http://127.0.0.1:{port}/")
            assert code == 0 and json.loads(out)["tls"] is False
            code, out, err = await get("--cacert", pki.path("ca.pem"),
                                       "--resolve", f"localhost:{port}:127.0.0.1",
                                       f"https://localhost:{port}/")
            assert code != 0 and out == ""
    run(main())
