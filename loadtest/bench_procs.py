"""Child processes the benchmark starts, pinned to a CPU and always reaped.

Every child runs in its own session (so its own process group): stopping it
signals the whole group, which takes nginx workers, Envoy threads and gateway
worker processes down with their parent, and a Ctrl-C in the terminal reaches
only the benchmark, whose `finally` then stops the children in order.
"""
from __future__ import annotations

import http.client
import os
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


def time_wait_sockets(port: int, key: str = "dport") -> set[tuple[str, str]]:
    """(local, peer) of TIME_WAIT sockets whose `key` (dport: remote, sport: local) is `port`.

    The side that closes a TCP connection first keeps it in TIME_WAIT for a
    minute, so a proxy that opens a fresh upstream connection per request leaves
    one entry per request under dport, and an origin that closes idle
    connections leaves them under sport. Returning the set lets the caller count
    only the entries a run created, unaffected by older ones expiring meanwhile.
    """
    out = subprocess.run(
        ["ss", "-Htan", "state", "time-wait", f"( {key} = :{port} )"],
        capture_output=True, text=True, timeout=20, check=False).stdout
    found = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            found.add((cols[-2], cols[-1]))
    return found


def count_time_wait(port: int) -> dict[str, int]:
    return {key: len(time_wait_sockets(port, key)) for key in ("dport", "sport")}
