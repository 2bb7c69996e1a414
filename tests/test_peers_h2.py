"""The HTTP/2 test peers against each other and against curl, no gateway: echo, streaming
under flow control, uploads, trailers, RST_STREAM and GOAWAY both ways, TLS with ALPN."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import h2.exceptions
import h2.settings
import pytest

from gateway.certs import issue, make_ca
from h2_peers import H2Observations, Progress, h2_client, h2_origin, h2_request

MiB = 1 << 20


async def test_echo_reports_the_request_as_received():
    obs = H2Observations()
    async with h2_origin(obs) as port:
        r = await h2_request(port, "GET", "/a/b?q=1", authority="svc.example:8080",
                             headers=[("x-team", "peers")])
    assert r.status == 200 and r.ended and r.header("content-type") == "application/json"
    seen = r.json()
    assert (seen["method"], seen["path"], seen["authority"]) == ("GET", "/a/b?q=1", "svc.example:8080")
    assert ["x-team", "peers"] in seen["headers"] and seen["body_length"] == 0
    record = await obs.wait("/a/b")
    assert record.outcome == "ok" and record.sent_bytes == len(r.data)
    assert obs.connections == 1


async def test_source_streams_within_the_default_windows():
    async with h2_origin() as port:
        r = await h2_request(port, "GET", f"/source?size={3 * MiB}&chunk=20000")
    assert r.status == 200 and r.ended and r.nbytes == 3 * MiB
    assert r.header("content-length") == str(3 * MiB) and set(r.data) == {ord("x")}


async def test_slow_reader_holds_the_origin_back():
    obs = H2Observations()
    progress = Progress()
    async with h2_origin(obs) as port, h2_client(port) as c:
        task = asyncio.create_task(c.request("GET", f"/source?size={4 * MiB}", read_delay=0.02,
                                             keep=False, progress=progress))
        await asyncio.sleep(0.3)
        sent = obs.last("/source").sent_bytes
        assert 0 < progress.nbytes < 2 * MiB
        assert sent - progress.nbytes <= 3 * 65535, "origin ignored the client's window"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_upload_is_counted_and_a_slow_origin_paces_the_sender():
    obs = H2Observations()
    async with h2_origin(obs) as port, h2_client(port) as c:
        fast = await c.request("POST", "/up", body=3 * MiB, trailers=[("x-sum", "abc")])
        start = time.monotonic()
        slow = await c.request("PUT", "/up?read_delay=0.02", body=256 * 1024)
        elapsed = time.monotonic() - start
    assert fast.json()["body_length"] == 3 * MiB and fast.json()["trailers"] == [["x-sum", "abc"]]
    assert slow.json()["body_length"] == 256 * 1024
    # 192 KiB beyond the first window can only go as the origin consumes 16 KiB per 20 ms
    assert elapsed > 0.15
    assert obs.of("/up")[0].body_chunks >= 3 * MiB // 16384


async def test_response_trailers():
    async with h2_origin() as port:
        r = await h2_request(port, "GET", "/source?size=1000&trailers=1", headers=[("te", "trailers")])
    assert r.ended and r.nbytes == 1000 and r.header("content-length") is None
    assert r.trailers == [("x-trailer", "done"), ("x-bytes", "1000")]


async def test_rst_stream_before_and_during_the_body():
    obs = H2Observations()
    async with h2_origin(obs) as port, h2_client(port) as c:
        before = await c.request("GET", "/?rst=before&code=7")
        during = await c.request("GET", "/source?size=100000&rst=5000")
        after = await c.request("GET", "/still-open")
    assert before.status is None and before.reset_code == 7
    assert during.status == 200 and during.nbytes == 5000 and during.reset_code == 2 and not during.ended
    assert after.status == 200, "a stream reset leaves the connection usable"
    assert [r.outcome for r in obs.requests] == ["rst_sent", "rst_sent", "ok"]


async def test_graceful_goaway_lets_the_stream_finish_then_closes():
    obs = H2Observations()
    async with h2_origin(obs) as port, h2_client(port) as c:
        r = await c.request("GET", "/source?size=200000&goaway=1000")
        async with asyncio.timeout(2):
            await c.closed.wait()
        with pytest.raises(ConnectionError, match="GOAWAY"):
            await c.request("GET", "/")
    assert r.goaway == (0, 1) and r.ended and r.nbytes == 200000
    assert obs.last().outcome == "ok"


async def test_goaway_refusing_the_stream_and_goaway_with_error():
    obs = H2Observations()
    async with h2_origin(obs) as port:
        refused = await h2_request(port, "GET", "/?goaway=before&last=0&code=0")
        broken = await h2_request(port, "GET", "/source?size=200000&goaway=1000&code=2")
    assert refused.goaway == (0, 0) and refused.status is None and not refused.connection_lost
    assert broken.goaway == (2, 1) and broken.nbytes == 1000 and broken.connection_lost
    assert [r.outcome for r in obs.requests] == ["goaway_sent", "goaway_sent"]


async def test_client_cancel_is_seen_by_the_origin():
    obs = H2Observations()
    async with h2_origin(obs) as port, h2_client(port) as c:
        mid = await c.request("GET", f"/source?size={10 * MiB}&delay=0.005", cancel_after_bytes=50000)
        waiting = await c.request("GET", "/wait?sleep=5", cancel_after=0.1)
        streamed = await obs.wait("/source")
        slept = await obs.wait("/wait")
    assert mid.cancelled and 50000 <= mid.nbytes < MiB
    assert waiting.cancelled and waiting.status is None
    assert (streamed.outcome, streamed.reset_code) == ("reset", 8)
    assert (slept.outcome, slept.reset_code) == ("reset", 8) and slept.ended - slept.started < 1


async def test_client_goaway_is_recorded_and_in_flight_responses_still_arrive():
    obs = H2Observations()
    async with h2_origin(obs) as port, h2_client(port) as c:
        task = asyncio.create_task(c.request("GET", "/late?sleep=0.1"))
        await asyncio.sleep(0.03)
        await c.send_goaway(0, 0)
        r = await task
    assert r.status == 200 and r.ended
    assert obs.goaways == [(0, 0)]


async def test_streams_multiplex_and_the_concurrency_limit_is_enforced():
    obs = H2Observations()
    async with h2_origin(obs, max_concurrent_streams=2) as port, h2_client(port) as c:
        await c.ping()  # the origin's SETTINGS are in by now
        many = [asyncio.create_task(c.request("GET", "/slow?sleep=0.2")) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            await c.request("GET", "/polite")
        c.conn.remote_settings = h2.settings.Settings(client=False)  # now a client that ignores it
        refused = await c.request("GET", "/one-too-many")
        results = await asyncio.gather(*many)
        more = await asyncio.gather(*(c.request("GET", f"/n{i}") for i in range(2)))
    assert refused.reset_code == 7 and obs.last("/one-too-many").outcome == "refused"
    assert [r.status for r in results + more] == [200] * 4
    assert len(obs.peers()) == 1 and obs.connections == 1
    assert [r.stream_id for r in obs.requests] == [1, 3, 5, 7, 9]


async def test_stream_echo_answers_each_chunk_as_it_arrives():
    progress = Progress()

    async def chunks():
        for i in range(5):
            yield bytes([65 + i]) * 1000
            async with asyncio.timeout(2):  # the echo must come back before the next goes
                while progress.nbytes < (i + 1) * 1000:
                    await asyncio.sleep(0.002)

    async with h2_origin() as port:
        r = await h2_request(port, "POST", "/stream-echo", body=chunks(), progress=progress)
    assert r.status == 200 and r.ended and r.data == b"".join(bytes([65 + i]) * 1000 for i in range(5))


async def test_bad_instruction_gets_a_clear_400():
    async with h2_origin() as port:
        r = await h2_request(port, "GET", "/source?size=lots")
    assert r.status == 400 and b"size='lots' is not an integer" in r.data


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2-pki")
    ca = make_ca("h2 peer CA")
    ca_file, _ = ca.write(d, "ca")
    cert, key = issue(ca, "origin.test", dns=("origin.test",)).write(d, "server")
    return ca_file, (cert, key)


async def test_tls_with_alpn(pki):
    ca, tls = pki
    obs = H2Observations()
    async with h2_origin(obs, tls=tls) as port:
        r = await h2_request(port, "GET", "/tls", ca=ca, server_name="origin.test",
                             authority="origin.test", scheme="https")
    assert r.status == 200 and r.json()["scheme"] == "https" and obs.alpn == ["h2"]


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out, err


@needs_curl
async def test_curl_prior_knowledge():
    obs = H2Observations()
    async with h2_origin(obs) as port:
        base = f"http://127.0.0.1:{port}"
        rc, out, err = await curl("--http2-prior-knowledge", "-H", "x-team: peers", f"{base}/c?q=1")
        assert rc == 0, err
        seen = json.loads(out)
        assert seen["path"] == "/c?q=1" and ["x-team", "peers"] in seen["headers"]
        rc, out, err = await curl("--http2-prior-knowledge", "--data-binary", "x" * 70000, f"{base}/up")
        assert rc == 0 and json.loads(out)["body_length"] == 70000
        rc, out, _ = await curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{size_download} %{http_version}",
                                f"{base}/source?size=1000000")
        assert out == b"1000000 2"
        rc, _, err = await curl("--http2-prior-knowledge", f"{base}/?rst=before")
        assert rc == 92, err  # curl: HTTP/2 stream error
    assert [r.method for r in obs.requests] == ["GET", "POST", "GET", "GET"]


@needs_curl
async def test_curl_http2_over_tls(pki):
    ca, tls = pki
    async with h2_origin(tls=tls) as port:
        rc, out, err = await curl("--http2", "--cacert", ca, "--resolve", f"origin.test:{port}:127.0.0.1",
                                  "-w", "\n%{http_version}", f"https://origin.test:{port}/tls")
    body, _, version = out.rpartition(b"\n")
    assert rc == 0, err
    assert version == b"2" and json.loads(body)["authority"] == f"origin.test:{port}"
