"""Configuration problems, each naming the file, the object and the field path."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    source: str          # file name, e.g. "config/gateway.yaml"
    path: str            # e.g. "gatewayRoutes[products].spec.httpRoute.match.prefix"
    message: str         # e.g. 'must start with "/"'
    severity: str = "error"   # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that must not be served; carries every error found."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
