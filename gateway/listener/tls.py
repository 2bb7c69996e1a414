"""Downstream TLS termination for one listener (appmesh-gateway.md 2.12.1, 2.12.2).

`TlsTermination(listener)` owns the listener's `server_context`: the one
`ssl.SSLContext` handed to the server for its whole life.  Certificates live in
per-name contexts that `sni_callback` (run by OpenSSL for every ClientHello,
SNI or not) installs on each new connection, so rotating files only swaps a
dict: handshakes already done keep their context, new ones get the new one.
Session-ticket keys belong to the context a connection *started* with, so
tickets issued before a rotation still resume after it.

The SAN rule (2.12.2 step 2) cannot run inside the handshake (Python exposes no
verify callback); `accept.py` calls `handshake_ok()` right after the handshake
and closes the connection before any byte of a request is read.
"""
from __future__ import annotations

import hashlib
import logging
import os
import ssl
import weakref
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from gateway.config import model
from gateway.tls_object import DirectSSLObject

log = logging.getLogger("gateway.tls")

# Offered protocols, most preferred first: the HTTP/1.1 protocol hands "h2"
# connections to listener/http2.py as soon as the handshake is done.
ALPN_PROTOCOLS: tuple[str, ...] = ("h2", "http/1.1")

# TLS 1.2: forward-secret key exchange and AEAD only.  TLS 1.3 suites are all AEAD
# and are not affected by set_ciphers().
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))

# Failure reasons (the label values of the handshake-failure counter).
NO_CLIENT_CERT = "no_client_certificate"
UNKNOWN_CA = "unknown_ca"
CERT_EXPIRED = "certificate_expired"
CERT_INVALID = "certificate_invalid"
SAN_MISMATCH = "san_mismatch"
PROTOCOL = "protocol"
PEER_ALERT = "peer_alert"
TIMEOUT = "timeout"
CLOSED = "connection_closed"
OTHER = "other"

# X509_V_ERR_* codes grouped by what an operator would do about them.
_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21, 27, 30}   # issuer unknown / self-signed / untrusted
_EXPIRED_CODES = {9, 10}                           # not yet valid, expired
_PROTOCOL_REASONS = {
    "WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNSUPPORTED_PROTOCOL",
    "UNKNOWN_PROTOCOL", "NO_SHARED_CIPHER", "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW",
    "NO_APPLICATION_PROTOCOL", "RECORD_LENGTH_MISMATCH", "PACKET_LENGTH_TOO_LONG",
    "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SHARED_GROUPS", "BAD_RECORD_TYPE",
    "UNEXPECTED_MESSAGE", "TLSV1_ALERT_PROTOCOL_VERSION", "INAPPROPRIATE_FALLBACK",
}


class TlsConfigError(Exception):
    """The certificate, key or trust files cannot be used (message names the file)."""


@dataclass
class TlsStats:
    """Plain fields the metrics exposition reads at scrape time."""
    handshakes: int = 0
    handshake_failures: dict[str, int] = field(default_factory=dict)
    reloads_ok: int = 0
    reloads_failed: int = 0
    first_byte_timeouts: int = 0      # PERMISSIVE: client sent nothing before the deadline
    plaintext_connections: int = 0    # PERMISSIVE: connections that chose plaintext
    # certificateChain path -> leaf notAfter (Unix seconds) of the certificate being served
    cert_not_after: dict[str, float] = field(default_factory=dict)

    def failed(self, reason: str) -> None:
        self.handshake_failures[reason] = self.handshake_failures.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """A verified client certificate, parsed once per connection."""
    sha256: str
    subject: str                      # RFC 2253 / 4514 order, as Envoy prints it
    uris: tuple[str, ...]
    dns: tuple[str, ...]
    xfcc: bytes                       # one Envoy x-forwarded-client-cert element


@dataclass(frozen=True, slots=True)
class _Contexts:
    """One generation of loaded files: swapped as a whole on rotation."""
    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]    # "example.com" for "*.example.com"


class TlsTermination:
    """TLS for one listener whose `tls.mode` is STRICT or PERMISSIVE."""

    def __init__(self, listener: model.Listener, stats: TlsStats | None = None):
        tls = listener.tls
        if tls is None or tls.mode == "DISABLED" or tls.certificate is None:
            raise ValueError(f"listener {listener.port}: TLS is not enabled")
        self.port = listener.port
        self.mode = tls.mode
        self.permissive = tls.mode == "PERMISSIVE"
        self.validation = tls.validation
        self._certificate = tls.certificate
        self._sni = listener.sni_certificates
        self._allowed_sans = frozenset(tls.validation.subject_alternative_names) \
            if tls.validation else frozenset()
        self.stats = stats or TlsStats()
        self._peers: weakref.WeakKeyDictionary[ssl.SSLObject, PeerIdentity] = \
            weakref.WeakKeyDictionary()
        self._signature = self._stat_files()
        self._failed_signature: tuple | None = None
        self._current = self._build_all()          # raises TlsConfigError: startup fails
        # The long-lived context: itself a copy of the default so a handshake is
        # correct even before the callback runs, and the owner of the ticket keys.
        self.server_context = self._build(self._certificate)
        self.server_context.sni_callback = self._on_client_hello
        self.server_context.sslobject_class = DirectSSLObject

    # ---------------------------------------------------------------- contexts

    def _files(self) -> list[str]:
        paths = [self._certificate.certificate_chain, self._certificate.private_key]
        for sni in self._sni:
            paths += [sni.certificate.certificate_chain, sni.certificate.private_key]
        if self.validation is not None:
            paths.append(self.validation.trust_chain)
        return paths

    def _stat_files(self) -> tuple:
        out = []
        for path in self._files():
            try:
                st = os.stat(path)
                out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as exc:
                out.append((path, exc.errno))
        return tuple(out)

    def _build(self, cert: model.TlsFileCertificate) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
        # Session tickets stay on (OpenSSL's default); nothing sets OP_NO_TICKET.
        try:
            ctx.load_cert_chain(cert.certificate_chain, cert.private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"certificate {cert.certificate_chain} / key "
                                 f"{cert.private_key}: {_describe(exc)}") from None
        if self.validation is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                ctx.load_verify_locations(cafile=self.validation.trust_chain)
            except (OSError, ssl.SSLError) as exc:
                raise TlsConfigError(f"trust {self.validation.trust_chain}: "
                                     f"{_describe(exc)}") from None
        return ctx

    def _build_all(self) -> _Contexts:
        """Load every file of the listener, or raise without touching the live state."""
        default = self._build(self._certificate)
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        expiry = {self._certificate.certificate_chain: _not_after(self._certificate.certificate_chain)}
        for sni in self._sni:
            ctx = self._build(sni.certificate)
            expiry[sni.certificate.certificate_chain] = _not_after(sni.certificate.certificate_chain)
            for name in sni.server_names:
                if name.startswith("*."):
                    wildcard[name[2:]] = ctx
                else:
                    exact[name] = ctx
        self.stats.cert_not_after = expiry
        return _Contexts(default, exact, wildcard)

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        current = self._current
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = current.exact.get(name)
            if ctx is not None:
                return ctx
            _, dot, parent = name.partition(".")
            if dot:
                ctx = current.wildcard.get(parent)
                if ctx is not None:
                    return ctx
        return current.default

    def _on_client_hello(self, ssl_object: ssl.SSLObject, server_name: str | None,
                         _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self.context_for(server_name)

    # ---------------------------------------------------------------- rotation

    def reload_if_changed(self) -> bool:
        """Reload when any file's inode, size or mtime changed; True if swapped.

        A failed reload is logged and counted once per distinct file state and the
        previous certificates keep serving; the next change is tried again."""
        signature = self._stat_files()
        if signature == self._signature or signature == self._failed_signature:
            return False
        try:
            fresh = self._build_all()
        except (TlsConfigError, ValueError) as exc:
            self._failed_signature = signature
            self.stats.reloads_failed += 1
            log.error("listener %d: TLS reload failed, keeping the previous certificates: %s",
                      self.port, exc)
            return False
        self._current = fresh
        self._signature = signature
        self._failed_signature = None
        self.stats.reloads_ok += 1
        log.info("listener %d: TLS certificates reloaded", self.port)
        return True

    # -------------------------------------------------------------- handshakes

    def peer(self, ssl_object: ssl.SSLObject) -> PeerIdentity | None:
        """The verified client certificate (None without mTLS); parsed once per connection."""
        if self.validation is None:
            return None
        identity = self._peers.get(ssl_object)
        if identity is None:
            der = ssl_object.getpeercert(binary_form=True)
            if der is None:
                return None
            identity = _identity(der)
            self._peers[ssl_object] = identity
        return identity

    def check_peer(self, ssl_object: ssl.SSLObject) -> str | None:
        """Rejection reason after a completed handshake, or None to admit the connection."""
        if self.validation is None:
            return None
        identity = self.peer(ssl_object)
        if identity is None:
            return NO_CLIENT_CERT        # unreachable with CERT_REQUIRED; kept as a guard
        if self._allowed_sans and self._allowed_sans.isdisjoint(identity.dns + identity.uris):
            return SAN_MISMATCH
        return None

    def xfcc(self, ssl_object: ssl.SSLObject) -> bytes | None:
        identity = self.peer(ssl_object)
        return identity.xfcc if identity is not None else None

    def handshake_ok(self, ssl_object: ssl.SSLObject) -> bool:
        """Count a completed handshake; False when the peer must be disconnected."""
        reason = self.check_peer(ssl_object)
        if reason is not None:
            self.stats.failed(reason)
            identity = self.peer(ssl_object)
            log.info("listener %d: client certificate refused (%s): subject %s, SANs %s",
                     self.port, reason, identity.subject if identity else "-",
                     ", ".join((identity.dns + identity.uris) if identity else ()) or "none")
            return False
        self.stats.handshakes += 1
        return True

    def handshake_failed(self, exc: BaseException) -> str:
        reason = classify(exc)
        self.stats.failed(reason)
        log.debug("listener %d: TLS handshake failed (%s): %s", self.port, reason, exc)
        return reason


def classify(exc: BaseException) -> str:
    """Map the exception a failed server-side handshake raised to a failure reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _EXPIRED_CODES:
            return CERT_EXPIRED
        if code in _UNKNOWN_CA_CODES:
            return UNKNOWN_CA
        return CERT_INVALID
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return NO_CLIENT_CERT
        if reason in _PROTOCOL_REASONS:
            return PROTOCOL
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            return PEER_ALERT
        if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return CLOSED
        return OTHER
    if isinstance(exc, (TimeoutError,)) or "longer than" in str(exc):
        return TIMEOUT        # asyncio and uvloop abort a slow handshake this way
    if isinstance(exc, (ConnectionError, EOFError)):
        return CLOSED
    return OTHER


# ------------------------------------------------------------------------ helpers


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason.lower().replace('_', ' ')} ({exc.library or 'ssl'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _not_after(chain_path: str) -> float:
    try:
        with open(chain_path, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise TlsConfigError(f"certificate {chain_path}: {exc}") from None
    return leaf.not_valid_after_utc.timestamp()


def _identity(der: bytes) -> PeerIdentity:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns = uris = ()
    digest = hashlib.sha256(der).hexdigest()
    subject = cert.subject.rfc4514_string()
    # Envoy: Hash, Subject (always quoted), URI (the first URI SAN; the key is present
    # even when empty), then one DNS pair per DNS SAN.
    parts = [f"Hash={digest}", f"Subject={_quoted(subject)}",
             f"URI={_xfcc_value(uris[0]) if uris else ''}"]
    parts += [f"DNS={_xfcc_value(d)}" for d in dns]
    return PeerIdentity(digest, subject, uris, dns, _header_safe(";".join(parts)))


def _quoted(value: str) -> str:
    # Envoy documents only " -> \"; escaping the backslash too (a quoted-pair, as in
    # HTTP) keeps a DN's own RFC 4514 escapes unambiguous.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _xfcc_value(value: str) -> str:
    """Envoy's rule: a value holding `,` `;` `=` or `"` is double-quoted."""
    return _quoted(value) if any(c in value for c in ',;="\\') else value


def _header_safe(text: str) -> bytes:
    """Control and non-ASCII characters as \\XX (per UTF-8 byte), as OpenSSL prints names:
    a certificate must never be able to inject a header line."""
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    out = bytearray()
    for ch in text:
        if " " <= ch < "\x7f":
            out += ch.encode("ascii")
        else:
            out += b"".join(b"\\%02X" % b for b in ch.encode("utf-8"))
    return bytes(out)


def termination_for(listener: model.Listener) -> TlsTermination | None:
    """The listener's TLS, or None when it serves plaintext only (no tls, or DISABLED:
    whose certificate files are never opened, 2.12.1)."""
    tls = listener.tls
    if tls is None or tls.mode == "DISABLED":
        return None
    return TlsTermination(listener)
