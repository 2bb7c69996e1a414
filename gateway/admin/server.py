"""The admin side door: metrics, liveness, readiness and the effective config.

It runs on its own port with aiohttp and only reads through the providers it
is given, so nothing here sits on the request path.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..observability.prometheus import StatsCollector
from ..observability.stats import Stats

ENDPOINTS = (
    ("/metrics", "Prometheus metrics (all workers summed)"),
    ("/ping", "liveness: 200 while the process runs"),
    ("/ready", "readiness: 200 READY, or 503 NOT READY while starting, draining, or a "
               "listener fails its healthCheck"),
    ("/config", "the effective configuration as JSON"),
)

_PROVIDERS = web.AppKey("providers", dict)


def _index_text() -> str:
    width = max(len(p) for p, _ in ENDPOINTS)
    lines = ["appmesh-gateway admin", ""]
    lines += [f"{path.ljust(width)}  {what}" for path, what in ENDPOINTS]
    return "\n".join(lines) + "\n"


_INDEX = _index_text()


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=_INDEX)


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def _ready(request: web.Request) -> web.Response:
    providers = request.app[_PROVIDERS]
    if providers["is_ready"]():
        return web.Response(text="READY")
    detail = providers["not_ready_detail"]()
    return web.Response(status=503, text=f"NOT READY\n{detail}\n" if detail else "NOT READY")


async def _metrics(request: web.Request) -> web.Response:
    registry: CollectorRegistry = request.app[_PROVIDERS]["registry"]
    # Honour OpenMetrics negotiation like prometheus_client's own handlers do.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _config(request: web.Request) -> web.Response:
    config = request.app[_PROVIDERS]["config"]()
    text = json.dumps(config, indent=2, default=str) + "\n"
    return web.Response(text=text, content_type="application/json")


def make_app(*, stats_provider: Callable[[], list[Stats]],
             config_provider: Callable[[], dict[str, Any]],
             is_ready: Callable[[], bool],
             not_ready_detail: Callable[[], str] = str) -> web.Application:
    """`not_ready_detail()`: lines for the body of a 503 /ready ("" for none)."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats_provider))
    app = web.Application()
    app[_PROVIDERS] = {"registry": registry, "config": config_provider, "is_ready": is_ready,
                       "not_ready_detail": not_ready_detail}
    app.router.add_get("/", _index)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/ping", _ping)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/config", _config)
    return app


class AdminServer:
    """A running admin server; `port` is the bound port (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_admin(host: str, port: int, *,
                      stats_provider: Callable[[], list[Stats]],
                      config_provider: Callable[[], dict[str, Any]],
                      is_ready: Callable[[], bool],
                      not_ready_detail: Callable[[], str] = str) -> AdminServer:
    app = make_app(stats_provider=stats_provider, config_provider=config_provider,
                   is_ready=is_ready, not_ready_detail=not_ready_detail)
    # No aiohttp access log: scrapes every few seconds would drown the gateway's own log.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return AdminServer(runner, bound)
