"""Priorities and locality weights: Envoy's priority load with the overprovisioning factor,
panic only when the priorities together cannot take the load, and failover to priority 1
through a real proxy when priority 0 goes unhealthy."""

from __future__ import annotations

import random
from collections import Counter

import trio

from tests.support import Backend, Client, Reply, start_proxy
from trioproxy.upstream import lb
from trioproxy.upstream.config import Locality
from trioproxy.upstream.host import Host


def level(
    priority: int, healthy: int, total: int, locality: str = "", weight: int = 0
) -> list[Host]:
    return [
        Host(
            address=(f"10.0.{priority}.{i}", 80),
            priority=priority,
            healthy=i < healthy,
            locality=Locality(zone=locality),
            locality_weight=weight,
        )
        for i in range(total)
    ]


def priority_shares(balancer: lb.LoadBalancer, n: int = 20_000) -> tuple[float, float]:
    picks = [balancer.choose() for _ in range(n)]
    p0 = sum(1 for h in picks if h is not None and h.priority == 0) / n
    return round(p0 * 100), round((1 - p0) * 100)


def test_a_healthy_priority_0_takes_everything() -> None:
    b = lb.build_for_cluster("ROUND_ROBIN", level(0, 4, 4) + level(1, 4, 4))
    assert priority_shares(b) == (100, 0)


def test_load_spills_over_by_availability_with_overprovisioning() -> None:
    # P0 at 50 % healthy: 50 * 1.4 = 70 % availability, so 70/30 (an example of Envoy's docs)
    b = lb.build_for_cluster("RANDOM", level(0, 2, 4) + level(1, 4, 4), rng=random.Random(1))
    share0, share1 = priority_shares(b)
    assert abs(share0 - 70) <= 2 and abs(share1 - 30) <= 2
    assert not b.panic  # the total is 100 %: no panic although P0 is at the threshold


def test_under_100_percent_in_total_a_weak_level_panics() -> None:
    # P0 20 % healthy (28 %), P1 20 % (28 %): total 56 → normalised 50/50, both in panic
    hosts = level(0, 1, 5) + level(1, 1, 5)
    b = lb.build_for_cluster("ROUND_ROBIN", hosts, rng=random.Random(2))
    picks = [b.choose() for _ in range(2000)]
    assert b.panic
    assert len({id(h) for h in picks}) == 10  # unhealthy hosts get traffic too, in panic


def test_locality_weights_share_a_priority() -> None:
    hosts = level(0, 2, 2, "a", weight=1) + level(0, 2, 2, "b", weight=3)
    b = lb.build_for_cluster("ROUND_ROBIN", hosts, locality_weighted=True)
    picks = Counter(h.locality.zone for h in (b.choose() for _ in range(400)) if h is not None)
    assert picks == {"a": 100, "b": 300}


async def test_failover_to_priority_1_through_the_proxy(nursery: trio.Nursery) -> None:
    def failing_checks(rec: object) -> Reply:
        return Reply(503 if getattr(rec, "target", "") == "/healthz" else 200, body=b"primary")

    primary = Backend(name="primary", handler=failing_checks)
    backup = Backend(name="backup")
    p0 = await nursery.start(primary.serve)
    p1 = await nursery.start(backup.serve)
    config = f"""
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: backend}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    health_checks:
    - {{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /healthz}}}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - priority: 0
        lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p0}}}}}}}}}]
      - priority: 1
        lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p1}}}}}}}}}]
"""  # noqa: E501
    proxy = await start_proxy(nursery, config)
    client = await Client.connect(proxy.port)
    try:
        bodies = {(await client.request("GET", "/"))[1] for _ in range(10)}
    finally:
        await client.aclose()
    # the primary fails its health checks: all traffic goes to priority 1, none in panic
    assert bodies == {b"backup"}


class Hashed:
    """A balancer context with a fixed request hash."""

    def __init__(self, value: int) -> None:
        self.value = value

    def lb_hash(self) -> int:
        return self.value


def test_consistent_hashing_picks_the_priority_by_the_hash() -> None:
    # 70/30 as above; Envoy takes priority 0 when hash % 100 + 1 <= 70, so a key keeps its level
    for policy in ("RING_HASH", "MAGLEV"):
        b = lb.build_for_cluster(policy, level(0, 2, 4) + level(1, 4, 4))
        for value in (0, 69, 70, 99, 100 + 5, 2**64 - 1):
            picked = b.choose(Hashed(value))
            assert picked is not None
            expected = 0 if value % 100 + 1 <= 70 else 1
            assert picked.priority == expected, (policy, value)
            assert all(b.choose(Hashed(value)) is picked for _ in range(5))


def test_consistent_hashing_spans_localities_with_envoys_shares() -> None:
    # zones b (weight 3: hosts of weight 1 and 2), a (weight 1), c (weight 2: its second host
    # is unhealthy, but the zone still counts in the total): shares a 1/6, b 1/6 and 1/3, c 1/3
    def host(zone: str, zone_weight: int, weight: int, *, healthy: bool = True) -> Host:
        return Host(
            address=(f"10.1.0.{len(made)}", 80),
            weight=weight,
            healthy=healthy,
            locality=Locality(zone=zone),
            locality_weight=zone_weight,
        )

    made: list[Host] = []
    for args in (("b", 3, 1), ("b", 3, 2), ("a", 1, 1), ("c", 2, 1)):
        made.append(host(*args))
    made.append(host("c", 2, 2, healthy=False))
    b = lb.build_for_cluster("RING_HASH", made, locality_weighted=True, minimum_ring_size=6)
    assert isinstance(b, lb.PriorityBalancer)
    (ring,) = b._levels
    assert isinstance(ring, lb.RingHash)
    assert ring.hosts == [made[2], made[0], made[1], made[3]]  # zones in name order
    counts = Counter(id(h) for h in ring._ring)
    assert [counts[id(h)] for h in ring.hosts] == [1, 1, 2, 2]
    # one ring: a key always reaches the same host, whatever the zones' turns would be
    assert all(b.choose(Hashed(12345)) is b.choose(Hashed(12345)) for _ in range(20))
