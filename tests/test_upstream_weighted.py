"""Weighted targets (App Mesh router routes with weightedTargets): a canary split lands
where the weights say, over real sockets."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from harness import free_port, gateway_doc, raw_exchange, route, running_gateway


@asynccontextmanager
async def counting_backend(counts: dict, name: str):
    """Answers every request with a 1-byte body and counts it under `name`."""
    async def handle(reader, writer):
        try:
            buffered = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buffered += data
                n = buffered.count(b"\r\n\r\n")
                if n:
                    buffered = buffered[buffered.rindex(b"\r\n\r\n") + 4:]
                    counts[name] = counts.get(name, 0) + n
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA" * n)
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def test_a_90_10_split_lands_within_two_points_over_10000_requests(tmp_path):
    counts: dict[str, int] = {}
    gport = free_port()
    async with counting_backend(counts, "stable") as stable, counting_backend(counts, "canary") as canary:
        services = [{"virtualServiceName": "checkout.local", "protocol": "http",
                     "weightedTargets": [{"weight": 90, "endpoints": [f"127.0.0.1:{stable}"]},
                                         {"weight": 10, "endpoints": [f"127.0.0.1:{canary}"]}]}]
        doc = gateway_doc(gport, [route("checkout", "/", "checkout.local")], services)
        async with running_gateway(tmp_path, doc):
            per_connection, connections = 500, 20
            request = b"GET /buy HTTP/1.1\r\nHost: shop\r\n\r\n"

            async def client():
                responses, _, _ = await raw_exchange(gport, request * per_connection, until_closed=False,
                                                     count=per_connection, timeout=60)
                return responses

            results = await asyncio.gather(*(client() for _ in range(connections)))
    total = per_connection * connections
    assert [len(r) for r in results] == [per_connection] * connections
    assert all(r.status == 200 for rs in results for r in rs)
    assert counts["stable"] + counts["canary"] == total
    share = counts["canary"] / total
    assert abs(share - 0.10) <= 0.02, counts
