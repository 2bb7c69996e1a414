"""The `gateway` command: validate, routes, explain, run (refusing bad configs), demo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import free_port, gateway_doc, route, service

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def run_cli(*args, timeout=30):
    return subprocess.run(GATEWAY + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def write(tmp_path, doc, name="gateway.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


BROKEN = {
    "virtualGateway": {"virtualGatewayName": "gw", "spec": {"listeners": [
        {"portMapping": {"port": 8080, "protocol": "http"}}]}},
    "gatewayRoutes": [
        {"gatewayRouteName": "products", "spec": {"httpRoute": {
            "match": {"prefix": "products"},
            "action": {"target": {"virtualService": {"virtualServiceName": "catalog.local"}}}}}},
        {"gatewayRouteName": "orders", "spec": {"priority": 5000, "httpRoute": {
            "match": {"prefix": "/orders"},
            "action": {"target": {"virtualService": {"virtualServiceName": "missing.local"}}}}}},
    ],
    "virtualServices": [{"virtualServiceName": "catalog.local", "endpoints": ["127.0.0.1:9001"]}],
}


def test_validate_lists_every_error_and_fails(tmp_path):
    path = write(tmp_path, BROKEN)
    result = run_cli("validate", "-c", path)
    assert result.returncode != 0
    err = result.stderr
    assert f'{path}: gatewayRoutes[products].spec.httpRoute.match.prefix: must start with "/"' in err
    assert f"{path}: gatewayRoutes[orders].spec.priority:" in err
    assert "missing.local" in err
    assert "3 error(s)" in err


def test_run_refuses_invalid_config_with_same_messages(tmp_path):
    path = write(tmp_path, BROKEN)
    result = run_cli("run", "--config", path)
    assert result.returncode == 2
    assert 'gatewayRoutes[products].spec.httpRoute.match.prefix: must start with "/"' in result.stdout
    assert "refusing to start" in result.stdout


def test_validate_ok_and_warns_about_hidden_routes(tmp_path):
    doc = gateway_doc(8080, [
        route("api", "/v1", "svc.local", hostname={"exact": "api.example.com"}),
        route("catch-all", "/", "svc.local"),
        route("products", "/products", "svc.local", priority=10),
        route("products-special", "/products/special", "svc.local", priority=20),
    ], [service("svc.local", 9001)])
    result = run_cli("validate", "-c", write(tmp_path, doc))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'route "catch-all"' in out and "api.example.com" in out
    assert 'route "products-special" can never match' in out and 'route "products"' in out
    assert "OK" in out


def test_routes_prints_evaluation_order(tmp_path):
    doc = gateway_doc(8080, [
        route("catch-all", "/", "svc.local"),
        route("paths", "/paths", "svc.local"),
        route("green-exact", path={"exact": "/paths/green"}, target="svc.local", priority=0),
    ], [service("svc.local", 9001)])
    result = run_cli("routes", "-c", write(tmp_path, doc))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("green-exact") < out.index("paths") < out.index("catch-all")


def test_explain_shows_winner_rewrite_and_reasons(tmp_path):
    doc = gateway_doc(8080, [
        route("products-v2", "/products", "v2.local", priority=0,
              headers=[{"name": "x-version", "match": {"exact": "v2"}}]),
        route("products", "/products", "catalog.local", priority=10),
    ], [service("v2.local", 9003), service("catalog.local", 9001)])
    path = write(tmp_path, doc)
    result = run_cli("explain", "-c", path, "GET", "http://shop.example.com/products/42?x=1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "products-v2" in out and "x-version" in out
    assert "catalog.local" in out and "/42?x=1" in out
    result = run_cli("explain", "-c", path, "GET", "http://shop.example.com/products/42",
                     "-H", "x-version: v2")
    assert "v2.local" in result.stdout
    result = run_cli("explain", "-c", path, "GET", "http://shop.example.com/other")
    assert result.returncode == 1


def test_explain_grpc_call(tmp_path):
    doc = gateway_doc(8080, [{"gatewayRouteName": "echo", "spec": {"grpcRoute": {
        "match": {"serviceName": "test.Echo"},
        "action": {"target": {"virtualService": {"virtualServiceName": "echo.local"}}}}}}],
        [service("echo.local", 9001, protocol="grpc")])
    doc["virtualGateway"]["spec"]["listeners"][0]["portMapping"]["protocol"] = "grpc"
    path = write(tmp_path, doc)
    result = run_cli("explain", "-c", path, "GRPC", "grpc://api.local/test.Echo/Unary",
                     "-H", "x-tenant: a")
    assert result.returncode == 0, result.stderr
    assert 'route "echo"' in result.stdout and "service test.Echo method Unary" in result.stdout
    result = run_cli("explain", "-c", path, "GRPC", "grpc://api.local/other.Echo/Unary")
    assert result.returncode == 1
    assert "grpc-status 12 (UNIMPLEMENTED)" in result.stdout


def _wait_http(url, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_run_serves_until_sigterm(tmp_path):
    gport, aport = free_port(), free_port()
    doc = gateway_doc(gport, [route("r", "/", "svc.local")], [service("svc.local", free_port())],
                      admin_port=aport)
    proc = subprocess.Popen(GATEWAY + ["run", "-c", write(tmp_path, doc)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_http(f"http://127.0.0.1:{aport}/ping", time.monotonic() + 15) == b"OK"
        with pytest.raises(urllib.error.HTTPError) as err:     # backend down: 503 from the gateway
            urllib.request.urlopen(f"http://127.0.0.1:{gport}/x", timeout=5)
        assert err.value.code == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_demo_walkthrough():
    """README demo: /products/item123 reaches product-catalog as /item123 with its own Host."""
    proc = subprocess.Popen(GATEWAY + ["demo", "-c", "config/gateway.yaml"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        _wait_http("http://127.0.0.1:9901/ready", deadline)
        info = json.loads(_wait_http("http://127.0.0.1:8080/products/item123", deadline))
        assert info["backend"] == "product-catalog"
        assert info["path"] == "/item123"
        assert info["host"] == "product-catalog.local"
        request = urllib.request.Request("http://127.0.0.1:8080/products/item123",
                                         headers={"x-version": "v2"})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.loads(r.read())["backend"] == "product-catalog-v2"
        with urllib.request.urlopen("http://127.0.0.1:8080/orders/1", timeout=5) as r:
            assert json.loads(r.read())["backend"] == "order-processing"
        metrics = _wait_http("http://127.0.0.1:9901/metrics", deadline).decode()
        assert ('gateway_route_rq_total{code_class="2xx",route="products",'
                'virtual_service="product-catalog.local"} 1.0') in metrics
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)


def test_certs_writes_a_dev_ca_server_and_client(tmp_path):
    import ssl
    result = run_cli("certs", "--out", str(tmp_path / "certs"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "certs"
    for stem in ("ca", "server", "client"):
        assert (out / f"{stem}.pem").exists()
        assert (out / f"{stem}-key.pem").stat().st_mode & 0o077 == 0   # keys private to the owner
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    ctx.load_cert_chain(str(out / "client.pem"), str(out / "client-key.pem"))


def test_serving_process_freezes_startup_objects_and_raises_gc_thresholds():
    # In a process of its own: freezing would leak into the test process otherwise.
    code = ("import gc\nfrom gateway.runtime import GC_THRESHOLDS, settle_garbage_collector\n"
            "before = gc.get_freeze_count()\nsettle_garbage_collector()\n"
            "assert gc.get_threshold() == GC_THRESHOLDS != (700, 10, 10), gc.get_threshold()\n"
            "assert gc.get_freeze_count() > before + 10000, gc.get_freeze_count()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
