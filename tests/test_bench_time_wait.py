"""The benchmark's TIME_WAIT accounting, on real loopback connections."""
from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
from bench_procs import count_new_time_wait, count_time_wait  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def close_from_client_side(port: int, listener: socket.socket, n: int) -> None:
    """n connections that the client closes first, so the client side ends in TIME_WAIT."""
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        client.close()
        assert server.recv(1) == b""
        server.close()


def test_connections_closed_by_the_client_count_toward_the_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert count_time_wait(port) == {"dport": 0, "sport": 0}
        close_from_client_side(port, listener, 3)
        deadline = time.monotonic() + 5
        while count_time_wait(port)["dport"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_time_wait(port) == {"dport": 3, "sport": 0}
        assert count_new_time_wait(port, since_seconds=5) == 3
        # Entries older than the window are not "new": wait past ss's one-second
        # rounding, then ask only about the last instant.
        time.sleep(2.2)
        assert count_new_time_wait(port, since_seconds=0.0) == 0
