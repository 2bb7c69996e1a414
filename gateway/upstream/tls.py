"""TLS toward backends: which client policy applies, its compiled context, and the SAN rule.

A policy (``backendDefaults.clientPolicy.tls``, or a virtual service's own ``tls``
which replaces the default for that service) is compiled once per virtual service
into an `UpstreamTls`; every endpoint of the service connects with the same
``SSLContext``.  OpenSSL verifies the chain against the policy's trust file only
(never the system store).  Hostname checking is switched off in OpenSSL and done
here after the handshake by `verify_peer`, because App Mesh's rule is not the HTTPS
rule: an explicit SAN list may name URIs (SPIFFE ids) as well as DNS names, and the
same one-label wildcard semantics must apply to both the list and the default
(the backend's service-discovery name), see spec 2.12.3 and A16.

Names checked and sent as SNI for one endpoint (`UpstreamTls.peer_for`):

* DNS-discovered group: the DNS ``hostname`` (SNI and expected SAN).
* Static endpoint given as a host name: that name.
* Static endpoint given as an IP literal: SNI is the virtual service name (an IP
  cannot be SNI); the certificate must carry the virtual service name as a DNS SAN
  or the endpoint's IP as an IP SAN.
* A policy SAN list, when present, replaces the expected names (SNI stays as above).

The subject CN is never consulted; only subjectAltName entries count.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass, field

from gateway.config.model import ClientPolicyTls, DnsDiscovery, VirtualService
from gateway.tls_object import DirectSSLObject

log = logging.getLogger("gateway.upstream.tls")

# The upstream speaks HTTP/1.1 only (upstream/http1.py); advertising h2 would let a
# backend pick a protocol the pool cannot speak.
DEFAULT_ALPN: tuple[str, ...] = ("http/1.1",)


class UpstreamTlsError(ValueError):
    """A client policy whose files cannot be turned into a TLS context."""


@dataclass(frozen=True, slots=True)
class TlsPeer:
    """What one endpoint's connections send as SNI and must find in the server certificate."""
    server_hostname: str                 # "" = send no SNI
    expected_names: tuple[str, ...]


@dataclass(slots=True)
class UpstreamTlsStats:
    """Plain counters; proposed exposition (cluster scope, label virtual_service):

    gateway_upstream_ssl_handshake            handshakes that passed chain and SAN checks
    gateway_upstream_ssl_fail_verify_error    chain rejected by OpenSSL (untrusted, expired, ...)
    gateway_upstream_ssl_fail_verify_san      chain fine, no acceptable SAN
    gateway_upstream_ssl_connection_error     other handshake failures (alerts, protocol, EOF)
    gateway_upstream_ssl_context_reload{result="ok"|"error"}
    """
    handshake: int = 0
    fail_verify_error: int = 0
    fail_verify_san: int = 0
    connection_error: int = 0
    reload_ok: int = 0
    reload_error: int = 0
    # OpenSSL reason code (e.g. "CERTIFICATE_VERIFY_FAILED") -> count, for debugging pages.
    fail_reasons: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------ SAN matching


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def dns_name_matches(pattern: str, name: str) -> bool:
    """Does certificate DNS SAN `pattern` cover `name`?  A wildcard is only a whole
    leftmost label and covers exactly one non-empty label ("*.apps.local" covers
    "a.apps.local", not "apps.local" nor "a.b.apps.local")."""
    pattern = pattern.lower().rstrip(".")
    name = name.lower().rstrip(".")
    if not pattern or not name:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]          # ".apps.local"
        if "*" in suffix or suffix == ".":
            return False
        if not name.endswith(suffix):
            return False
        label = name[: -len(suffix)]
        return bool(label) and "." not in label
    if "*" in pattern:
        # Partial-label wildcards ("f*.apps.local") were never honoured by Envoy.
        return False
    return pattern == name


def _peer_sans(cert: dict) -> tuple[list[str], list[str], list]:
    dns, uris, ips = [], [], []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.append(value)
        elif kind == "URI":
            uris.append(value)
        elif kind == "IP Address":
            ip = _ip(value)
            if ip is not None:
                ips.append(ip)
    return dns, uris, ips


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
                expected_names: tuple[str, ...] | list[str]) -> str | None:
    """Check the server certificate of a finished handshake against `expected_names`.

    The certificate must carry at least one of the names: an IP literal matches an
    IP SAN, a name with "://" matches a URI SAN exactly, anything else matches a DNS
    SAN case-insensitively or through a one-label wildcard.  Returns None when it
    does, else a reason fit for a log line or an access-log detail."""
    if ssl_object is None:
        return "not a TLS connection"
    cert = ssl_object.getpeercert()
    if not cert:
        return "server presented no verified certificate"
    dns, uris, ips = _peer_sans(cert)
    if not (dns or uris or ips):
        return "server certificate has no subjectAltName"
    for name in expected_names:
        ip = _ip(name)
        if ip is not None:
            if ip in ips:
                return None
        elif "://" in name:
            if name in uris:
                return None
        elif any(dns_name_matches(pattern, name) for pattern in dns):
            return None
    shown = [*dns, *uris, *(str(i) for i in ips)]
    return (f"server certificate SANs {', '.join(shown)} match none of "
            f"{', '.join(expected_names) or '(nothing expected)'}")


def _sni_ok(name: str) -> bool:
    if not name or len(name) > 253 or _ip(name) is not None:
        return False
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return all(0 < len(label) <= 63 for label in name.rstrip(".").split("."))


# ----------------------------------------------------------------- the policy


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class UpstreamTls:
    """One virtual service's compiled client policy: context, SAN rule, rotation, counters."""

    __slots__ = ("service_name", "policy", "alpn", "context", "stats", "_signature")

    def __init__(self, service_name: str, policy: ClientPolicyTls,
                 alpn: tuple[str, ...] = DEFAULT_ALPN):
        self.service_name = service_name
        self.policy = policy
        self.alpn = alpn
        self.stats = UpstreamTlsStats()
        self._signature = self._files_signature()
        self.context: ssl.SSLContext = self._build()

    # ---------------------------------------------------------------- context

    def _files(self) -> tuple[str, ...]:
        files = [self.policy.validation.trust_chain]
        cert = self.policy.certificate
        if cert is not None:
            files += [cert.certificate_chain, cert.private_key]
        return tuple(files)

    def _files_signature(self) -> tuple:
        return tuple(_file_signature(f) for f in self._files())

    def _build(self) -> ssl.SSLContext:
        where = f"virtual service {self.service_name}: upstream TLS"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.sslobject_class = DirectSSLObject
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # The SAN rule lives in verify_peer; OpenSSL keeps the chain check.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        trust = self.policy.validation.trust_chain
        try:
            ctx.load_verify_locations(cafile=trust)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamTlsError(f"{where}: cannot load trust file {trust}: {exc}") from exc
        if not ctx.get_ca_certs():
            raise UpstreamTlsError(f"{where}: trust file {trust} holds no CA certificate")
        cert = self.policy.certificate
        if cert is not None:
            try:
                ctx.load_cert_chain(cert.certificate_chain, cert.private_key)
            except (OSError, ssl.SSLError) as exc:
                raise UpstreamTlsError(
                    f"{where}: cannot load client certificate {cert.certificate_chain} "
                    f"with key {cert.private_key}: {exc}") from exc
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    def reload_if_changed(self) -> bool:
        """Rebuild the context when a trust/certificate/key file changed on disk.

        Returns True when a new context is in place.  On a broken file set the old
        context stays and the failure is logged once per distinct file state, so a
        half-written rotation is retried when the next file lands.  Pooled
        connections are not closed: they were validated when they were opened."""
        signature = self._files_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            context = self._build()
        except UpstreamTlsError as exc:
            self.stats.reload_error += 1
            log.warning("%s; keeping the previous TLS context", exc)
            return False
        self.context = context
        self.stats.reload_ok += 1
        log.info("virtual service %s: upstream TLS files changed, context reloaded",
                 self.service_name)
        return True

    # ---------------------------------------------------------------- names

    def peer_for(self, host: str, dns: DnsDiscovery | None = None) -> TlsPeer:
        """SNI and acceptable SANs for an endpoint at `host` (from `dns`, or static).

        Compute once per endpoint, not per connection."""
        if dns is not None:
            discovery = dns.hostname.rstrip(".")
            expected: tuple[str, ...] = (discovery,)
        elif _ip(host) is not None:
            discovery = self.service_name
            expected = (self.service_name, host.strip("[]"))
        else:
            discovery = host.rstrip(".")
            expected = (discovery,)
        sans = self.policy.validation.subject_alternative_names
        if sans:
            expected = sans
        return TlsPeer(discovery if _sni_ok(discovery) else "", expected)

    # ---------------------------------------------------------------- outcome

    def check(self, ssl_object: ssl.SSLObject | None, peer: TlsPeer) -> str | None:
        """SAN check of a fresh connection, counted.  None = accept the connection."""
        reason = verify_peer(ssl_object, peer.expected_names)
        if reason is None:
            self.stats.handshake += 1
            return None
        self.stats.fail_verify_san += 1
        return f"upstream TLS: {reason}"

    def handshake_failed(self, exc: BaseException) -> str:
        """Count a failed handshake (exception from create_connection) and describe it."""
        stats = self.stats
        if isinstance(exc, ssl.SSLCertVerificationError):
            stats.fail_verify_error += 1
            detail = exc.verify_message or exc.reason or str(exc)
            code = exc.reason or "CERTIFICATE_VERIFY_FAILED"
            message = f"upstream TLS: server certificate rejected: {detail}"
        elif isinstance(exc, ssl.SSLError):
            stats.connection_error += 1
            code = exc.reason or type(exc).__name__
            message = f"upstream TLS handshake failed: {exc.reason or exc}"
        else:
            # A backend refusing us (e.g. no client certificate under TLS 1.2) often just
            # hangs up, which surfaces as a reset or EOF rather than an SSLError.
            stats.connection_error += 1
            code = type(exc).__name__
            message = f"upstream TLS handshake failed: {code}: {exc}" if str(exc) else \
                f"upstream TLS handshake failed: {code} (backend closed the connection)"
        stats.fail_reasons[code] = stats.fail_reasons.get(code, 0) + 1
        return message


# -------------------------------------------------------------- policy choice


def policy_for(service: VirtualService, gateway_default: ClientPolicyTls | None,
               port: int) -> ClientPolicyTls | None:
    """The enforced policy for connections to `port` of `service`, or None (plaintext).

    A service's own `tls` replaces the gateway default wholesale (ports and enforce
    included), so `enforce: false` on a service opts it out of the default."""
    policy = service.tls if service.tls is not None else gateway_default
    if policy is None or not policy.enforce:
        return None
    if policy.ports and port not in policy.ports:
        return None
    return policy


class UpstreamTlsRegistry:
    """Compiled policies keyed by (virtual service, policy, ALPN), so every endpoint
    of a service shares one context and a config reload that keeps a policy keeps
    its context (and rotation state)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ClientPolicyTls, tuple[str, ...]], UpstreamTls] = {}

    def get(self, service: VirtualService, gateway_default: ClientPolicyTls | None,
            port: int, alpn: tuple[str, ...] = DEFAULT_ALPN) -> UpstreamTls | None:
        policy = policy_for(service, gateway_default, port)
        if policy is None:
            return None
        key = (service.name, policy, alpn)
        tls = self._entries.get(key)
        if tls is None:
            tls = self._entries[key] = UpstreamTls(service.name, policy, alpn)
        return tls

    def __iter__(self):
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def reload_if_changed(self) -> bool:
        """Run rotation checks for every compiled policy; True if any context changed."""
        changed = False
        for tls in list(self._entries.values()):
            changed = tls.reload_if_changed() or changed
        return changed

    def retain(self, services, gateway_default: ClientPolicyTls | None) -> None:
        """After a config reload: drop compiled policies no service uses any more."""
        live = set()
        for service in services:
            policy = service.tls if service.tls is not None else gateway_default
            if policy is not None and policy.enforce:
                live.add((service.name, policy))
        for key in list(self._entries):
            if key[:2] not in live:
                del self._entries[key]


REGISTRY = UpstreamTlsRegistry()


def upstream_tls_for(service: VirtualService, gateway_default: ClientPolicyTls | None,
                     port: int, *, registry: UpstreamTlsRegistry | None = None,
                     alpn: tuple[str, ...] = DEFAULT_ALPN) -> UpstreamTls | None:
    """The compiled policy for connections to `port` of `service`, None for plaintext.

    Raises UpstreamTlsError when the policy's files cannot be loaded."""
    reg = registry if registry is not None else REGISTRY
    return reg.get(service, gateway_default, port, alpn)
