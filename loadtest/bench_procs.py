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
import ssl
import subprocess
import time
from dataclasses import dataclass
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

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

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


@dataclass(frozen=True, slots=True)
class TlsProbe:
    status: int
    body: bytes
    version: str            # e.g. "TLSv1.3"
    cipher: str


def client_tls_context(ca_file: Path | str) -> ssl.SSLContext:
    """Verifying client context: the sanity requests prove the proxy serves the run's cert."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_get(port: int, path: str, host: str, ca_file: Path | str,
              timeout: float = 5.0) -> TlsProbe:
    ctx = client_tls_context(ca_file)
    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path, headers={"Host": host})
        tls = conn.sock         # taken now: a "Connection: close" reply would clear it
        if not isinstance(tls, ssl.SSLSocket):
            raise ssl.SSLError("connection is not TLS")
        version, cipher = tls.version() or "?", (tls.cipher() or ("?",))[0]
        resp = conn.getresponse()
        return TlsProbe(resp.status, resp.read(), version, cipher)
    finally:
        conn.close()


def tls_resumes(port: int, ca_file: Path | str, timeout: float = 5.0) -> bool:
    """Whether a second connection resumes the first one's session (ticket or cache).

    TLS 1.3 tickets arrive after the handshake, so the first connection reads a
    response before its session is taken.
    """
    ctx = client_tls_context(ca_file)
    session = None
    for attempt in range(2):
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=LOOPBACK, session=session) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):
                    pass
                if attempt == 1:
                    return tls.session_reused
                session = tls.session
    return False


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (all threads).

    Each ManagedProcess leads its own group, so this is the whole proxy: nginx
    master and worker, Envoy's threads, the gateway's worker processes.
    """
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue        # exited between listing and reading
        fields = stat[stat.rfind(b")") + 2:].split()
        # Split after "pid (comm) " (comm may hold spaces): pgrp is [2], utime [11], stime [12].
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


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
