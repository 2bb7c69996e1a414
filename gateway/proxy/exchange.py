"""One request/response pair, run through named phases.

Life of an exchange (callback-driven: no task per request):

    start()                   phase ROUTE: normalise the path, select a gateway route
      -> _admit()             phase ADMIT: connection-pool limits (issue 5 hooks in here)
      -> _pick_endpoint()     phase PICK: the cluster's balancer chooses an endpoint
      -> endpoint.acquire()   phase EXCHANGE: a pooled or new upstream connection
    on_upstream_ready()       the rewritten head (and any buffered body) goes upstream
    on_response_*()           phase RESPOND: the upstream codec streams the response back
    finish()                  phase LOG: stats and access log, exactly once

The downstream codec feeds request events in (`on_request_body`,
`on_request_end`); the upstream codec feeds response events.  Backpressure is
passed straight through: a full write buffer on one side pauses reading on the
other.  Every failure ends in `_fail(reply)`, which answers with a local reply
when no response head went out yet and otherwise resets the client connection.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.proxy import grpc_web, local_reply as replies, retry as retry_policy
from gateway.proxy.headers import GATEWAY_SET, HOP_BY_HOP, connection_tokens, new_request_id
from gateway.routing.normalize import normalize_path

if TYPE_CHECKING:
    from gateway.listener.http1 import Http1Downstream
    from gateway.upstream.http1 import Http1Upstream

# Request bodies are buffered while no upstream connection is ready; past this the
# client is paused.  Bodies up to REPLAY_LIMIT are kept so a request that hit a stale
# pooled connection can be sent again on a fresh one.
BUFFER_HIGH_WATER = 256 * 1024
REPLAY_LIMIT = 64 * 1024

# The routing memo (Exchange._route): repeated requests skip normalising, matching
# and rewriting.  Bounded in entries and in the target length it keys on.
DECISION_MEMO_SIZE = 4096
MEMO_TARGET_MAX = 512

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
NO_BODY_STATUS = frozenset((204, 304))


class Exchange:
    __slots__ = (
        # downstream request
        "downstream", "ctx", "method", "method_b", "target", "request_headers", "host",
        "content_length", "chunked", "upgrade", "connection_listed", "expect_continue",
        "client_keep_alive",
        "request_complete", "request_trailers",
        # routing result
        "route", "route_info", "service", "endpoint", "upstream_head", "path",
        # upstream side
        "upstream", "retried", "body_buffer", "buffered", "replay", "replay_ok", "limit",
        "continue_sent", "upstream_request_done",
        # response side
        "head_sent", "done", "close_after", "deadline", "last_activity",
        # access-log fields
        "started_at", "start_time", "duration", "response_duration", "original_path",
        "protocol", "response_headers", "trailers", "status", "response_flags",
        "bytes_received", "bytes_sent", "upstream_host", "local_reply_body",
        "upstream_failure_reason", "grpc_status",
        # retries (proxy/retry.py): the cluster's policy or None, retries done, endpoints
        # tried, the whole exchange's deadline (`deadline` is the attempt's), URX
        "retry", "retries", "tried", "overall_deadline", "retries_exhausted",
        # gRPC (set by the HTTP/2 codec): a gRPC request and its grpc-timeout in seconds
        "grpc", "grpc_timeout",
        # gRPC-Web: the client's content-type (set by the codecs), then from start() on
        # the grpc_web.GrpcWebCall translating this exchange
        "grpc_web",
    )

    def __init__(self, downstream: Http1Downstream, method_b: bytes, target: bytes,
                 headers: list[tuple[bytes, bytes]], host: bytes | None,
                 content_length: int | None, chunked: bool, upgrade: bytes | None,
                 connection_listed: bool,
                 expect_continue: bool, keep_alive: bool, version: str):
        self.downstream = downstream
        self.ctx = downstream.ctx
        self.method_b = method_b
        self.method = method_b.decode("latin-1")
        self.target = target
        self.request_headers = headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade                    # the Upgrade value, when switching protocols
        self.connection_listed = connection_listed  # a Connection header may name more hop-by-hop fields
        self.expect_continue = expect_continue
        self.client_keep_alive = keep_alive
        self.request_complete = not (chunked or content_length or upgrade)
        self.request_trailers = None
        self.route = None
        self.route_info = None
        self.service = None
        self.endpoint = None
        self.upstream_head = b""
        self.path = None
        self.upstream = None
        self.limit = None       # the maxRequests slot this exchange holds, if any
        self.retried = False
        self.body_buffer = None
        self.buffered = 0
        self.replay = None
        self.replay_ok = True
        self.continue_sent = False
        self.upstream_request_done = False
        self.head_sent = False
        self.done = False
        self.close_after = not keep_alive
        self.deadline = 0.0   # loop time after which the tick times us out; 0 = none
        self.last_activity = 0.0
        self.started_at = 0.0
        self.start_time = time.time()
        self.duration = 0.0
        self.response_duration = None
        self.original_path = target.decode("latin-1")
        self.protocol = "HTTP/" + version
        self.response_headers = None
        self.trailers = None
        self.status = 0
        self.response_flags = "-"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_host = None
        self.local_reply_body = None
        self.upstream_failure_reason = None
        self.grpc_status = None
        self.grpc = False
        self.grpc_timeout = 0.0
        self.grpc_web = None
        self.retry = None
        self.retries = 0
        self.tried = None
        self.overall_deadline = 0.0
        self.retries_exhausted = False

    # ------------------------------------------------------------------ phases

    def start(self) -> None:
        """Phase ROUTE: runs when this exchange is first in line on its connection."""
        ctx = self.ctx
        self.started_at = ctx.loop.time()
        self.last_activity = ctx.now
        if self.grpc_web is not None:
            grpc_web.begin(self)
        decision = ctx.decisions.get((self.method_b, self.target, self.host))
        if decision is None:
            decision = self._route()
            if decision is None:
                return   # answered already (400 or 404)
        route, info, upstream_path, path_b, rewritten, host_b = decision
        self.route = route
        self.route_info = info
        cluster = self.service = info.cluster
        if self.upgrade and cluster.h2:
            return self._fail(replies.UPGRADE_TO_H2)
        self.path = upstream_path
        if cluster.h2:
            self.upstream_head = self._upstream_h2_headers(path_b, host_b, rewritten)
        else:
            self.upstream_head = self._upstream_head(path_b, host_b, rewritten)
        timeout = cluster.request_timeout
        if self.grpc_timeout and (not timeout or self.grpc_timeout < timeout):
            # The client's own deadline is shorter than the route's (Envoy's
            # max_grpc_timeout behaviour); it travels upstream unchanged.
            timeout = self.grpc_timeout
        if timeout:
            # Enforced by the listener tick (runtime.TICK_SECONDS): a timer
            # per request costs more than the rest of the routing work together.
            self.deadline = self.started_at + timeout
        retry = self.retry = cluster.retry
        if retry is not None:
            retry_policy.begin(self, retry)
        self._admit()

    def _route(self) -> tuple | None:
        """Normalise the path, select the gateway route and rewrite (App Mesh 2.10).

        Returns (route, route info, upstream path, the same as bytes, rewritten?,
        upstream Host); None when the request was answered (400, 404).  The result is
        remembered per (method, target, Host) when nothing else could change it: the
        route's host group matches on no header, and the target is short (the memo's
        size is bounded by DECISION_MEMO_SIZE entries of at most MEMO_TARGET_MAX bytes).
        """
        ctx = self.ctx
        target = self.original_path
        memo = len(self.target) <= MEMO_TARGET_MAX
        if target[:1] != "/":
            memo = False   # _origin_form replaces the Host the memo is keyed by
            target = self._origin_form(target)
            if target is None:
                self._fail(replies.BAD_REQUEST, close=True)
                return None
        q = target.find("?")
        if q >= 0:
            raw_path, query = target[:q], target[q + 1:]
        else:
            raw_path, query = target, ""
        try:
            path = normalize_path(raw_path)
        except ValueError:
            self._fail(replies.BAD_REQUEST, close=True)
            return None
        host = self.host
        route = ctx.router.select(self.method, path, query,
                                  host.decode("latin-1") if host is not None else None,
                                  self.request_headers)
        if route is None:
            ctx.stats.downstream_rq_no_route += 1
            self._fail(replies.NO_ROUTE)
            return None
        info = ctx.route_info[route.name]
        upstream_path = route.rewrite_path(path) if route.path_rewritten else path
        if query:
            upstream_path = upstream_path + "?" + query
        host_b = info.host if info.host is not None else (host or b"")
        decision = (route, info, upstream_path, upstream_path.encode("latin-1"),
                    upstream_path != target, host_b)
        if memo and route.headers_free:
            decisions = ctx.decisions
            if len(decisions) >= DECISION_MEMO_SIZE:
                decisions.clear()   # a stream of distinct targets must not grow memory
            decisions[(self.method_b, self.target, self.host)] = decision
        return decision

    def _admit(self) -> None:
        """Phase ADMIT: the route's rate limits (the connection-pool limits of the
        listener and the virtual service are the backend group's: _pick_endpoint)."""
        limiter = self.route_info.rate_limit
        if limiter is not None:
            refused = limiter.check(self, self.started_at)
            if refused is not None:
                return self._fail(refused)
        self._pick_endpoint()

    def _pick_endpoint(self, endpoint=None) -> None:
        """Phase PICK: the balancer chooses (a retry chose already); the endpoint
        hands over a connection."""
        if endpoint is None:
            endpoint = self.service.pick()
        if endpoint is None:
            self.service.stats.upstream_rq_no_endpoint += 1
            return self._fail(replies.NO_ENDPOINT)
        limit = endpoint.limit
        if limit is not None:
            if limit.active >= limit.max_requests:
                self.service.stats.upstream_rq_pending_overflow += 1
                return self._fail(replies.UPSTREAM_OVERFLOW)
            limit.active += 1
            self.service.stats.upstream_rq_active += 1
            self.limit = limit
        self.endpoint = endpoint
        self.upstream_host = endpoint.label
        endpoint.acquire(self)

    def _origin_form(self, target: str) -> str | None:
        """Absolute-form targets (RFC 9112 3.2.2): the authority replaces Host."""
        scheme_end = target.find("://")
        if scheme_end <= 0 or target[:scheme_end].lower() not in ("http", "https"):
            return None
        rest = target[scheme_end + 3:]
        slash = rest.find("/")
        qmark = rest.find("?")
        cut = min(i for i in (slash, qmark, len(rest)) if i >= 0)
        authority, remainder = rest[:cut], rest[cut:]
        if not authority:
            return None
        self.host = authority.encode("latin-1")
        if not remainder.startswith("/"):
            remainder = "/" + remainder
        return remainder

    def _upstream_head(self, path_b: bytes, host_b: bytes, rewritten: bool) -> bytes:
        ds = self.downstream
        headers = self.request_headers
        parts = [self.method_b, b" ", path_b, b" HTTP/1.1\r\nhost: ", host_b, b"\r\n"]
        tokens = connection_tokens(headers) if self.connection_listed else ()
        xff = None
        has_request_id = False
        for name, value in headers:
            if name in HOP_BY_HOP or name in GATEWAY_SET:
                if name == b"te" and value.strip().lower() == b"trailers":
                    parts.append(b"te: trailers\r\n")
                continue
            if tokens and name in tokens:
                continue
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
                continue
            if name == b"x-request-id":
                has_request_id = True
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"x-forwarded-for: ")
        if xff is not None:
            parts += (xff, b", ")
        parts += (ds.client_ip, b"\r\n", ds.forwarded_headers)
        if ds.client_cert_header is not None:
            parts += (b"x-forwarded-client-cert: ", ds.client_cert_header, b"\r\n")
        if not has_request_id:
            rid = new_request_id()
            headers.append((b"x-request-id", rid))
            parts += (b"x-request-id: ", rid, b"\r\n")
        if rewritten:
            parts += (b"x-envoy-original-path: ", self.target, b"\r\n")
        if self.upgrade:
            parts += (b"connection: upgrade\r\nupgrade: ", self.upgrade, b"\r\n")
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif self.content_length is not None:
            parts.append(b"content-length: %d\r\n\r\n" % self.content_length)
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def _upstream_h2_headers(self, path_b: bytes, host_b: bytes, rewritten: bool) -> list:
        """The same forwarding rules as `_upstream_head`, as an HTTP/2 header list."""
        ds = self.downstream
        headers = self.request_headers
        out = [(b":method", self.method_b), (b":scheme", self.service.scheme),
               (b":authority", host_b), (b":path", path_b)]
        tokens = connection_tokens(headers) if self.connection_listed else ()
        xff = None
        has_request_id = False
        for name, value in headers:
            if name in HOP_BY_HOP or name in GATEWAY_SET:
                if name == b"te" and value.strip().lower() == b"trailers":
                    out.append((b"te", b"trailers"))
                elif name == b"content-length":
                    out.append((name, value))
                continue
            if tokens and name in tokens:
                continue
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
                continue
            if name == b"x-request-id":
                has_request_id = True
            out.append((name, value))
        out.append((b"x-forwarded-for", ds.client_ip if xff is None else xff + b", " + ds.client_ip))
        out += self.ctx.forwarded_pairs if ds.forwarded_headers is self.ctx.forwarded_headers \
            else self.ctx.forwarded_https_pairs
        if ds.client_cert_header is not None:
            out.append((b"x-forwarded-client-cert", ds.client_cert_header))
        if not has_request_id:
            rid = new_request_id()
            headers.append((b"x-request-id", rid))
            out.append((b"x-request-id", rid))
        if rewritten:
            out.append((b"x-envoy-original-path", self.target))
        return out

    # ------------------------------------------------------- upstream connection

    def on_upstream_ready(self, conn: Http1Upstream) -> None:
        """Phase EXCHANGE: a connection is ours; send the head and what body we hold."""
        if self.done:
            conn.release()
            return
        self.upstream = conn
        stats = self.service.stats
        stats.upstream_rq_total += 1
        if conn.reused:
            stats.upstream_cx_reused += 1
        if self.downstream.write_paused:
            conn.pause_reading()   # the client is still draining an earlier response
        conn.send_head(self, self.upstream_head)
        if self.body_buffer:
            chunks, self.body_buffer = self.body_buffer, None
            self.buffered = 0
            for chunk in chunks:
                conn.send_body(chunk, self.chunked)
            self.downstream.resume_reading_for(self)
        elif self.expect_continue and not self.request_complete and not self.continue_sent:
            # We answer 100-continue ourselves once the request can actually go
            # somewhere; the Expect header itself is not forwarded.
            self.continue_sent = True
            self.downstream.send_continue()
        if self.request_complete:
            self.upstream_request_done = True
            conn.send_end(self.chunked, self.request_trailers)

    def on_upstream_connect_failed(self, reason: str) -> None:
        self.service.stats.upstream_cx_connect_fail += 1
        self.upstream_failure_reason = reason
        retry = self.retry
        if (retry is not None and retry_policy.CONNECT in retry.failures
                and retry_policy.schedule(self, retry)):
            return
        self._fail(replies.CONNECT_FAILURE)

    def on_upstream_lost(self, conn: Http1Upstream, reason: str, got_response_bytes: bool,
                         refused: bool = False) -> None:
        """The upstream closed or reset before the response ended. refused: an HTTP/2
        stream the backend never processed (REFUSED_STREAM, above GOAWAY's last id)."""
        if self.done or conn is not self.upstream:
            return
        self.upstream = None
        self.upstream_failure_reason = reason
        if ((refused or (conn.reused and not got_response_bytes and self.method in IDEMPOTENT))
                and not self.retried and self.replay_ok and not self.upgrade):
            # The backend closed a pooled connection as we picked it, or refused the
            # stream (RFC 9113 8.7: safe to retry whatever the method, gRPC's POST too):
            # send again, once (nothing reached the application the first time).
            self.retried = True
            self.service.stats.upstream_rq_retry_stale += 1
            if self.replay:
                self.body_buffer = list(self.replay)
            self.endpoint.connect_new(self)
            return
        retry = self.retry
        if (retry is not None
                and (retry_policy.REFUSED if refused else retry_policy.RESET) in retry.failures
                and retry_policy.schedule(self, retry)):
            return
        self.service.stats.upstream_rq_reset += 1
        self._fail(replies.UPSTREAM_REMOTE_RESET if reason.startswith("stream reset")
                   else replies.UPSTREAM_RESET)

    def on_upstream_protocol_error(self, conn: Http1Upstream, reason: str) -> None:
        if self.done or conn is not self.upstream:
            return
        self.upstream = None
        self.upstream_failure_reason = reason
        self.service.stats.upstream_rq_reset += 1
        self._fail(replies.UPSTREAM_PROTOCOL_ERROR)

    # --------------------------------------------------------- request events

    def on_request_body(self, chunk: bytes, end: bool = False) -> None:
        """end: the chunk is the request's last (HTTP/2 DATA with END_STREAM); the
        downstream still calls on_request_end after it."""
        self.bytes_received += len(chunk)
        if self.done:
            return
        self.last_activity = self.ctx.now
        if self.grpc_web is not None:
            chunk = self.grpc_web.request_body(chunk)
            if not chunk:
                return   # a partial base64 group, or the exchange failed
        if self.replay_ok:
            if self.bytes_received <= REPLAY_LIMIT:
                if self.replay is None:
                    self.replay = [chunk]
                else:
                    self.replay.append(chunk)
            else:
                self.replay_ok = False
                self.replay = None
        conn = self.upstream
        if conn is not None:
            if end and self.grpc_web is None and self.service.h2:
                # END_STREAM rides on the last DATA frame upstream as well: one frame,
                # not DATA then an empty DATA (every unary gRPC call ends this way).
                self.request_complete = True
                self.upstream_request_done = True
                conn.send_body(chunk, self.chunked, True)
            else:
                conn.send_body(chunk, self.chunked)
            return
        if self.body_buffer is None:
            self.body_buffer = [chunk]
        else:
            self.body_buffer.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > BUFFER_HIGH_WATER:
            self.downstream.pause_reading_for(self)

    def on_request_end(self, trailers) -> None:
        self.request_complete = True
        self.request_trailers = trailers
        if self.done:
            return
        if self.grpc_web is not None and not self.grpc_web.request_end():
            return
        conn = self.upstream
        if conn is not None and not self.upstream_request_done:
            self.upstream_request_done = True
            conn.send_end(self.chunked, trailers)

    def on_downstream_lost(self) -> None:
        """The client went away before the response ended."""
        if self.done:
            return
        if self.response_flags == "-":
            self.response_flags = "DC"
        self.drop_upstream()    # a request still queued for a connection leaves the queue
        self.close_after = True
        self.finish()

    # -------------------------------------------------------- response events

    def on_informational(self, status: int, reason: bytes, headers) -> None:
        if status == 100 and (self.continue_sent or not self.expect_continue):
            return   # we already said 100 ourselves, or the client never asked
        self.downstream.send_informational(status, reason, headers)

    def on_response_head(self, status: int, reason: bytes, headers, length: int) -> None:
        if self.done:
            return
        retry = self.retry
        if retry is not None:
            # Held back while another attempt may still replace it (proxy/retry.py).
            if (retry.retriable_head(self, status, headers)
                    and retry_policy.schedule(self, retry, endpoint_failed=status >= 500)):
                return
            retry_policy.head_forwarded(self, status)
        self.response_duration = self.ctx.loop.time() - self.started_at
        self.status = status
        if not self.request_complete or self.upgrade:
            # The backend answered before the request body ended: the rest of the
            # body cannot be framed away safely, so the client connection closes after.
            self.close_after = True
        self.response_headers = headers   # the upstream codec removed hop-by-hop fields
        self.head_sent = True
        self.downstream.send_head(self, status, reason, headers, length,
                                  self.method == "HEAD" or status in NO_BODY_STATUS)

    def on_response_body(self, chunk: bytes) -> None:
        if self.done:
            return
        self.bytes_sent += len(chunk)
        self.last_activity = self.ctx.now
        self.downstream.send_body(chunk)

    def on_response_end(self, trailers) -> None:
        if self.done or not self.head_sent:
            return   # (no head sent: a trailers-only response that a retry replaces)
        self.trailers = trailers
        self.upstream = None
        self.downstream.send_end(trailers)
        self.finish()

    def on_tunnel_open(self, conn: Http1Upstream, reason: bytes, headers, leftover: bytes) -> None:
        """101 Switching Protocols: from here on both sides are joined byte streams."""
        if self.done:
            conn.abort()
            return
        self.upstream = None
        self.status = 101
        self.response_duration = self.ctx.loop.time() - self.started_at
        self.response_headers = headers
        self.head_sent = True
        # A tunnel lives as long as its peers want; only the idle timeout applies.
        self.deadline = 0.0
        self.ctx.stats.downstream_rq_upgrade += 1
        self.downstream.start_tunnel(self, conn, leftover)

    def on_tunnel_closed(self, sent: int, received: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.close_after = True
        self.finish()

    def abandon_attempt(self) -> None:
        """A retry follows (proxy/retry.py): let go of this attempt's upstream and pool
        slot, and rewind the request body to what the replay buffer holds."""
        self.drop_upstream()
        self._release_limit()
        self.status = 0
        self.response_headers = None
        self.response_duration = None
        self.upstream_request_done = False
        replay = self.replay
        self.body_buffer = list(replay) if replay else None
        self.buffered = sum(map(len, replay)) if replay else 0
        self.deadline = self.overall_deadline
        if not self.request_complete:
            self.downstream.resume_reading_for(self)

    # ---------------------------------------------------------------- failures

    def on_timeout(self) -> None:
        """The per-request deadline passed (checked by the listener tick), or the
        attempt's perRetryTimeout."""
        retry = self.retry
        if (retry is not None and retry_policy.per_try_expired(self)
                and retry_policy.RESET in retry.failures and retry_policy.schedule(self, retry)):
            return
        self._time_out(replies.UPSTREAM_TIMEOUT)

    def on_idle_timeout(self) -> None:
        """Nothing moved in either direction for the stream idle timeout."""
        self._time_out(replies.UPSTREAM_IDLE_TIMEOUT)

    def _time_out(self, reply: replies.LocalReply) -> None:
        if self.done:
            return
        if self.service is not None:
            self.service.stats.upstream_rq_timeout += 1
        self.drop_upstream()
        self._fail(reply)

    def drop_upstream(self) -> None:
        """Give up this attempt's upstream: the stream or connection, or the wait for one."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        if self.endpoint is not None:
            self.endpoint.cancel_wait(self)

    def _release_limit(self) -> None:
        limit = self.limit
        if limit is not None:
            self.limit = None
            limit.active -= 1
            self.service.stats.upstream_rq_active -= 1

    def _fail(self, reply: replies.LocalReply, close: bool = False) -> None:
        if self.done:
            return
        self.response_flags = reply.flag
        if self.retries_exhausted:
            retry_policy.exhausted_failure(self)
        if self.head_sent:
            # Too late for a status: cut the client off so the truncation is visible.
            self.close_after = True
            self.downstream.abort()
            self.finish()
            return
        self.status = reply.status
        self.local_reply_body = reply.body.decode()
        if close or not self.request_complete:
            self.close_after = True
        self.head_sent = True
        self.bytes_sent += len(reply.body)
        self.response_headers = self.downstream.send_local_reply(self, reply)
        self.finish()

    # --------------------------------------------------------------------- LOG

    def finish(self) -> None:
        """Phase LOG: count and log once, then let the connection move on."""
        if self.done:
            return
        self.done = True
        ctx = self.ctx
        retry = self.retry
        if retry is not None:
            retry_policy.end(self, retry)
        if self.limit is not None:
            self._release_limit()
        endpoint = self.endpoint
        if endpoint is not None and endpoint.outlier is not None:
            # Outlier detection (upstream/outlier.py): the final status or failure flag,
            # connect failures included (they end here through _fail).
            endpoint.outlier.observe(self)
        self.duration = ctx.loop.time() - (self.started_at or ctx.loop.time())
        info = self.route_info
        if info is not None:
            info.stats.observe(self.status, self.duration)
        else:
            ctx.no_route_stats.observe(self.status, self.duration)
        if ctx.access_log is not None:
            ctx.access_log.log(self)
        self.downstream.exchange_done(self, self.close_after)

    # ------------------------------------------------------ access-log helpers

    @property
    def route_name(self) -> str | None:
        return self.route.name if self.route is not None else None

    @property
    def downstream_remote(self):
        return self.downstream.peername

    @property
    def downstream_local(self):
        return self.downstream.sockname

    @property
    def requested_server_name(self):
        return None

    @property
    def cluster(self) -> str | None:
        return self.service.name if self.service is not None else None
