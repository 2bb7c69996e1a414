"""Run h2load (Debian's nghttp2-client) for one measured stretch and read its results.

`h2load http://...` speaks h2c with prior knowledge. The run is duration-based
(-D) after h2load's own warm-up (--warm-up-time), so connection set-up and the
proxies' first upstream connections stay out of the numbers; the per-request
log gives the latency percentiles and is deleted once read (about 25 bytes per
request).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import h2load_output

SLACK_SECONDS = 30


@dataclass(frozen=True, slots=True)
class H2Request:
    """What every stream of a run sends, beside the URL."""
    authority: str
    headers: tuple[str, ...] = ()       # "name: value", as h2load -H takes them
    body_file: Path | None = None       # set: POST this file's bytes (h2load -d)


def argv(url: str, req: H2Request, connections: int, streams: int, duration: int,
         warmup: int, log_file: Path) -> list[str]:
    out = ["h2load", "-c", str(connections), "-m", str(streams), "-D", str(duration),
           "--log-file", str(log_file), "-H", f":authority: {req.authority}"]
    if warmup:
        out += ["--warm-up-time", str(warmup)]
    for h in req.headers:
        out += ["-H", h]
    if req.body_file is not None:
        out += ["-d", str(req.body_file)]
    out.append(url)
    return out


def run(url: str, req: H2Request, connections: int, streams: int, duration: int, warmup: int,
        cpu: str, log_file: Path) -> h2load_output.H2LoadResult:
    cmd = ["taskset", "-c", cpu, *argv(url, req, connections, streams, duration, warmup, log_file)]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=duration + warmup + SLACK_SECONDS)
        except OSError as e:
            raise RuntimeError(f"cannot run h2load: {e}") from None
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-500:]
            raise RuntimeError(f"h2load exited {done.returncode}: {tail}")
        try:
            log_text = log_file.read_text()
        except OSError as e:
            raise RuntimeError(f"h2load wrote no log file: {e}") from None
        return h2load_output.parse(done.stdout, log_text)
    finally:
        log_file.unlink(missing_ok=True)


def version() -> str:
    try:
        done = subprocess.run(["h2load", "--version"], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return done.stdout.strip() or "unknown"
