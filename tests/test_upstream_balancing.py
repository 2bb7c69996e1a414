"""Round robin over usable endpoints, and Envoy's panic mode when too few are left."""
from __future__ import annotations

import asyncio
from collections import Counter

from gateway.config.model import Address, BackendGroup, VirtualService
from gateway.observability.stats import ClusterStats
from gateway.upstream.cluster import Cluster


class _Clock:
    now = 0.0


def cluster(*ports: int) -> Cluster:
    spec = VirtualService("svc.local", "http",
                          (BackendGroup(1, endpoints=tuple(Address("127.0.0.1", p) for p in ports)),))
    loop = asyncio.new_event_loop()
    try:
        return Cluster(spec, ClusterStats("svc.local"), loop, _Clock())
    finally:
        loop.close()


def picks(c: Cluster, n: int) -> Counter:
    return Counter(c.pick().port for _ in range(n))


def test_round_robin_spreads_evenly():
    c = cluster(1, 2, 3)
    assert picks(c, 300) == {1: 100, 2: 100, 3: 100}


def test_unhealthy_and_ejected_endpoints_leave_the_rotation_and_come_back():
    c = cluster(1, 2, 3, 4)
    one, two = c.groups[0].endpoints[:2]
    one.set_healthy(False)
    assert picks(c, 300) == {2: 100, 3: 100, 4: 100}
    two.set_ejected(True)                  # 2 of 4 usable: exactly the threshold, no panic
    assert picks(c, 200) == {3: 100, 4: 100} and not c.groups[0].panic
    one.set_healthy(True)
    two.set_ejected(False)
    assert picks(c, 400) == {1: 100, 2: 100, 3: 100, 4: 100}


def test_panic_balances_over_every_endpoint_when_under_half_are_usable():
    c = cluster(1, 2, 3)
    for endpoint in c.groups[0].endpoints[:2]:
        endpoint.set_healthy(False)
    assert c.groups[0].panic
    assert picks(c, 300) == {1: 100, 2: 100, 3: 100}
    lone = cluster(7)
    lone.groups[0].endpoints[0].set_healthy(False)
    assert lone.pick().port == 7           # a single unhealthy endpoint still gets traffic
