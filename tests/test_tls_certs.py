"""gateway.certs: development CA, server and client certificates."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.certs import DEMO_HOSTNAMES, certs_main, issue, make_ca, write_dev_certs


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_issue_signs_with_the_ca_and_sets_names_and_usage():
    ca = make_ca("test CA")
    leaf = issue(ca, "svc", dns=("svc.local", "10.1.2.3"), uris=("spiffe://x/y",), client=True)
    leaf.cert.verify_directly_issued_by(ca.cert)
    names = sans(leaf.cert)
    assert names.get_values_for_type(x509.DNSName) == ["svc.local"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://x/y"]
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey) and leaf.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_validity_window_can_be_set_for_expired_certificates():
    ca = make_ca("test CA")
    now = dt.datetime.now(dt.timezone.utc)
    old = issue(ca, "old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    assert old.cert.not_valid_after_utc < now


def test_write_uses_private_mode_for_keys(tmp_path):
    ca = make_ca("test CA")
    cert_path, key_path = issue(ca, "svc", dns=("svc",)).write(tmp_path / "sub", "svc")
    assert cert_path.endswith("svc.pem") and key_path.endswith("svc-key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)   # the pair matches and parses
    assert not [p for p in os.listdir(tmp_path / "sub") if p.startswith(".")]   # no temp files left


def test_dev_certs_verify_with_openssl_and_print_what_they_wrote(tmp_path, capsys):
    assert certs_main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"):
        assert (tmp_path / name).is_file()
        assert str(tmp_path / name) in out
    for leaf in ("server.pem", "client.pem"):
        result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
                                 str(tmp_path / leaf)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    names = sans(server)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "gateway.local" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    client = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    assert sans(client).get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://demo/client"]
    assert sans(client).get_values_for_type(x509.DNSName) == ["client.local"]
    assert set(DEMO_HOSTNAMES) >= {"localhost", "127.0.0.1", "*.local", "gateway.local"}


def test_certs_main_reports_unwritable_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert certs_main(str(blocker / "sub")) == 1
    assert "cannot write" in capsys.readouterr().err


def test_write_dev_certs_returns_paths(tmp_path):
    written = write_dev_certs(tmp_path, ("example.test",), echo=lambda _: None)
    assert set(written) == {"ca", "ca-key", "server", "server-key", "client", "client-key"}
    server = x509.load_pem_x509_certificate(Path(written["server"]).read_bytes())
    assert sans(server).get_values_for_type(x509.DNSName) == ["example.test"]
