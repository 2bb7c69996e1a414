"""Demo backends: each one answers any method on any path with a JSON echo.

The echo says which backend answered and what it received (method, path with
query, Host, headers), which makes the gateway's routing and its default
rewrites visible with nothing but curl:

    $ curl -s localhost:8080/products/item123
    {"backend": "product-catalog", "method": "GET", "path": "/item123",
     "host": "product-catalog.local", ...}

Run the demo set on its own with `python -m gateway.demo.backends`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web

# The backends of config/gateway.yaml: (name, host, port).
DEMO_BACKENDS: list[tuple[str, str, int]] = [
    ("product-catalog", "127.0.0.1", 9001),
    ("order-processing", "127.0.0.1", 9002),
    ("product-catalog-v2", "127.0.0.1", 9003),
]


def _echo_handler(name: str):
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            # Repeated headers are joined so none is lost in the JSON object.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return web.json_response(
            {"backend": name, "method": request.method, "path": request.raw_path,
             "host": request.headers.get("Host"), "headers": headers,
             "body_bytes": len(body)},
            headers={"x-backend": name}, dumps=_dumps)
    return echo


def _dumps(obj: object) -> str:
    return json.dumps(obj, indent=2) + "\n"


def make_app(name: str) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo_handler(name))
    return app


async def start_backends(specs: list[tuple[str, str, int]]) -> list[web.AppRunner]:
    """Start one echo backend per (name, host, port); stops the started ones on failure."""
    runners: list[web.AppRunner] = []
    try:
        for name, host, port in specs:
            runner = web.AppRunner(make_app(name), access_log=None)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise OSError(exc.errno, f"demo backend {name!r} cannot listen on "
                                         f"{host}:{port}: {exc.strerror}") from exc
    except BaseException:
        await stop_backends(runners)
        raise
    return runners


async def stop_backends(runners: list[web.AppRunner]) -> None:
    for runner in reversed(runners):
        await runner.cleanup()


def parse_spec(text: str) -> tuple[str, str, int]:
    """NAME=HOST:PORT -> (name, host, port)."""
    name, sep, addr = text.partition("=")
    host, colon, port = addr.rpartition(":")
    if not (sep and colon and name and host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {text!r}")
    return name, host, int(port)


async def _run_forever(specs: list[tuple[str, str, int]]) -> None:
    runners = await start_backends(specs)
    for name, host, port in specs:
        print(f"{name} listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await stop_backends(runners)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.demo.backends",
                                description="Start echo backends (default: the demo set).")
    p.add_argument("--backend", action="append", type=parse_spec, metavar="NAME=HOST:PORT",
                   help="a backend to start; repeatable (default: "
                        + ", ".join(f"{n}={h}:{p}" for n, h, p in DEMO_BACKENDS) + ")")
    args = p.parse_args(argv)
    try:
        asyncio.run(_run_forever(args.backend or DEMO_BACKENDS))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
