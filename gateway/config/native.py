"""The native file format of config-format.md: top-level `virtualGateway`,
`gatewayRoutes`, `virtualServices` and `gateway`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.fields import Checker, describe, items, name_key
from gateway.config.source import Item, Resources

TOP_LEVEL_KEYS = ("virtualGateway", "gatewayRoutes", "virtualServices", "gateway")


class NativeFormat:
    name = "native"

    def recognises(self, data: Any) -> bool:
        # The fallback format: it accepts anything and reports what does not fit.
        return True

    def collect(self, ck: Checker, data: Any, out: Resources) -> None:
        if not isinstance(data, Mapping):
            ck.error("", f"must be an object with keys {', '.join(TOP_LEVEL_KEYS)} "
                         f"(got {describe(data)})")
            return
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                ck.error(str(key), f"unknown top-level key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
        if data.get("virtualGateway") is not None:
            out.virtual_gateways.append(Item(ck.source, "virtualGateway", data["virtualGateway"]))
        if data.get("gateway") is not None:
            out.settings.append(Item(ck.source, "gateway", data["gateway"]))
        for key, target in (("gatewayRoutes", out.gateway_routes),
                            ("virtualServices", out.virtual_services)):
            if data.get(key) is None:
                continue
            listed = items(ck, key, data[key])
            for i, raw in enumerate(listed or []):
                target.append(Item(ck.source, f"{key}[{name_key(raw, i)}]", raw))
