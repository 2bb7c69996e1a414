"""listeners[].sniCertificates (extension): parsing, validation, errors."""
from __future__ import annotations

import pytest

from gateway.config import model
from gateway.config.errors import ConfigError
from gateway.config.load import load_config

ROUTES = """\
gatewayRoutes:
  - gatewayRouteName: r
    spec:
      httpRoute:
        match: {prefix: /}
        action: {target: {virtualService: {virtualServiceName: svc}}}
virtualServices:
  - {virtualServiceName: svc, endpoints: ["127.0.0.1:9001"]}
"""


def write(tmp_path, listener: str) -> str:
    for name in ("default.pem", "default-key.pem", "a.pem", "a-key.pem", "b.pem", "b-key.pem"):
        (tmp_path / name).write_text("placeholder\n")
    path = tmp_path / "gw.yaml"
    path.write_text("virtualGateway:\n  virtualGatewayName: gw\n  spec:\n    listeners:\n"
                    + "\n".join("      " + line for line in listener.strip().splitlines())
                    + "\n" + ROUTES)
    return str(path)


TLS = """\
  tls:
    mode: {mode}
    certificate: {{file: {{certificateChain: {d}/default.pem, privateKey: {d}/default-key.pem}}}}
"""


def listener(tmp_path, sni: str, mode: str = "STRICT", tls: bool = True) -> str:
    text = "- portMapping: {port: 8443, protocol: http}\n"
    if tls:
        text += TLS.format(mode=mode, d=tmp_path)
    text += "  sniCertificates:\n" + "\n".join("    " + line for line in sni.strip().splitlines())
    return text


def issues(exc: ConfigError) -> list[str]:
    return [str(i) for i in exc.issues if i.severity == "error"]


def test_sni_certificates_parse_lowercased_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, """
- {serverNames: [API.Example.com, "*.Shop.example.com"], certificateChain: a.pem, privateKey: a-key.pem}
- {serverNames: [other.example.com.], certificateChain: b.pem, privateKey: b-key.pem}
"""))
    config, warnings = load_config(path)
    assert warnings == []
    (lst,) = config.virtual_gateway.listeners
    assert lst.sni_certificates == (
        model.SniCertificate(("api.example.com", "*.shop.example.com"),
                             model.TlsFileCertificate("a.pem", "a-key.pem")),
        model.SniCertificate(("other.example.com",), model.TlsFileCertificate("b.pem", "b-key.pem")),
    )
    assert lst.tls.certificate.certificate_chain.endswith("default.pem")


def test_no_sni_certificates_is_empty_tuple(tmp_path):
    path = write(tmp_path, "- portMapping: {port: 8443, protocol: http}\n" + TLS.format(mode="STRICT", d=tmp_path))
    config, _ = load_config(path)
    assert config.virtual_gateway.listeners[0].sni_certificates == ()


def test_sni_without_tls_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, "- {serverNames: [a.example.com], certificateChain: a.pem, privateKey: a-key.pem}", tls=False))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (msg,) = issues(exc.value)
    assert "sniCertificates" in msg and "needs tls" in msg


def test_missing_file_is_reported_with_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, "- {serverNames: [a.example.com], certificateChain: nope.pem, privateKey: a-key.pem}"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (msg,) = issues(exc.value)
    assert "sniCertificates[0].certificateChain" in msg and "nope.pem" in msg


def test_disabled_mode_does_not_open_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, "- {serverNames: [a.example.com], certificateChain: nope.pem, privateKey: nope-key.pem}",
                                    mode="DISABLED"))
    config, _ = load_config(path)
    assert config.virtual_gateway.listeners[0].sni_certificates[0].certificate.certificate_chain == "nope.pem"


@pytest.mark.parametrize("bad", ['"*"', '"a.*.example.com"', '"**.example.com"', '"a..b"', '"host:443"', "''", "42"])
def test_bad_server_names_are_rejected(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, f"- {{serverNames: [{bad}], certificateChain: a.pem, privateKey: a-key.pem}}"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any("sniCertificates[0].serverNames[0]" in m for m in issues(exc.value))


def test_duplicate_server_name_across_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, """
- {serverNames: [a.example.com], certificateChain: a.pem, privateKey: a-key.pem}
- {serverNames: [A.example.com], certificateChain: b.pem, privateKey: b-key.pem}
"""))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (msg,) = issues(exc.value)
    assert "sniCertificates[1].serverNames[0]" in msg and "sniCertificates[0]" in msg


@pytest.mark.parametrize("entry,fragment", [
    ("- {serverNames: [], certificateChain: a.pem, privateKey: a-key.pem}", "serverNames"),
    ("- {serverNames: [a.example.com], privateKey: a-key.pem}", "certificateChain"),
    ("- {serverNames: [a.example.com], certificateChain: a.pem, privateKey: a-key.pem, extra: 1}", "extra"),
])
def test_shape_errors(tmp_path, monkeypatch, entry, fragment):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, listener(tmp_path, entry))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any(fragment in m for m in issues(exc.value)), issues(exc.value)


def test_empty_list_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "- portMapping: {port: 8443, protocol: http}\n" + TLS.format(mode="STRICT", d=tmp_path)
                 + "  sniCertificates: []\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any("sniCertificates" in m for m in issues(exc.value))
