"""Gateway route matching: normalisation, compiled route tables, rewrites, route tools."""
from gateway.routing.normalize import normalize_path, split_target
from gateway.routing.table import CompiledRoute, ListenerRouter, compile_routers

__all__ = ["CompiledRoute", "ListenerRouter", "compile_routers", "normalize_path", "split_target"]
