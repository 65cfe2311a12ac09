"""Consistent hashing through real Envoy and trioproxy: the same cluster of upstreams that each
answer with their own address, the same route ``hash_policy`` on ``x-key``, the same 200 keys;
each key must reach the same host through both proxies (RING_HASH and MAGLEV), so a fleet that
mixes them, or swaps one for the other, keeps its request-to-host affinity.

The upstreams listen on ephemeral ports, so every run hashes different host keys: a placement
rule that only agrees for some addresses shows up sooner or later. Hosts on ``::1`` check the
IPv6 form of the key (``[::1]:port``); those cases are skipped where ``::1`` cannot be bound.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import attrs
import pytest
import trio

from .harness import (
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    http_config,
    run_proxy,
    send_raw,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="::1 cannot be bound here")


@attrs.frozen
class Backend:
    """One upstream host of the hashed cluster: where it listens, its weight, its hostname."""

    ip: str = "127.0.0.1"
    weight: int = 1
    hostname: str = ""
    priority: int = 0
    zone: str = ""
    zone_weight: int = 0  # its locality's load_balancing_weight
    unhealthy: bool = False


@attrs.frozen
class Case:
    policy: str
    backends: tuple[Backend, ...]
    cluster_extra: str = ""  # YAML lines for the cluster, from column 0


WEIGHTED = (Backend(weight=1), Backend(weight=2), Backend(weight=3), Backend(weight=1))
MIXED = (
    Backend(weight=2),
    Backend("::1", weight=1),
    Backend(weight=1),
    Backend("::1", weight=3),
    Backend("::1", weight=1),
)
# Not in sorted order: Maglev fills its table in the order of the hosts' keys.
NAMED = (
    Backend(weight=1, hostname="gamma.example"),
    Backend(weight=2, hostname="alpha.example"),
    Backend(weight=1, hostname="beta.example"),
)
# Envoy hashes hostnames only for clusters whose hosts have one from DNS or EDS: a STRICT_DNS
# cluster of IP literals, each endpoint naming its hostname.
BY_HOSTNAME = """common_lb_config: {consistent_hashing_lb_config: {use_hostname_for_hashing: true}}
  type: STRICT_DNS
  dns_lookup_family: V4_ONLY"""

# Priority 0 is half healthy: 70 % of the load (50 % times the overprovisioning factor) stays
# there, the rest goes to priority 1; Envoy picks the priority by the request's hash too.
PRIORITIES = (
    Backend(weight=1),
    Backend(weight=2, unhealthy=True),
    Backend(weight=1, priority=1),
    Backend(weight=3, priority=1),
)
# Localities listed out of name order, one of them with an unhealthy host.
LOCALITIES = (
    Backend(weight=1, zone="b", zone_weight=3),
    Backend(weight=2, zone="b", zone_weight=3),
    Backend(weight=1, zone="a", zone_weight=1),
    Backend(weight=1, zone="c", zone_weight=2),
    Backend(weight=2, zone="c", zone_weight=2, unhealthy=True),
)
BY_LOCALITY = "common_lb_config: {locality_weighted_lb_config: {}}"

CASES = {
    "ring-weighted": Case("RING_HASH", WEIGHTED),
    "ring-ipv6": Case("RING_HASH", MIXED),
    # 3 equal hosts on a 5-point ring: 1.67 points each, so the rounding of each host's share
    # of points decides who owns what.
    "ring-fractional": Case(
        "RING_HASH",
        WEIGHTED[:1] * 3,
        "ring_hash_lb_config: {minimum_ring_size: 4, maximum_ring_size: 5}",
    ),
    "ring-hostname": Case("RING_HASH", NAMED, BY_HOSTNAME),
    "ring-murmur": Case(
        "RING_HASH", WEIGHTED, "ring_hash_lb_config: {hash_function: MURMUR_HASH_2}"
    ),
    "maglev-weighted": Case("MAGLEV", WEIGHTED),
    "maglev-ipv6": Case("MAGLEV", MIXED),
    "maglev-small-table": Case("MAGLEV", WEIGHTED, "maglev_lb_config: {table_size: 13}"),
    "maglev-hostname": Case("MAGLEV", NAMED, BY_HOSTNAME),
    "ring-priorities": Case("RING_HASH", PRIORITIES),
    "maglev-priorities": Case("MAGLEV", PRIORITIES),
    "ring-localities": Case("RING_HASH", LOCALITIES, BY_LOCALITY),
    "maglev-localities": Case("MAGLEV", LOCALITIES, BY_LOCALITY),
}

KEYS = [f"user-{i}" for i in range(200)]
HEADER_POLICY = "[{header: {header_name: x-key}}]"


@attrs.frozen
class Probe:
    """One request: a label for the report, its path and headers."""

    label: str
    headers: tuple[tuple[str, str], ...] = ()
    path: str = "/"


def _config(case: Case, ports: Sequence[int], hash_policy: str) -> str:
    lines = ["- name: hashed", "  connect_timeout: 1s", f"  lb_policy: {case.policy}"]
    if case.cluster_extra:
        lines.append(f"  {case.cluster_extra}")
    if "type:" not in case.cluster_extra:
        lines.append("  type: STATIC")
    lines += ["  load_assignment:", "    cluster_name: hashed", "    endpoints:"]
    groups: dict[tuple[int, str], list[tuple[Backend, int]]] = {}
    for b, port in zip(case.backends, ports, strict=True):
        groups.setdefault((b.priority, b.zone), []).append((b, port))
    for (priority, zone), members in groups.items():
        lines.append(f"    - priority: {priority}")
        if zone:
            lines.append(f"      locality: {{zone: {zone}}}")
            lines.append(f"      load_balancing_weight: {members[0][0].zone_weight}")
        lines.append("      lb_endpoints:")
        for b, port in members:
            lines += [
                "      - endpoint:",
                f'          address: {{socket_address: {{address: "{b.ip}", port_value: {port}}}}}',
            ]
            if b.hostname:
                lines.append(f"          hostname: {b.hostname}")
            lines.append(f"        load_balancing_weight: {b.weight}")
            if b.unhealthy:
                lines.append("        health_status: UNHEALTHY")
    return http_config(
        routes=f"""
- match: {{prefix: "/"}}
  route:
    cluster: hashed
    hash_policy: {hash_policy}
""",
        clusters="\n".join(lines),
    )


async def _placements(
    kind: str, template: str, upstream_port: int, probes: Sequence[Probe]
) -> list[str]:
    """The body (the answering host's address) of each probe, sent through ``kind``."""
    async with run_proxy(kind, template, upstream_port) as proxy:
        out = []
        for p in probes:
            resp = await send_raw(proxy.listener_port, build_request("GET", p.path, p.headers))
            assert resp.status == 200, (kind, resp)
            out.append(resp.body.decode())
        return out


async def _compare(
    case: Case, probes: Sequence[Probe], hash_policy: str = HEADER_POLICY
) -> tuple[list[str], list[str]]:
    """Send ``probes`` through Envoy and then trioproxy over the same upstreams: the hosts
    Envoy picked, and a line for each probe that reached another host through trioproxy."""
    upstreams = [RecordingUpstream(host=b.ip) for b in case.backends]
    listeners = [await u.listen() for u in upstreams]
    for u in upstreams:
        address = f"[{u.host}]:{u.port}" if ":" in u.host else f"{u.host}:{u.port}"
        u.script = (Reply(body=address.encode()),)
    template = _config(case, [u.port for u in upstreams], hash_policy)
    try:
        async with trio.open_nursery() as nursery:
            for u, ls in zip(upstreams, listeners, strict=True):
                await nursery.start(u.serve, ls)
            envoy = await _placements("envoy", template, upstreams[0].port, probes)
            ours = await _placements("trioproxy", template, upstreams[0].port, probes)
            nursery.cancel_scope.cancel()
    finally:
        for ls in listeners:
            for listener in ls:
                await listener.aclose()
    differ = [
        f"{p.label}: envoy {e}, trioproxy {t}"
        for p, e, t in zip(probes, envoy, ours, strict=True)
        if e != t
    ]
    return envoy, differ


def _report(differ: list[str], total: int) -> str:
    return f"{len(differ)} of {total} keys differ:\n" + "\n".join(differ[:20])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=needs_ipv6) if "ipv6" in n else n for n in CASES]
)
async def test_hash_policy_picks_the_host_envoy_picks(name: str) -> None:
    case = CASES[name]
    probes = [Probe(k, (("x-key", k),)) for k in KEYS]
    envoy, differ = await _compare(case, probes)
    # every healthy host took some keys through Envoy, so the comparison covers them all
    assert len(set(envoy)) == sum(not b.unhealthy for b in case.backends), envoy
    assert not differ, _report(differ, len(probes))


async def test_repeated_header_values_hash_as_in_envoy() -> None:
    # Envoy hashes every value of a repeated header, in sorted order
    probes = [Probe(f"t{i}+a{i}", (("x-key", f"t{i}"), ("x-key", f"a{i}"))) for i in range(40)]
    _, differ = await _compare(CASES["maglev-weighted"], probes)
    assert not differ, _report(differ, len(probes))


# Every kind of policy, and a terminal one in the middle: Envoy stops at a terminal policy once
# there is a hash, even one that an earlier policy made.
MIXED_POLICIES = (
    "[{cookie: {name: session}}, {header: {header_name: x-key}},"
    " {query_parameter: {name: k}, terminal: true}, {header: {header_name: x-after}}]"
)


async def test_hash_policies_combine_as_in_envoy() -> None:
    probes = []
    for i in range(25):
        after = ("x-after", f"z{i}")
        probes += [
            Probe(f"header {i}", (("x-key", f"k{i}"), after)),
            Probe(f"cookie {i}", (("cookie", f"a=1; session=s{i}"), after)),
            Probe(f"quoted cookie {i}", (("cookie", f'session="q{i}"'), after)),
            Probe(f"empty cookie {i}", (("cookie", "session="), ("x-key", f"e{i}"), after)),
            Probe(f"query {i}", (after,), f"/p?x=1&k=v{i}&k=second"),
            Probe(f"escaped query {i}", (after,), f"/p?k=a%20b+{i}"),
            Probe(f"bare query {i}", (("x-key", f"b{i}"), after), "/p?k"),
            Probe(f"none but after {i}", (after,)),
        ]
    _, differ = await _compare(CASES["ring-weighted"], probes, MIXED_POLICIES)
    assert not differ, _report(differ, len(probes))
