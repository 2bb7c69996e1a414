"""Certificate, key and trust files replaced on disk while the listener serves."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from gateway.certs import issue, make_ca
from gateway.config import model
from test_tls_listener import (Conn, Pki, call, client_ctx, der_of, listener, refused, run,  # noqa: F401
                               serving, settle)


@pytest.fixture
def pki(tmp_path) -> Pki:
    """Fresh files per test: these tests overwrite them."""
    ca = make_ca("rotation CA")
    other_ca = make_ca("second CA")
    server = issue(ca, "localhost", dns=("localhost",))
    client = issue(ca, "client", uris=("spiffe://demo/client",), client=True, server=False)
    for stem, item in (("ca", ca), ("server", server), ("client", client),
                       ("a", issue(ca, "a", dns=("a.example.com",)))):
        item.write(tmp_path, stem)
    issue(other_ca, "client2", uris=("spiffe://demo/client",), client=True,
          server=False).write(tmp_path, "client2")
    return Pki(tmp_path, ca, other_ca, server, client)


async def open_conn(port, ctx, sni="localhost") -> Conn:
    return await asyncio.to_thread(Conn, port, ctx, sni)


async def ask(conn: Conn, data: bytes) -> bytes:
    return await asyncio.to_thread(conn.ask, data)


def test_rotation_keeps_open_connections_and_serves_the_new_certificate(run, pki):
    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            ctx = client_ctx(pki)
            held = await open_conn(port, ctx)
            assert await ask(held, b"1") == b"echo:1"
            v1_not_after = tls.stats.cert_not_after[pki.path("server.pem")]
            assert not tls.reload_if_changed()            # nothing changed yet

            v2 = issue(pki.ca, "localhost", dns=("localhost",))
            v2.write(pki.dir, "server")
            assert tls.reload_if_changed()
            assert (tls.stats.reloads_ok, tls.stats.reloads_failed) == (1, 0)
            assert tls.stats.cert_not_after[pki.path("server.pem")] >= v1_not_after

            assert await ask(held, b"2") == b"echo:2"     # the old connection carries on
            assert held.sock.getpeercert(binary_form=True) == der_of(pki.server)
            assert (await call(port, ctx))[1].der == der_of(v2)
            # no SNI at all: the default certificate is swapped too
            no_sni = client_ctx(pki, check_hostname=False)
            assert (await call(port, no_sni, sni=None))[1].der == der_of(v2)
            assert not tls.reload_if_changed()
            await asyncio.to_thread(held.close)
    run(main())


def test_broken_files_keep_the_previous_certificate_and_are_counted(run, pki, caplog):
    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            ctx = client_ctx(pki)
            held = await open_conn(port, ctx)

            (pki.dir / "server.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
            assert not tls.reload_if_changed()
            assert (tls.stats.reloads_ok, tls.stats.reloads_failed) == (0, 1)
            assert "server.pem" in caplog.text and "keeping the previous" in caplog.text
            assert not tls.reload_if_changed()             # same broken state: counted once
            assert tls.stats.reloads_failed == 1
            assert (await call(port, ctx))[1].der == der_of(pki.server)

            # a valid certificate whose key has not been replaced yet: still refused
            v3 = issue(pki.ca, "localhost", dns=("localhost",))
            (pki.dir / "server.pem").write_bytes(v3.cert_pem)
            assert not tls.reload_if_changed()
            assert tls.stats.reloads_failed == 2
            assert (await call(port, ctx))[1].der == der_of(pki.server)

            # the key arrives: the pair loads
            v3.write(pki.dir, "server")
            assert tls.reload_if_changed()
            assert (await call(port, ctx))[1].der == der_of(v3)
            # a file that disappears is a failure too, not a crash
            (pki.dir / "server-key.pem").unlink()
            assert not tls.reload_if_changed()
            assert tls.stats.reloads_failed == 3
            assert (await call(port, ctx))[1].der == der_of(v3)

            assert await ask(held, b"still") == b"echo:still"
            await asyncio.to_thread(held.close)
    run(main())


def test_trust_rotation_admits_clients_of_the_new_ca(run, pki):
    async def main():
        async with serving(listener(pki, mtls=True)) as (tls, port, made):
            # made now: client_ctx() reads ca.pem, which is rewritten below
            first_ca_client = client_ctx(pki, "client")
            held = await open_conn(port, first_ca_client)
            await refused(port, client_ctx(pki, "client2"))
            await settle(tls, 1)
            assert tls.stats.handshake_failures == {"unknown_ca": 1}

            bundle = pki.ca.cert_pem + pki.other_ca.cert_pem
            (pki.dir / "ca.pem").write_bytes(bundle)
            assert tls.reload_if_changed()
            reply, _ = await call(port, client_ctx(pki, "client2"))
            assert b"spiffe://demo/client" in reply
            assert b"spiffe://demo/client" in await ask(held, b"info\n")

            (pki.dir / "ca.pem").write_bytes(pki.other_ca.cert_pem)     # first CA dropped
            assert tls.reload_if_changed()
            await refused(port, first_ca_client)
            await settle(tls, 2)
            assert tls.stats.handshake_failures == {"unknown_ca": 2}
            await asyncio.to_thread(held.close)
    run(main())


def test_sni_certificate_rotation(run, pki):
    async def main():
        sni = (model.SniCertificate(("a.example.com",), model.TlsFileCertificate(
            pki.path("a.pem"), pki.path("a-key.pem"))),)
        async with serving(listener(pki, sni=sni)) as (tls, port, made):
            ctx = client_ctx(pki)
            before = (await call(port, ctx, sni="a.example.com"))[1].der
            a2 = issue(pki.ca, "a", dns=("a.example.com",))
            a2.write(pki.dir, "a")
            assert tls.reload_if_changed()
            assert before != der_of(a2)
            assert (await call(port, ctx, sni="a.example.com"))[1].der == der_of(a2)
            assert (await call(port, ctx))[1].der == der_of(pki.server)
            assert set(tls.stats.cert_not_after) == {pki.path("server.pem"), pki.path("a.pem")}
    run(main())


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_sessions_resume_across_a_rotation(run, pki, version):
    """Ticket keys belong to the long-lived server context, not to the rotated ones."""
    async def main():
        async with serving(listener(pki)) as (tls, port, made):
            v = getattr(ssl.TLSVersion, version)
            ctx = client_ctx(pki, minimum_version=v, maximum_version=v)

            def first():
                c = Conn(port, ctx)
                c.ask(b"x")
                session = c.sock.session
                c.close()
                return session
            session = await asyncio.to_thread(first)
            issue(pki.ca, "localhost", dns=("localhost",)).write(pki.dir, "server")
            assert tls.reload_if_changed()

            def second():
                c = Conn(port, ctx, session=session)
                c.ask(b"y")
                reused = c.sock.session_reused
                c.close()
                return reused
            assert await asyncio.to_thread(second) is True
    run(main())
