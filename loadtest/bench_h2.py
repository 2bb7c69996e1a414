"""The h2c and grpc workloads: one checked request per target, then h2load runs.

The check proves, over h2c with prior knowledge, what h2load cannot see: the
body the origin produced after the proxy's rewrite, and for gRPC the
content-type, the response message and the grpc-status: 0 trailer. A target
that does not speak HTTP/2 raises h2_probe.NotServed (the table says "not
served"); one that speaks it but answers wrongly raises RuntimeError.
"""
from __future__ import annotations

from pathlib import Path

import bench_targets as bt
import bench_targets_h2 as bt2
import h2_probe
import h2load
import h2load_output

WORKLOADS = ("h2c", "grpc")


def check(workload: str, target: bt.Target) -> dict:
    """One request like the load's; what came back, for the results file."""
    if workload == "grpc":
        reply = h2_probe.request(target.port, "POST", target.path, target.host,
                                 headers=bt2.GRPC_HEADERS, body=bt2.GRPC_REQUEST)
        status = reply.trailers.get("grpc-status", reply.headers.get("grpc-status"))
        problems = []
        if reply.status != 200:
            problems.append(f"HTTP {reply.status}")
        if not reply.headers.get("content-type", "").startswith("application/grpc"):
            problems.append(f"content-type {reply.headers.get('content-type')!r}")
        if reply.body != bt2.GRPC_RESPONSE:
            problems.append(f"message {reply.body[:60]!r}, expected {bt2.GRPC_RESPONSE!r}")
        if status != "0":
            problems.append(f"grpc-status {status!r} (trailers {reply.trailers})")
        if problems:
            raise RuntimeError(f"sanity gRPC call POST {target.path} (:authority {target.host}) "
                               f"got {', '.join(problems)}")
        return {"status": reply.status, "grpc_status": status, "trailers": reply.trailers}
    reply = h2_probe.request(target.port, "GET", target.path, target.host)
    want = bt.expected_body()
    if reply.status != 200 or reply.body != want:
        raise RuntimeError(f"sanity h2c request GET {target.path} (:authority {target.host}) got "
                           f"{reply.status} {reply.body[:200]!r}, expected 200 {want!r}")
    return {"status": reply.status}


def measure(workload: str, target: bt.Target, workdir: Path, connections: int, streams: int,
            duration: int, warmup: int, cpu: str) -> h2load_output.H2LoadResult:
    req = bt2.load_request(workload, target, workdir)
    log = workdir / f"h2load-{workload}-{target.name}.log"
    return h2load.run(target.url, req, connections, streams, duration, warmup, cpu, log)
