"""Real-socket helpers for the request-path tests: configs, backends, raw clients."""
from __future__ import annotations

import asyncio
import json
import socket
from contextlib import asynccontextmanager

import httptools
import yaml
from aiohttp import web

from gateway.config.load import load_config
from gateway.runtime import Gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(name, prefix=None, target="svc.local", **match):
    """A gateway route in the native (App Mesh) shape."""
    spec_match = dict(match)
    if prefix is not None:
        spec_match["prefix"] = prefix
    rewrite = spec_match.pop("rewrite", None)
    priority = spec_match.pop("priority", None)
    action = {"target": {"virtualService": {"virtualServiceName": target}}}
    if rewrite is not None:
        action["rewrite"] = rewrite
    spec = {"httpRoute": {"match": spec_match, "action": action}}
    if priority is not None:
        spec["priority"] = priority
    return {"gatewayRouteName": name, "spec": spec}


def service(name, *ports, **extra):
    return {"virtualServiceName": name, "protocol": "http",
            "endpoints": [f"127.0.0.1:{p}" for p in ports], **extra}


def gateway_doc(port, routes, services, *, admin_port=0, access_log=None, limits=None):
    spec = {"listeners": [{"portMapping": {"port": port, "protocol": "http"}}]}
    if access_log is not None:
        spec["logging"] = {"accessLog": {"file": access_log}}
    settings = {"admin": {"address": "127.0.0.1", "port": admin_port},
                "listenAddress": "127.0.0.1"}
    if limits:
        settings["limits"] = limits
    return {"virtualGateway": {"virtualGatewayName": "test-gw", "spec": spec},
            "gatewayRoutes": routes, "virtualServices": services, "gateway": settings}


@asynccontextmanager
async def running_gateway(tmp_path, doc, *, admin=True):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config, _warnings = load_config(str(path))
    gw = Gateway(config, admin=admin)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(timeout=1.0)


# ------------------------------------------------------------------ backends

BACKEND_NAME = web.AppKey("backend_name", str)


async def echo_handler(request: web.Request) -> web.StreamResponse:
    """Answers with what it received: name, method, path, Host, headers, body size."""
    body = await request.read()
    info = {
        "name": request.app[BACKEND_NAME],
        "method": request.method,
        "path": request.path_qs,
        "host": request.headers.get("Host"),
        "headers": [[k.lower(), v] for k, v in request.raw_headers_str()] if hasattr(request, "raw_headers_str")
        else [[k.decode().lower(), v.decode()] for k, v in request.raw_headers],
        "body_length": len(body),
        "body": body[:64].decode("latin-1"),
    }
    return web.json_response(info)


@asynccontextmanager
async def echo_backend(name="backend", port=None, handler=echo_handler, routes=None):
    app = web.Application()
    app[BACKEND_NAME] = name
    if routes:
        for method, path, fn in routes:
            app.router.add_route(method, path, fn)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_backend(handler):
    """A backend whose every byte the test controls: handler(reader, writer)."""
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------- clients

class Response:
    def __init__(self):
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)


class ResponseReader:
    """Parses a byte stream of responses with httptools (the same parser family
    the gateway uses, but on the client side of the wire)."""

    def __init__(self, head_request=False):
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = head_request

    def on_message_begin(self):
        self.responses.append(Response())

    def on_header(self, name, value):
        self.responses[-1].headers.append((name.decode().lower(), value.decode("latin-1")))

    def on_headers_complete(self):
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body):
        self.responses[-1].body += body

    def on_message_complete(self):
        self.responses[-1].complete = True

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)


async def raw_exchange(port: int, data: bytes, *, until_closed=True, count=1, timeout=10.0):
    """Send raw bytes; read responses until the server closes (or `count` arrive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    parsed = ResponseReader()
    raw = b""
    closed = False
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                raw += chunk
                try:
                    parsed.feed(chunk)
                except httptools.HttpParserUpgrade:
                    break
                if not until_closed and sum(r.complete for r in parsed.responses) >= count:
                    break
    finally:
        writer.close()
    return parsed.responses, raw, closed
