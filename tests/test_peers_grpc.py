"""The gRPC test peers against each other, no gateway: each call kind for every
client x server library pair, deadline and cancel as the server sees them, TLS."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest

from gateway.certs import issue, make_ca
from grpc_peers import (
    FAIL_TRAILER_BIN, LIBRARIES, Observations, Progress, fail_request, grpc_call, grpc_client,
    grpc_server, sleep_request, stream_request,
)
from h2_peers import h2_origin

PAIRS = [(c, s) for c in LIBRARIES for s in LIBRARIES]
pair_ids = [f"{c}-to-{s}" for c, s in PAIRS]


@pytest.mark.parametrize("client,server", PAIRS, ids=pair_ids)
async def test_every_call_kind(client, server):
    obs = Observations()
    async with grpc_server(server, obs) as port, grpc_client(client, port) as c:
        unary = await c.call("Unary", b"hello")
        assert (unary.messages, unary.status, unary.message) == ([b"hello"], 0, None)

        stream = await c.call("ServerStream", stream_request(5, 1000))
        assert stream.status == 0 and stream.count == 5 and stream.nbytes == 5000
        assert [int.from_bytes(m[:4], "big") for m in stream.messages] == [0, 1, 2, 3, 4]

        upload = await c.call("ClientStream", [b"a" * 10, b"b" * 20, b""])
        assert upload.status == 0 and upload.messages == [b"3,30"]

        bidi = await c.call("Bidi", [b"one", b"two", b"three"], lockstep=True)
        assert bidi.status == 0 and bidi.messages == [b"one", b"two", b"three"]
        bulk = await c.call("Bidi", [bytes([i]) * 70_000 for i in range(20)])
        assert bulk.status == 0 and bulk.count == 20 and bulk.messages[7] == b"\x07" * 70_000

    assert [r.method for r in obs.calls] == ["Unary", "ServerStream", "ClientStream", "Bidi", "Bidi"]
    assert all(r.outcome == "ok" and r.library == server for r in obs.calls)
    assert len(obs.peers()) == 1, "one client connection multiplexes all calls"
    assert obs.last("ClientStream").received_bytes == 30
    assert obs.calls[-1].sent == 20


@pytest.mark.parametrize("client,server", PAIRS, ids=pair_ids)
async def test_deadline_reaches_the_server(client, server):
    obs = Observations()
    async with grpc_server(server, obs) as port:
        result = await grpc_call(client, port, "Sleep", sleep_request(5), timeout=0.3)
        record = await obs.wait("Sleep")
    assert result.status == 4
    assert record.deadline is not None and 0.05 < record.deadline <= 0.3
    assert record.outcome in ("deadline", "cancelled")
    if server == "grpclib":
        assert record.outcome == "deadline" and record.grpc_timeout is not None
    assert record.ended - record.started < 1.0


@pytest.mark.parametrize("client,server", PAIRS, ids=pair_ids)
async def test_client_cancel_reaches_the_server(client, server):
    obs = Observations()
    async with grpc_server(server, obs) as port:
        sleep = await grpc_call(client, port, "Sleep", sleep_request(5), cancel_after=0.2)
        record = await obs.wait("Sleep")
        assert sleep.status == 1
        assert record.outcome == "cancelled" and record.deadline is None
        assert record.ended - record.started < 1.0

        mid = await grpc_call(client, port, "ServerStream", stream_request(1000, 100, 0.01),
                              cancel_after_messages=3)
        streamed = await obs.wait("ServerStream")
    assert mid.status == 1 and mid.count == 3
    assert streamed.outcome == "cancelled" and streamed.sent < 100


@pytest.mark.parametrize("client,server", PAIRS, ids=pair_ids)
async def test_fail_and_metadata(client, server):
    obs = Observations()
    async with grpc_server(server, obs) as port, grpc_client(client, port, authority="echo.test:443") as c:
        fail = await c.call("Fail", fail_request(9, "not now, ü"))
        meta = await c.call("Metadata", b"", timeout=30,
                            metadata=[("x-team", "peers"), ("x-blob-bin", b"\x00\xff")])
        bad = await c.call("ServerStream", b"lots")
    assert fail.status == 9 and fail.message == "not now, ü"
    assert ("x-fail-code", "9") in fail.trailers and ("x-trailer-bin", FAIL_TRAILER_BIN) in fail.trailers
    seen = json.loads(meta.messages[0])
    assert ["x-team", "peers"] in seen["metadata"]
    assert ["x-blob-bin", base64.b64encode(b"\x00\xff").decode()] in seen["metadata"]
    assert 25 < seen["deadline"] <= 30.5  # grpcio rounds the encoded timeout up
    if server == "grpclib":
        assert seen["authority"] == "echo.test:443"
        assert seen["grpc_timeout"] is not None
    assert bad.status == 3 and "count,size" in bad.message
    assert obs.last("Fail").outcome == "error"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpc-pki")
    ca = make_ca("peer test CA")
    ca_file, _ = ca.write(d, "ca")
    cert, key = issue(ca, "echo.test", dns=("echo.test",)).write(d, "server")
    return ca_file, (cert, key)


@pytest.mark.parametrize("client,server", PAIRS, ids=pair_ids)
async def test_tls_with_server_name(client, server, pki):
    ca, tls = pki
    async with grpc_server(server, tls=tls) as port:
        ok = await grpc_call(client, port, "Unary", b"secret", ca=ca, server_name="echo.test")
        wrong = await grpc_call(client, port, "Unary", b"x", ca=ca, server_name="other.test",
                                timeout=2)
    assert ok.messages == [b"secret"] and ok.status == 0
    assert wrong.status in (14, 4) and not wrong.messages


@pytest.mark.parametrize("client", LIBRARIES)
async def test_slow_reader_holds_the_server_back(client):
    """A slow client caps what the server has sent at about the flow-control windows;
    the gateway tests rely on this to see buffering in between."""
    obs = Observations()
    progress = Progress()
    async with grpc_server("grpclib", obs) as port:
        task = asyncio.create_task(grpc_call(client, port, "ServerStream",
                                             stream_request(32, 1 << 20), read_delay=0.05,
                                             keep=False, progress=progress))
        await asyncio.sleep(0.4)
        record = obs.last("ServerStream")
        ahead = record.sent_bytes - progress.nbytes
        assert 0 < progress.count < 16
        assert ahead <= 6 << 20, f"server ran {ahead} bytes ahead of a slow reader"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_bad_arguments_are_refused_before_any_io():
    with pytest.raises(TypeError, match="iterable"):
        await grpc_call("grpclib", 1, "Bidi", b"not a stream")
    with pytest.raises(ValueError, match="unknown Echo method"):
        await grpc_call("grpcio", 1, "Nope", b"")
    with pytest.raises(ValueError, match="unknown gRPC library"):
        grpc_client("grpc-go", 1)


@pytest.mark.parametrize("client", LIBRARIES)
async def test_resets_and_goaway_map_to_grpc_status(client):
    """The h2 origin, told by metadata, plays a peer that resets or goes away."""
    async with h2_origin() as port, grpc_client(client, port) as c:
        cancel = await c.call("Unary", b"x", metadata=[("x-origin", "rst=before&code=8")])
        refused = await c.call("Unary", b"x", metadata=[("x-origin", "rst=before&code=7")])
    async with h2_origin() as port, grpc_client(client, port) as c:
        gone = await c.call("Unary", b"x", metadata=[("x-origin", "goaway=before&last=0")])
    assert (cancel.status, refused.status, gone.status) == (1, 14, 14)
