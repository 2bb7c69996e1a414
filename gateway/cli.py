"""`gateway` command line: run, validate, routes, explain, certs, demo."""
from __future__ import annotations

import argparse
import logging
import sys


def _load(paths):
    """Load a config or print every error; returns (config, warnings) or None."""
    from gateway.config.errors import ConfigError
    from gateway.config.load import load_config

    try:
        return load_config(paths)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        print(f"{len(err.issues)} error(s)", file=sys.stderr)
        return None


def cmd_run(args) -> int:
    from gateway.runtime import serve
    return serve(args.config)


def cmd_validate(args) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    config, warnings = loaded
    from gateway.routing.tools import lint
    warnings = list(warnings) + list(lint(config))
    for warning in warnings:
        print(warning)
    if args.dump:
        import json
        from gateway.config.load import config_to_json
        print(json.dumps(config_to_json(config), indent=2))
    print(f"{', '.join(args.config)}: OK ({len(config.gateway_routes)} routes, "
          f"{len(config.virtual_services)} virtual services, {len(warnings)} warning(s))")
    return 0


def cmd_routes(args) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    from gateway.routing.tools import format_routes
    print(format_routes(loaded[0]))
    return 0


def cmd_explain(args) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    from gateway.routing.tools import explain
    headers = []
    for raw in args.header or ():
        name, sep, value = raw.partition(":")
        if not sep:
            print(f"-H {raw!r}: expected 'name: value'", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    text, matched = explain(loaded[0], args.method, args.url, headers, port=args.port)
    print(text)
    return 0 if matched else 1


def cmd_certs(args) -> int:
    from gateway.certs import certs_main
    return certs_main(args.out)


def cmd_demo(args) -> int:
    from gateway.demo.run import run_demo
    return run_demo(args.config[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway", description="App Mesh compatible ingress gateway")
    parser.add_argument("--log-level", default="INFO", help="process log level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, default=None):
        p.add_argument("-c", "--config", action="append", required=default is None,
                       metavar="FILE", help="config file or directory (repeatable)")
        if default is not None:
            p.set_defaults(config=None, config_default=default)
        return p

    with_config(sub.add_parser("run", help="serve a configuration")).set_defaults(func=cmd_run)
    p = with_config(sub.add_parser("validate", help="check a configuration, list every error"))
    p.add_argument("--dump", action="store_true", help="print the effective configuration as JSON")
    p.set_defaults(func=cmd_validate)
    with_config(sub.add_parser("routes", help="print routes in evaluation order")).set_defaults(func=cmd_routes)
    p = with_config(sub.add_parser("explain", help="show which route a request takes, and why"))
    p.add_argument("method", help="request method, e.g. GET; GRPC for a gRPC call")
    p.add_argument("url", help="e.g. 'http://shop.example.com/products/42?x=1', or for gRPC "
                               "'grpc://api.example.com/pkg.Service/Method'")
    p.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                   help="a request header (gRPC metadata for a gRPC call)")
    p.add_argument("--port", type=int, help="listener port (default: the only or first listener)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("certs", help="write a development CA, server and client certificate")
    p.add_argument("--out", default="certs", help="directory (default certs/)")
    p.set_defaults(func=cmd_certs)
    p = with_config(sub.add_parser("demo", help="run the gateway with demo backends"),
                    default="config/gateway.yaml")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None and hasattr(args, "config_default"):
        args.config = [args.config_default]
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
