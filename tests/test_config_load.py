"""Loading: files, directories, formats, merging, and the model produced."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.config import model
from gateway.config.errors import ConfigError
from gateway.config.load import config_to_json, load_config

DATA = Path(__file__).parent / "data" / "config"

MINIMAL = """\
virtualGateway:
  virtualGatewayName: gw
  spec:
    listeners:
      - portMapping: {port: 8080, protocol: http}
gatewayRoutes:
  - gatewayRouteName: r
    spec:
      httpRoute:
        match: {prefix: /}
        action: {target: {virtualService: {virtualServiceName: svc}}}
virtualServices:
  - {virtualServiceName: svc, endpoints: ["127.0.0.1:9001"]}
"""


def errors(exc: ConfigError) -> list[str]:
    return [str(i) for i in exc.issues if i.severity == "error"]


@pytest.fixture
def in_data_dir(monkeypatch):
    # certificate paths in full.yaml are relative to the working directory, as at run time
    monkeypatch.chdir(DATA)


# --------------------------------------------------------------- the full example


def test_full_example_loads_into_the_model(in_data_dir):
    config, warnings = load_config("full.yaml")
    assert warnings == []
    assert config.sources == ("full.yaml",)

    vg = config.virtual_gateway
    assert vg.name == "ingress-gw"
    plain, tls_listener = vg.listeners
    assert plain == model.Listener(
        8080, "http",
        connection_pool=model.ConnectionPool("http", max_connections=1024, max_pending_requests=2048),
        health_check=model.HealthCheckPolicy("http", 10000, 2000, 2, 3, path="/ping", port=8080),
        proxy_protocol="optional")
    assert tls_listener.connection_pool == model.ConnectionPool("http2", max_requests=500)
    assert tls_listener.tls == model.ListenerTls(
        "STRICT", model.TlsFileCertificate("certs/server.pem", "certs/server.key"),
        model.TlsValidation("certs/ca.pem", ("client.example.com",)))
    assert vg.backend_tls == model.ClientPolicyTls(model.TlsValidation("certs/ca.pem"), True, (8443,))
    assert vg.access_log == model.AccessLog(
        "/dev/stdout", json_format=(("code", "%RESPONSE_CODE%"), ("path", "%REQ(:PATH)%")))

    products, beta = config.gateway_routes
    assert products == model.GatewayRoute(
        "products", "httpRoute", model.HttpRouteMatch(prefix="/products", port=8080),
        model.RouteTarget("product-catalog.local"),
        rewrite=model.RouteRewrite("ENABLED", model.PrefixRewrite(default_prefix="ENABLED")),
        priority=10, source="full.yaml")
    assert beta.route_type == "http2Route"
    assert beta.priority is None
    assert beta.match == model.HttpRouteMatch(
        path=model.PathMatch(regex="/checkout/[a-z]+"),
        hostname=model.HostnameMatch(suffix="example.com"),
        headers=(model.HeaderCondition("x-beta", model.ValueMatch("range", model.MatchRange(1, 100))),
                 model.HeaderCondition("x-debug", None, invert=True)),
        query_parameters=(model.QueryCondition("region", "eu"), model.QueryCondition("debug", None)),
        method="POST", port=8443)
    assert beta.target == model.RouteTarget("checkout.local", 8080)
    assert beta.rewrite == model.RouteRewrite(path_exact="/checkout")

    catalog = config.virtual_service("product-catalog.local")
    assert catalog.protocol == "http"
    (group,) = catalog.groups
    assert group.weight == 1
    assert group.endpoints == (model.Address("10.0.0.5", 8080), model.Address("::1", 8081))
    assert str(group.endpoints[1]) == "[::1]:8081"
    assert group.connection_pool == model.ConnectionPool("http", max_connections=512,
                                                         max_pending_requests=1024)
    assert group.health_check == model.HealthCheckPolicy("http", 5000, 2000, 2, 2, path="/health")
    assert group.outlier_detection == model.OutlierDetection(5, 10.0, 30.0, 50)
    assert catalog.timeout == model.Timeouts(per_request=15.0, idle=300.0)
    assert catalog.retry_policy == model.RetryPolicy(
        2, 2.5, http_retry_events=("server-error", "gateway-error"),
        tcp_retry_events=("connection-error",))
    assert catalog.tls == model.ClientPolicyTls(model.TlsValidation("certs/ca.pem"))
    assert catalog.source == "full.yaml"

    checkout = config.virtual_service("checkout.local")
    stable, canary = checkout.groups
    tcp_check = model.HealthCheckPolicy("tcp", 5000, 2000, 2, 2)
    assert stable == model.BackendGroup(90, endpoints=(model.Address("10.0.1.1", 8080),),
                                        health_check=tcp_check)
    # the service-level health check is the default of every weighted target
    assert canary == model.BackendGroup(
        10, dns=model.DnsDiscovery("checkout-canary.svc", 8080, response_type="ENDPOINTS"),
        health_check=tcp_check)
    assert checkout.timeout == model.Timeouts()

    assert config.settings == model.GatewaySettings(
        admin_address="127.0.0.1", admin_port=9901, workers=2, drain_delay=5.0, drain_timeout=30.0,
        limits=model.Limits(32768, 50, 120.0, 10.0))


def test_config_to_json_is_plain_json(in_data_dir):
    config, _ = load_config("full.yaml")
    data = config_to_json(config)
    assert json.loads(json.dumps(data)) == data
    assert data["virtual_gateway"]["listeners"][0]["port"] == 8080
    assert data["gateway_routes"][1]["match"]["headers"][0] == {
        "name": "x-beta", "match": {"kind": "range", "value": {"start": 1, "end": 100}},
        "invert": False}
    assert data["virtual_services"][0]["groups"][0]["endpoints"][1] == {"host": "::1", "port": 8081}
    assert data["sources"] == ["full.yaml"]


def test_defaults_when_optional_parts_are_absent(tmp_path):
    (tmp_path / "gw.yaml").write_text(MINIMAL)
    config, warnings = load_config(str(tmp_path / "gw.yaml"))
    assert warnings == []
    assert config.settings == model.GatewaySettings()
    route = config.gateway_routes[0]
    assert route.rewrite is None and route.priority is None
    vs = config.virtual_services[0]
    assert vs.protocol == "http"
    assert vs.groups == (model.BackendGroup(1, endpoints=(model.Address("127.0.0.1", 9001),)),)
    assert vs.retry_policy is None and vs.tls is None
    assert config.virtual_gateway.listeners[0].proxy_protocol == "off"


# -------------------------------------------------------------------- formats


def test_json_file(tmp_path):
    import yaml
    (tmp_path / "gw.json").write_text(json.dumps(yaml.safe_load(MINIMAL)))
    config, _ = load_config([str(tmp_path / "gw.json")])
    assert config.gateway_routes[0].name == "r"


def test_json_syntax_error_has_line(tmp_path):
    f = tmp_path / "gw.json"
    f.write_text('{\n  "virtualGateway": {\n    "spec": [,]\n  }\n}\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    (msg,) = errors(e.value)
    assert msg.startswith(f"{f}: JSON syntax error at line 3, column 14: ")


def test_yaml_syntax_error_has_line(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(MINIMAL.replace("match: {prefix: /}", "match: {prefix: /"))
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    (msg,) = errors(e.value)
    assert msg.startswith(f"{f}: YAML syntax error at line 11")


def test_yaml_duplicate_key_is_an_error(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(MINIMAL.replace("match: {prefix: /}", "match: {prefix: /, prefix: /x}"))
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert errors(e.value) == [
        f"{f}: YAML syntax error at line 10, column 28: duplicate key 'prefix' (first at line 10)"]


@pytest.mark.parametrize("text, expected", [
    ("mode: off", "off"),                # YAML 1.1 would read a boolean false
    ("mode: optional", "optional"),
])
def test_yaml_reads_off_as_a_string(tmp_path, text, expected):
    f = tmp_path / "gw.yaml"
    f.write_text(MINIMAL.replace("protocol: http}", "protocol: http}\n        proxyProtocol: {%s}" % text, 1))
    config, _ = load_config(str(f))
    assert config.virtual_gateway.listeners[0].proxy_protocol == expected


def test_yaml_yes_and_leading_zero_keep_json_meaning(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(MINIMAL.replace("match: {prefix: /}",
                                 "match: {prefix: /, headers: [{name: x-flag, match: {exact: yes}}]}")
                 .replace("port: 8080", "port: 08080"))
    config, _ = load_config(str(f))
    assert config.gateway_routes[0].match.headers[0].match == model.ValueMatch("exact", "yes")
    assert config.virtual_gateway.listeners[0].port == 8080


def test_empty_and_null_documents_are_skipped(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text("---\n" + MINIMAL + "---\n# nothing\n")
    config, _ = load_config(str(f))
    assert len(config.gateway_routes) == 1


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must be an object with keys virtualGateway, gatewayRoutes, virtualServices, gateway (got list)"),
    ("just text", 'must be an object with keys virtualGateway, gatewayRoutes, virtualServices, gateway (got string "just text")'),
])
def test_top_level_must_be_a_mapping(tmp_path, content, message):
    f = tmp_path / "gw.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert f"{f}: {message}" in errors(e.value)


def test_missing_file_and_bad_extension(tmp_path):
    txt = tmp_path / "gw.txt"
    txt.write_text(MINIMAL)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_config([str(missing), str(txt)])
    errs = errors(e.value)
    assert f"{missing}: file not found" in errs
    assert f"{txt}: unsupported file type (expected .yaml, .yml or .json)" in errs


def test_unreadable_file(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_bytes(b"virtualGateway: \xff\xfe\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert errors(e.value)[0].startswith(f"{f}: not UTF-8 text")


# ----------------------------------------------------------------- directories


def test_directory_merges_files_in_name_order():
    config, warnings = load_config(str(DATA / "dir"))
    assert warnings == []
    assert [r.name for r in config.gateway_routes] == ["a", "b"]
    assert [r.source for r in config.gateway_routes] == [
        str(DATA / "dir" / "20-routes.json"), str(DATA / "dir" / "30-services.yml")]
    assert config.settings.workers == 1
    assert config.sources == tuple(str(DATA / "dir" / n)
                                   for n in ("10-gateway.yaml", "20-routes.json", "30-services.yml"))


@pytest.fixture
def copied_dir(tmp_path):
    d = tmp_path / "conf"
    shutil.copytree(DATA / "dir", d)
    return d


def test_duplicate_route_across_files_names_both(copied_dir):
    (copied_dir / "40-more.yaml").write_text("""\
gatewayRoutes:
  - gatewayRouteName: a
    spec:
      httpRoute:
        match: {prefix: /other}
        action: {target: {virtualService: {virtualServiceName: svc-a}}}
""")
    with pytest.raises(ConfigError) as e:
        load_config(str(copied_dir))
    assert errors(e.value) == [
        f'{copied_dir}/40-more.yaml: gatewayRoutes[a]: duplicate gateway route name "a" '
        f"(first defined in {copied_dir}/20-routes.json)"]


def test_duplicate_virtual_service_across_files_names_both(copied_dir):
    (copied_dir / "05-svc.json").write_text(
        '{"virtualServices": [{"virtualServiceName": "svc-a", "dns": {"hostname": "a.svc", "port": 80}}]}')
    with pytest.raises(ConfigError) as e:
        load_config(str(copied_dir))
    assert errors(e.value) == [
        f'{copied_dir}/30-services.yml: virtualServices[svc-a]: duplicate virtual service name "svc-a" '
        f"(first defined in {copied_dir}/05-svc.json)"]


def test_two_gateway_blocks_name_both_files(copied_dir):
    (copied_dir / "50-settings.yaml").write_text("gateway: {workers: 4}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(copied_dir))
    assert errors(e.value) == [
        f"{copied_dir}/50-settings.yaml: gateway: a second gateway: block "
        f"(the first is in {copied_dir}/10-gateway.yaml)"]


def test_two_virtual_gateways_name_both_files(copied_dir):
    (copied_dir / "60-vg.yaml").write_text(
        "virtualGateway: {virtualGatewayName: other, spec: {listeners: "
        "[{portMapping: {port: 9090, protocol: http}}]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(copied_dir))
    assert errors(e.value) == [
        f"{copied_dir}/60-vg.yaml: virtualGateway: a second virtual gateway "
        f"(the first is in {copied_dir}/10-gateway.yaml); one configuration describes one gateway"]


def test_empty_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path))
    assert f"{tmp_path}: no .yaml, .yml or .json files in directory" in errors(e.value)


def test_list_of_files_is_merged(tmp_path):
    (tmp_path / "a.yaml").write_text(MINIMAL.split("gatewayRoutes:")[0])
    (tmp_path / "b.yaml").write_text("gatewayRoutes:" + MINIMAL.split("gatewayRoutes:")[1])
    config, _ = load_config([str(tmp_path / "b.yaml"), str(tmp_path / "a.yaml")])
    assert config.virtual_gateway.name == "gw"
    assert config.sources == (str(tmp_path / "b.yaml"), str(tmp_path / "a.yaml"))


def test_errors_from_several_files_are_reported_together(copied_dir):
    (copied_dir / "20-routes.json").write_text(
        '{"gatewayRoutes": [{"gatewayRouteName": "a", "spec": {"httpRoute": {'
        '"match": {"prefix": "a"}, "action": {"target": {"virtualService": '
        '{"virtualServiceName": "svc-a"}}}}}}]}')
    (copied_dir / "10-gateway.yaml").write_text(
        (copied_dir / "10-gateway.yaml").read_text().replace("port: 8080", "port: 80800"))
    with pytest.raises(ConfigError) as e:
        load_config(str(copied_dir))
    assert errors(e.value) == [
        f"{copied_dir}/10-gateway.yaml: virtualGateway.spec.listeners[0].portMapping.port: "
        "must be between 1 and 65535 (got 80800)",
        f'{copied_dir}/20-routes.json: gatewayRoutes[a].spec.httpRoute.match.prefix: must start with "/"',
    ]
    # the exception text lists every error, one per line
    assert str(e.value).count("\n") == 1
