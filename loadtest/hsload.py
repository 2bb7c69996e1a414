"""Build and run hsload.c, the new-TLS-connection-per-request load generator.

wrk reconnects on "Connection: close" but resumes the TLS session each time (it
keeps its SSL object across SSL_clear), so it cannot measure full handshakes;
hsload never resumes and reports how many connections did anyway (must be 0).
Its JSON is turned into the same row shape as a wrk run so the tables treat
both alike.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "hsload.c"
SLACK_SECONDS = 30


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    requests_per_sec: float             # completed connections (= handshakes) per second
    requests: int
    duration_ms: float
    latency_ms: dict[str, float]        # connect -> last response byte: p50, p75, p90, p99, max
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect/handshake/io/timeout
    non_2xx_3xx: int = 0
    resumed: int = 0
    tls_version: str = ""
    cipher: str = ""
    version_mismatch: int = 0

    @property
    def errors(self) -> int:
        # A resumed session is a measurement error here, not a success.
        return self.non_2xx_3xx + sum(self.socket_errors.values()) + self.resumed

    def to_json(self) -> dict:
        d = asdict(self)
        d["errors"] = self.errors
        return d


def build(workdir: Path) -> Path:
    """Compile hsload into workdir; RuntimeError with the compiler's words if that fails."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (apt-get install gcc libssl-dev)")
    out = workdir / "hsload"
    done = subprocess.run([cc, "-O2", "-o", str(out), str(SOURCE), "-lssl", "-lcrypto"],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cannot build hsload (needs libssl-dev): {done.stderr.strip()[-500:]}")
    return out


def parse(text: str) -> HandshakeResult:
    try:
        d = json.loads(text)
        lat = d["latency_us"]
        errs = d["errors"]
        return HandshakeResult(
            requests_per_sec=float(d["per_sec"]), requests=int(d["completed"]),
            duration_ms=float(d["seconds"]) * 1000.0,
            latency_ms={k: float(lat[k]) / 1000.0 for k in ("p50", "p75", "p90", "p99", "max")},
            socket_errors={k: int(errs[k]) for k in ("connect", "handshake", "io", "timeout")},
            non_2xx_3xx=int(errs["status"]), resumed=int(d["resumed"]),
            tls_version=str(d["tls_version"]), cipher=str(d["cipher"]),
            version_mismatch=int(d["version_mismatch"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not an hsload report ({e!r}): {text[:200]!r}") from None


def run(binary: Path, port: int, path: str, host: str, connections: int, duration: int,
        cpu: str, sni: str = "") -> HandshakeResult:
    argv = ["taskset", "-c", cpu, str(binary), "-p", str(port), "-P", path, "-H", host,
            "-c", str(connections), "-d", str(duration)]
    if sni:
        argv += ["-s", sni]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration + SLACK_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"hsload exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse(done.stdout)
