"""Child processes the benchmark starts, pinned to a CPU and always reaped.

Every child runs in its own session (so its own process group): stopping it
signals the whole group, which takes nginx workers, Envoy threads and gateway
worker processes down with their parent, and a Ctrl-C in the terminal reaches
only the benchmark, whose `finally` then stops the children in order.
"""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], log_path: Path, cpu: str,
                 env: dict[str, str] | None = None):
        self.name = name
        self.argv = pinned(cpu, argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass        # group already gone; still reap below
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a worker lingers in the group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for_port(port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port; RuntimeError if not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and (rc := proc.exited()) is not None:
            raise RuntimeError(f"{proc.name} exited with status {rc} before listening on "
                               f"{port}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing accepted on {LOOPBACK}:{port} within {timeout:.0f}s")


def http_get(port: int, path: str, host: str | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Host": host} if host else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


TIME_WAIT_SECONDS = 60          # Linux TCP_TIMEWAIT_LEN: fixed, not tunable
_RE_TW_TIMER = re.compile(r"timer:\(timewait,([0-9.]+)(min|sec|ms)")
_TIMER_UNIT_S = {"min": 60.0, "sec": 1.0, "ms": 0.001}


def _time_wait_remaining(port: int, key: str) -> list[float]:
    """Seconds left for each TIME_WAIT socket whose `key` (dport: remote, sport: local) is port.

    The side that closes a TCP connection first keeps it in TIME_WAIT, so a proxy
    that opens a fresh upstream connection per request leaves one entry per
    request under dport, and an origin that closes idle connections leaves them
    under sport.
    """
    out = subprocess.run(
        ["ss", "-Htano", "state", "time-wait", f"( {key} = :{port} )"],
        capture_output=True, text=True, timeout=20, check=False).stdout
    return [float(m.group(1)) * _TIMER_UNIT_S[m.group(2)]
            for m in _RE_TW_TIMER.finditer(out)]


def count_time_wait(port: int) -> dict[str, int]:
    return {key: len(_time_wait_remaining(port, key)) for key in ("dport", "sport")}


def count_new_time_wait(port: int, since_seconds: float) -> int:
    """TIME_WAIT sockets toward `port` that entered TIME_WAIT in the last `since_seconds`.

    Judged by the timer rather than by comparing socket lists, because on
    loopback Linux reuses TIME_WAIT ports for new connections (tcp_tw_reuse=2),
    so a new TIME_WAIT entry can have an old entry's address pair. ss rounds
    the timer down to whole seconds, hence the one second of slack: callers
    leave more than that between the previous run and this one.
    """
    floor = TIME_WAIT_SECONDS - since_seconds - 1.0
    return sum(1 for left in _time_wait_remaining(port, "dport") if left >= floor)
