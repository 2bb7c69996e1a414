"""Development certificates: a throw-away CA, server and client certificates.

Used by `gateway certs [--out DIR]` and by the TLS tests.  Keys are ECDSA P-256
(small, fast to make, accepted everywhere).  Nothing here is meant for
production: the CA key sits next to the CA certificate.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEMO_HOSTNAMES: tuple[str, ...] = (
    "localhost", "127.0.0.1", "::1", "*.local", "gateway.local",
)
CLIENT_URI = "spiffe://demo/client"
CLIENT_DNS = "client.local"


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str | os.PathLike[str], stem: str) -> tuple[str, str]:
        """Write `<stem>.pem` and `<stem>-key.pem` (0600) into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cert_path = d / f"{stem}.pem"
        key_path = d / f"{stem}-key.pem"
        _write_atomic(cert_path, self.cert_pem, 0o644)
        _write_atomic(key_path, self.key_pem, 0o600)
        return str(cert_path), str(key_path)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # The key must never exist on disk with wider permissions, even briefly,
    # and a reader (a reloading gateway) must never see half a file.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "appmesh-gateway dev"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def make_ca(common_name: str, *, not_after_days: int = 365) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=not_after_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _general_names(dns, uris, ips) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for d in dns:
        # "127.0.0.1" in a hostname list is an IP SAN: clients never match an
        # IP literal against a DNS SAN.
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(d)))
        except ValueError:
            names.append(x509.DNSName(d))
    names.extend(x509.UniformResourceIdentifier(u) for u in uris)
    names.extend(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)
    return names


def issue(
    ca: Issued,
    common_name: str,
    *,
    dns: tuple[str, ...] | list[str] = (),
    uris: tuple[str, ...] | list[str] = (),
    ips: tuple[str, ...] | list[str] = (),
    client: bool = False,
    server: bool = True,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by `ca`.  Pass `not_after` in the past for an expired one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    nb = not_before or (now - _dt.timedelta(minutes=5))
    na = not_after or (now + _dt.timedelta(days=90))
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    names = _general_names(dns, uris, ips)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_dev_certs(
    out_dir: str | os.PathLike[str] = "certs",
    hostnames: tuple[str, ...] | list[str] = DEMO_HOSTNAMES,
    *,
    echo=print,
) -> dict[str, str]:
    """Write ca / server / client certificates and keys into `out_dir`; return stem -> path."""
    ca = make_ca("appmesh-gateway dev CA", not_after_days=825)
    server = issue(ca, str(hostnames[0]) if hostnames else "gateway", dns=tuple(hostnames),
                   server=True)
    client = issue(ca, "demo-client", dns=(CLIENT_DNS,), uris=(CLIENT_URI,),
                   client=True, server=False)
    written: dict[str, str] = {}
    for stem, item in (("ca", ca), ("server", server), ("client", client)):
        cert_path, key_path = item.write(out_dir, stem)
        written[stem] = cert_path
        written[f"{stem}-key"] = key_path
    for path in written.values():
        echo(f"wrote {path}")
    echo("development use only: keep the *-key.pem files out of version control")
    return written


def certs_main(out: str) -> int:
    """`gateway certs [--out DIR]`."""
    try:
        write_dev_certs(out)
    except OSError as exc:
        print(f"gateway certs: cannot write to {out}: {exc}", file=sys.stderr)
        return 1
    return 0
