"""Local rate limiting: token buckets per route and per client address (phase ADMIT).

A bucket holds up to `burst` tokens and gains `requestsPerSecond` of them a second; a
request takes one, and a request that finds less than one token is refused with 429
(gRPC: RESOURCE_EXHAUSTED) and `retry-after`.  Buckets refill lazily from the loop time
the exchange took when it started: no timer, no task, nothing runs between requests.

Everything is compiled once at start (`RateLimits.for_route`): each route gets a
`RouteLimiter` holding the rules that apply to it, or None, so a route without a rule
costs one attribute test.  A request must pass every rule that applies; tokens are
taken only when it passes them all, so a refusal by one rule costs nothing in another.

A `per: client` rule keeps one bucket per client address in a dict bounded by
MAX_CLIENTS.  When it is full, buckets that have refilled (the client has been idle long
enough: forgetting it changes nothing) are dropped, then the oldest until a quarter is
free, so random source addresses cannot grow memory and the sweep runs at most once per
MAX_CLIENTS/4 new clients.  A client dropped while its bucket was not full comes back
with a full one: under more than MAX_CLIENTS active clients a limit errs on admitting.

State is per process: each worker counts its own requests.
"""
from __future__ import annotations

from itertools import islice
from math import ceil
from typing import TYPE_CHECKING

from gateway.proxy.local_reply import RATE_LIMITED, LocalReply

if TYPE_CHECKING:
    from gateway.config.model import RateLimit
    from gateway.observability.stats import RouteStats

# Per-client buckets kept by one rule: about 200 bytes each (key, bucket, dict slot),
# so some 2 MB per per-client rule at most.
MAX_CLIENTS = 10_000

# The 429 for each whole number of seconds to wait: at most ceil(1 / requestsPerSecond)
# of them, as a bucket never holds fewer than zero tokens.
_REPLIES: dict[int, LocalReply] = {}


def refusal(wait: float) -> LocalReply:
    """The 429 telling the client to come back after `wait` seconds (rounded up, >= 1)."""
    seconds = max(1, ceil(wait))
    reply = _REPLIES.get(seconds)
    if reply is None:
        reply = _REPLIES[seconds] = RATE_LIMITED._replace(
            headers=((b"retry-after", b"%d" % seconds),))
    return reply


class Bucket:
    __slots__ = ("tokens", "last")

    def __init__(self, tokens: float, last: float):
        self.tokens = tokens
        self.last = last     # loop time of the last refill


class Rule:
    """One configured limit as the request path sees it: one bucket, or one per client."""
    __slots__ = ("rate", "burst", "bucket", "clients", "max_clients")

    def __init__(self, rate: float, burst: float, per_client: bool, now: float,
                 max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.burst = burst
        self.bucket = None if per_client else Bucket(burst, now)
        self.clients: dict[bytes, Bucket] | None = {} if per_client else None
        self.max_clients = max_clients

    def client_bucket(self, key: bytes, now: float) -> Bucket:
        clients = self.clients
        bucket = clients.get(key)
        if bucket is None:
            if len(clients) >= self.max_clients:
                self._evict(now)
            bucket = clients[key] = Bucket(self.burst, now)
        return bucket

    def _evict(self, now: float) -> None:
        clients = self.clients
        rate, burst = self.rate, self.burst
        for key in [k for k, b in clients.items() if b.tokens + (now - b.last) * rate >= burst]:
            del clients[key]
        excess = len(clients) - self.max_clients * 3 // 4
        if excess > 0:
            # Dicts keep insertion order: these are the clients seen first.
            for key in list(islice(clients, excess)):
                del clients[key]


class RouteLimiter:
    """The rules of one route; `check` runs once per request, in phase ADMIT."""
    __slots__ = ("rules", "per_client", "hops", "stats")

    def __init__(self, rules: tuple[Rule, ...], hops: int, stats: RouteStats):
        self.rules = rules
        self.per_client = any(r.clients is not None for r in rules)
        self.hops = hops
        self.stats = stats

    def check(self, ex, now: float) -> LocalReply | None:
        """None to admit (a token taken from each bucket), else the 429 to answer with."""
        key = client_address(ex, self.hops) if self.per_client else None
        wait = 0.0
        buckets = []
        for rule in self.rules:
            bucket = rule.bucket if rule.clients is None else rule.client_bucket(key, now)
            tokens = bucket.tokens
            # An exchange that started before the bucket's last refill adds nothing.
            elapsed = now - bucket.last
            if elapsed > 0.0:
                tokens += elapsed * rule.rate
                if tokens > rule.burst:
                    tokens = rule.burst
                bucket.tokens = tokens
                bucket.last = now
            if tokens < 1.0:
                needed = (1.0 - tokens) / rule.rate
                if needed > wait:
                    wait = needed
            buckets.append(bucket)
        if wait:
            self.stats.rate_limited += 1
            return refusal(wait)
        for bucket in buckets:
            bucket.tokens -= 1.0
        return None


def client_address(ex, hops: int) -> bytes:
    """The address a per-client limit counts: the connection's peer, or with `hops` trusted
    proxies the hops-th X-Forwarded-For entry from the right, as Envoy's
    xff_num_trusted_hops (the peer when the header has fewer entries)."""
    if hops:
        xff = None
        for name, value in ex.request_headers:
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
        if xff is not None:
            entries = xff.split(b",")
            if len(entries) >= hops:
                entry = entries[-hops].strip()
                if entry:
                    return entry
    return ex.downstream.client_ip


class RateLimits:
    """`gateway.rateLimits` compiled: the rules each route must pass."""

    def __init__(self, limits: tuple[RateLimit, ...], hops: int, now: float):
        self.limits = limits
        self.hops = hops
        self.now = now
        # A per-client rule is one set of client buckets whatever the routes it covers;
        # a per-route rule gets a bucket of its own in each route.
        self.shared = {i: Rule(r.requests_per_second, r.burst, True, now)
                       for i, r in enumerate(limits) if r.per == "client"}

    def for_route(self, name: str, stats: RouteStats) -> RouteLimiter | None:
        rules = []
        for i, r in enumerate(self.limits):
            if r.route is not None and r.route != name:
                continue
            rule = self.shared.get(i)
            rules.append(rule if rule is not None
                         else Rule(r.requests_per_second, r.burst, False, self.now))
        return RouteLimiter(tuple(rules), self.hops, stats) if rules else None
