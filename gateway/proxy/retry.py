"""Retries: App Mesh HttpRetryPolicy / GrpcRetryPolicy (spec 2.16), Envoy's semantics.

One `Retry` per cluster (virtual service) holds the compiled policy and the
cluster's retry budget; an exchange points at it (`Exchange.retry`, None when
retries are switched off, so the request path pays one attribute test).

When an attempt may be retried:

- only while nothing of the response went to the client: a response head whose
  status is retriable is held back, never forwarded; gRPC's grpc-status normally
  comes in trailers, after the head went out, so only trailers-only responses
  (grpc-status in the head, how errors before any message are sent) are retried,
  as Envoy does;
- only while the request body is fully held: bodies up to `exchange.REPLAY_LIMIT`
  (64 KiB) are kept and replayed; a longer body is streamed once and never retried;
- never for a protocol upgrade (WebSocket).

Events (`httpRetryEvents`, `tcpRetryEvents`, `grpcRetryEvents`):
server-error = 500-508, 510, 511, or no response head at all: a reset or closed
connection, a refused stream, a failed connect, a per-retry timeout (Envoy's 5xx);
gateway-error = 502, 503, 504 or the same failures;
client-error = 409; stream-error = REFUSED_STREAM from an HTTP/2 backend;
connection-error = the TCP (or TLS) connection could not be established;
gRPC cancelled, deadline-exceeded, internal, resource-exhausted, unavailable =
grpc-status 1, 4, 13, 8, 14.

Without a retryPolicy, App Mesh applied an invisible default policy: 2 retries on
HTTP 503, gRPC UNAVAILABLE, connect failure, refused stream and upstream reset, no
per-retry timeout.  It is implemented here but off (`APPLY_DEFAULT_POLICY`): a virtual
service without retryPolicy is not retried (beyond the one free resend of a stale
pooled connection or refused stream, exchange.py), because a gateway that silently
triples the requests a failing backend sees surprises more than it helps; set
retryPolicy to opt in.  A policy with `maxRetries: 0` switches retries off.

Each retry goes to another endpoint of the cluster when one is in rotation, after
a full-jitter exponential backoff (25 ms base, 250 ms cap: Envoy's defaults), with
`perRetryTimeout` on every attempt (the first included) until a response head is
forwarded; the route's perRequest timeout still bounds the whole exchange.  The
budget (Envoy's retry_budget defaults): exchanges that are retrying may be at most
20% of the cluster's active requests, with a floor of 3; past it the failure goes
to the client as it is and `upstream_rq_retry_overflow` counts it.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from gateway.config.model import RetryPolicy
from gateway.upstream.outlier import LOCAL_FAILURES

if TYPE_CHECKING:
    from gateway.observability.stats import ClusterStats
    from gateway.proxy.exchange import Exchange

SERVER_ERROR = frozenset((500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511))
GATEWAY_ERROR = frozenset((502, 503, 504))
CLIENT_ERROR = frozenset((409,))
GRPC_EVENTS = {"cancelled": b"1", "deadline-exceeded": b"4", "internal": b"13",
               "resource-exhausted": b"8", "unavailable": b"14"}

BACKOFF_BASE = 0.025
BACKOFF_MAX = 0.25
BUDGET_SHARE = 0.2
BUDGET_MIN = 3

# Failures other than a response (what the exchange was told by its upstream codec).
RESET = "reset"            # closed or reset before the response head, or per-retry timeout
REFUSED = "refused"        # REFUSED_STREAM / beyond GOAWAY's last stream id
CONNECT = "connect"        # the connection could not be established
EVERY_FAILURE = frozenset((RESET, REFUSED, CONNECT))


class Retry:
    """A cluster's compiled retry policy and its retry budget."""
    __slots__ = ("max_retries", "per_try", "statuses", "grpc_statuses", "failures",
                 "stats", "active", "retrying")

    def __init__(self, max_retries: int, per_try: float, statuses: frozenset,
                 grpc_statuses: frozenset, failures: frozenset, stats: ClusterStats):
        self.max_retries = max_retries
        self.per_try = per_try               # seconds; 0 = only the request timeout
        self.statuses = statuses             # HTTP statuses worth another attempt
        self.grpc_statuses = grpc_statuses   # grpc-status values (bytes) in a trailers-only head
        self.failures = failures             # of RESET, REFUSED, CONNECT
        self.stats = stats
        self.active = 0      # exchanges of this cluster in flight (the budget's base)
        self.retrying = 0    # of them, those that have been retried

    def retriable_head(self, ex: Exchange, status: int, headers) -> bool:
        if status in self.statuses:
            return True
        if ex.grpc and self.grpc_statuses:
            for name, value in headers:
                if name == b"grpc-status":
                    return value in self.grpc_statuses
        return False


# App Mesh's invisible default policy (spec 2.16 "SHOULD apply by default"): off for
# now, see the README section "Retries"; tests switch it on here.
APPLY_DEFAULT_POLICY = False


def compile_policy(policy: RetryPolicy | None, stats: ClusterStats) -> Retry | None:
    if policy is None:
        if not APPLY_DEFAULT_POLICY:
            return None
        return Retry(2, 0.0, frozenset((503,)), frozenset((b"14",)), EVERY_FAILURE, stats)
    if policy.max_retries <= 0:
        return None
    statuses: set[int] = set()
    failures: set[str] = set()
    for event in policy.http_retry_events:
        # Envoy's 5xx and gateway-error take every failure to get a response as one.
        if event == "server-error":
            statuses |= SERVER_ERROR
            failures |= EVERY_FAILURE
        elif event == "gateway-error":
            statuses |= GATEWAY_ERROR
            failures |= EVERY_FAILURE
        elif event == "client-error":
            statuses |= CLIENT_ERROR
        elif event == "stream-error":
            failures.add(REFUSED)
    if "connection-error" in policy.tcp_retry_events:
        failures.add(CONNECT)
    grpc = frozenset(GRPC_EVENTS[e] for e in policy.grpc_retry_events if e in GRPC_EVENTS)
    return Retry(policy.max_retries, policy.per_retry_timeout or 0.0, frozenset(statuses),
                 grpc, frozenset(failures), stats)


def begin(ex: Exchange, retry: Retry) -> None:
    """The exchange was routed to a cluster that retries: count it, arm the per-try timer."""
    retry.active += 1
    ex.overall_deadline = ex.deadline
    _arm(ex, retry)


def end(ex: Exchange, retry: Retry) -> None:
    retry.active -= 1
    if ex.retries:
        retry.retrying -= 1


def _arm(ex: Exchange, retry: Retry) -> None:
    per_try = retry.per_try
    if per_try:
        attempt_deadline = ex.ctx.loop.time() + per_try
        overall = ex.overall_deadline
        ex.deadline = attempt_deadline if not overall or attempt_deadline < overall else overall


def head_forwarded(ex: Exchange, status: int) -> None:
    """The response is on its way to the client: no more retries, only the request timeout."""
    ex.deadline = ex.overall_deadline
    if ex.retries_exhausted:
        # Envoy's URX: the last attempt's answer was retriable but no retry was left.
        # Outlier detection ignores flagged exchanges, so the endpoint's error is told here.
        ex.response_flags = "URX"
        endpoint = ex.endpoint
        if status >= 500 and endpoint is not None and endpoint.outlier is not None:
            endpoint.outlier.failure()
    elif ex.retries:
        ex.service.stats.upstream_rq_retry_success += 1


def exhausted_failure(ex: Exchange) -> None:
    """A local reply (connect failure, reset, timeout) after the last allowed retry."""
    flag = ex.response_flags
    ex.response_flags = flag + ",URX"
    endpoint = ex.endpoint
    if flag in LOCAL_FAILURES and endpoint is not None and endpoint.outlier is not None:
        endpoint.outlier.failure()


def per_try_expired(ex: Exchange) -> bool:
    """The tick found the deadline passed: was it this attempt's own timeout?"""
    return ex.deadline != ex.overall_deadline


def schedule(ex: Exchange, retry: Retry, *, endpoint_failed: bool = True) -> bool:
    """A retriable event ended the current attempt: start another one after a backoff.

    False when the policy, the replay buffer or the budget says no; the caller then
    answers as without a retry policy.  endpoint_failed: the attempt counts as an
    error of its endpoint for outlier detection (5xx, reset, connect failure)."""
    if ex.head_sent or not ex.replay_ok or ex.upgrade or ex.done:
        return False
    if ex.retries >= retry.max_retries:
        ex.retries_exhausted = True
        return False
    if not ex.retries:
        if retry.retrying >= max(BUDGET_MIN, retry.active * BUDGET_SHARE):
            retry.stats.upstream_rq_retry_overflow += 1
            return False
        retry.retrying += 1
    ex.retries += 1
    retry.stats.upstream_rq_retry += 1
    endpoint = ex.endpoint
    if endpoint is not None:
        if endpoint_failed and endpoint.outlier is not None:
            endpoint.outlier.failure()
        if ex.tried is None:
            ex.tried = [endpoint]
        else:
            ex.tried.append(endpoint)
    ex.abandon_attempt()
    n = ex.retries
    backoff = random.uniform(0.0, min(BACKOFF_MAX, BACKOFF_BASE * ((1 << n) - 1)))
    ex.ctx.loop.call_later(backoff, _next_attempt, ex, retry)
    return True


def _next_attempt(ex: Exchange, retry: Retry) -> None:
    if ex.done:
        return
    _arm(ex, retry)
    ex._pick_endpoint(_pick_other(ex))


def _pick_other(ex: Exchange):
    """Another endpoint than those already tried, when the balancer offers one."""
    cluster = ex.service
    tried = ex.tried
    first = cluster.pick()
    if first is None or first not in tried:
        return first
    # Round robin moves on at each pick: a few more picks cover a small group.
    for _ in range(sum(len(g.rotation) for g in cluster.groups)):
        endpoint = cluster.pick()
        if endpoint is None or endpoint not in tried:
            return endpoint
    return first
