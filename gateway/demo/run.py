"""`gateway demo`: echo backends for every virtual service of a config, then the gateway.

The backends run on their own event loop in a background thread so that
`gateway.runtime.serve` keeps the main thread, where it installs its signal
handlers and owns its loop exactly as under `gateway run`.
"""
from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from gateway.demo.backends import start_backends, stop_backends

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
LOOPBACK_HOSTS = {"localhost", "::1"}
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def _documents(config_path: str) -> list[dict[str, Any]]:
    path = Path(config_path)
    files = (sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES)
             if path.is_dir() else [path])
    docs = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict):
                docs.append(doc)
    return docs


def _split_endpoint(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def backend_specs(docs: list[dict[str, Any]]) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(name, host, port) for every static loopback endpoint; plus notes on what was skipped.

    A backend is named after its virtual service, without a trailing `.local`;
    the endpoints of a weighted target get the target's index as a suffix.
    """
    specs: list[tuple[str, str, int]] = []
    notes: list[str] = []
    seen: set[tuple[str, int]] = set()
    for doc in docs:
        for vs in doc.get("virtualServices") or []:
            if not isinstance(vs, dict):
                continue
            vs_name = str(vs.get("virtualServiceName", "backend"))
            base = vs_name.removesuffix(".local")
            groups: list[tuple[str, Any]] = [(base, vs.get("endpoints"))]
            for i, wt in enumerate(vs.get("weightedTargets") or []):
                if isinstance(wt, dict):
                    groups.append((f"{base}-{i}", wt.get("endpoints")))
            for name, endpoints in groups:
                if endpoints is None:
                    continue
                if not isinstance(endpoints, list):
                    notes.append(f"{vs_name}: endpoints are not a static list, "
                                 "no demo backend started")
                    continue
                for ep in endpoints:
                    addr = _split_endpoint(ep) if isinstance(ep, str) else None
                    if addr is None:
                        notes.append(f"{vs_name}: cannot read endpoint {ep!r}")
                    elif not _is_loopback(addr[0]):
                        notes.append(f"{vs_name}: {ep} is not on this machine, skipped")
                    elif addr not in seen:
                        seen.add(addr)
                        specs.append((name, *addr))
    return specs, notes


def curl_examples(docs: list[dict[str, Any]]) -> list[str]:
    port = 8080
    admin = ("127.0.0.1", 9901)
    routes: list[dict[str, Any]] = []
    for doc in docs:
        vg = doc.get("virtualGateway")
        if isinstance(vg, dict):
            for listener in (vg.get("spec") or {}).get("listeners") or []:
                pm = listener.get("portMapping") or {}
                if pm.get("protocol", "http") in ("http", "http2") and "port" in pm:
                    port = pm["port"]
                    break
        admin_block = (doc.get("gateway") or {}).get("admin") or {}
        admin = (admin_block.get("address", admin[0]), admin_block.get("port", admin[1]))
        routes += [r for r in doc.get("gatewayRoutes") or [] if isinstance(r, dict)]
    base = f"http://127.0.0.1:{port}"
    lines = []
    for route in routes:
        spec = route.get("spec") or {}
        http = spec.get("httpRoute") or spec.get("http2Route")
        if not isinstance(http, dict):
            continue
        match = http.get("match") or {}
        exact = (match.get("path") or {}).get("exact")
        prefix = match.get("prefix")
        if exact:
            path = exact
        elif prefix:
            path = prefix.rstrip("/") + "/item123"
        else:
            continue
        headers = "".join(
            f" -H '{h['name']}: {h['match']['exact']}'"
            for h in match.get("headers") or []
            if isinstance(h, dict) and "exact" in (h.get("match") or {}))
        target = (((http.get("action") or {}).get("target") or {}).get("virtualService")
                  or {}).get("virtualServiceName", "?")
        lines.append(f"curl -s{headers} {base}{path}    # route {route.get('gatewayRouteName')}"
                     f" -> {target}")
    lines.append(f"curl -si {base}/no-such-route    # no route matches: 404 from the gateway")
    lines.append(f"curl -s http://{admin[0]}:{admin[1]}/metrics | grep gateway_    # stats")
    return lines


class BackendThread:
    """Echo backends served by an event loop of their own in a daemon thread."""

    def __init__(self, specs: list[tuple[str, str, int]]):
        self.specs = specs
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="demo-backends", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            try:
                runners = self.loop.run_until_complete(start_backends(self.specs))
            except BaseException as exc:    # handed to the main thread by start()
                self.error = exc
                return
            finally:
                self.ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(stop_backends(runners))
        finally:
            self.loop.close()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(STARTUP_TIMEOUT):
            raise RuntimeError("demo backends did not start in time")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT)


def run_demo(config_path: str) -> int:
    try:
        docs = _documents(config_path)
    except (OSError, yaml.YAMLError) as exc:
        print(f"demo: cannot read {config_path}: {exc}", file=sys.stderr)
        return 2
    specs, notes = backend_specs(docs)
    for note in notes:
        print(f"demo: {note}", flush=True)
    backends = BackendThread(specs)
    try:
        backends.start()
    except (OSError, RuntimeError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        backends.stop()
        return 1
    try:
        for name, host, port in specs:
            print(f"demo backend {name} on {host}:{port}", flush=True)
        print("\nTry:\n  " + "\n  ".join(curl_examples(docs)) + "\n\nCtrl-C stops everything.\n",
              flush=True)
        from gateway.runtime import serve
        return serve(config_path)
    finally:
        backends.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run_demo(args[0] if args else str(Path(__file__).resolve().parents[2]
                                             / "config" / "gateway.yaml"))


if __name__ == "__main__":
    sys.exit(main())
