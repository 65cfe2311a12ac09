"""Load balancers: distribution invariants (hypothesis) and health handling."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from trioproxy.upstream import lb
from trioproxy.upstream.host import Host


def hosts(n: int, weights: list[int] | None = None) -> list[Host]:
    ws = weights or [1] * n
    return [Host(address=("10.0.0.1", 1000 + i), weight=ws[i]) for i in range(n)]


@given(n=st.integers(1, 20), seed=st.integers(0, 2**32), rounds=st.integers(1, 5))
def test_round_robin_every_window_hits_each_host_once(n: int, seed: int, rounds: int) -> None:
    hs = hosts(n)
    balancer = lb.RoundRobin(hs, rng=random.Random(seed))
    picks = [balancer.choose() for _ in range(n * rounds + n)]
    for start in range(len(picks) - n + 1):
        window = picks[start : start + n]
        assert {id(h) for h in window} == {id(h) for h in hs}


@given(
    weights=st.lists(st.integers(1, 10), min_size=2, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_weighted_round_robin_respects_weights_over_a_cycle(weights: list[int], seed: int) -> None:
    hs = hosts(len(weights), weights)
    balancer = lb.RoundRobin(hs, rng=random.Random(seed))
    total = sum(weights)
    counts = Counter(id(balancer.choose()) for _ in range(total))
    assert [counts[id(h)] for h in hs] == weights


def test_round_robin_starts_at_a_random_offset() -> None:
    hs = hosts(10)
    firsts = {lb.RoundRobin(hs, rng=random.Random(s)).choose() for s in range(50)}
    assert len(firsts) > 1


@given(seed=st.integers(0, 2**32), n=st.integers(2, 10))
def test_least_request_never_picks_the_busiest_with_two_hosts_idle(seed: int, n: int) -> None:
    hs = hosts(n)
    for h in hs:
        h.rq_active = 5
    hs[0].rq_active = 0
    balancer = lb.LeastRequest(hs, choice_count=n * 50, rng=random.Random(seed))
    # with many choices, the idle host is almost surely sampled and always wins
    assert balancer.choose() is hs[0]


def test_least_request_prefers_idle_hosts() -> None:
    hs = hosts(4)
    hs[0].rq_active = 100
    balancer = lb.LeastRequest(hs, rng=random.Random(1))
    counts = Counter(id(balancer.choose()) for _ in range(4000))
    # hs[0] is picked only when both choices are hs[0]: about 1/16 of the time
    assert counts[id(hs[0])] < 500


def test_weighted_least_request_follows_weights_and_load() -> None:
    hs = hosts(2, [1, 3])
    balancer = lb.LeastRequest(hs, rng=random.Random(2))
    counts = Counter(id(balancer.choose()) for _ in range(4000))
    assert counts[id(hs[1])] > 2 * counts[id(hs[0])]
    hs[1].rq_active = 20
    counts = Counter(id(balancer.choose()) for _ in range(4000))
    assert counts[id(hs[0])] > counts[id(hs[1])]


def test_random_covers_all_hosts() -> None:
    hs = hosts(5)
    balancer = lb.RandomLB(hs, rng=random.Random(3))
    assert {id(balancer.choose()) for _ in range(500)} == {id(h) for h in hs}


@given(policy=st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]), n=st.integers(3, 10))
def test_unhealthy_hosts_are_skipped(policy: str, n: int) -> None:
    hs = hosts(n)
    hs[0].healthy = False
    balancer = lb.build(policy, hs, rng=random.Random(0))
    assert not balancer.panic
    assert all(balancer.choose() is not hs[0] for _ in range(100))


@given(policy=st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]))
def test_no_hosts_gives_none(policy: str) -> None:
    assert lb.build(policy, []).choose() is None


def test_panic_when_most_hosts_are_unhealthy_uses_all() -> None:
    hs = hosts(4)
    for h in hs[:3]:
        h.healthy = False
    balancer = lb.build("ROUND_ROBIN", hs)
    assert balancer.panic
    assert {id(balancer.choose()) for _ in range(4)} == {id(h) for h in hs}


class Keyed:
    """A balancer context whose hash is that of a fixed key (what a hash policy yields)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def lb_hash(self) -> int:
        from trioproxy.upstream.hashing import hash64

        return hash64(self.key)


def _hash_balancer(kind: str, hs: list[Host]) -> lb.LoadBalancer:
    if kind == "ring":
        return lb.RingHash(hs, rng=random.Random(1))
    return lb.Maglev(hs, table_size=4099, rng=random.Random(1))


def test_hash_balancers_are_consistent_and_weighted() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    for kind in ("ring", "maglev"):
        hs = hosts(3, [1, 1, 2])
        balancer = _hash_balancer(kind, hs)
        first = {k: balancer.choose(Keyed(k)) for k in keys}
        assert all(balancer.choose(Keyed(k)) is first[k] for k in keys[:200])
        counts = Counter(id(h) for h in first.values())
        share = [counts[id(h)] / len(keys) for h in hs]
        assert abs(share[2] - 0.5) < 0.08, (kind, share)
        assert abs(share[0] - 0.25) < 0.08, (kind, share)


def test_hash_balancers_move_few_keys_when_a_host_goes() -> None:
    keys = [f"user-{i}" for i in range(3000)]
    for kind in ("ring", "maglev"):
        hs = hosts(4)
        full = _hash_balancer(kind, hs)
        before = {k: full.choose(Keyed(k)) for k in keys}
        after_b = _hash_balancer(kind, hs[:3])
        moved = [
            k for k in keys if before[k] is not hs[3] and after_b.choose(Keyed(k)) is not before[k]
        ]
        # A ring re-scales to keep its minimum size (each host gets more points) and a
        # maglev table is refilled: both move some other keys too, as Envoy's do, but far
        # fewer than rehashing would (about 75 % of them).
        assert len(moved) / len(keys) < 0.15, (kind, len(moved))


def test_hash_balancers_without_a_hash_pick_at_random() -> None:
    hs = hosts(4)
    for kind in ("ring", "maglev"):
        balancer = _hash_balancer(kind, hs)
        assert len({id(balancer.choose()) for _ in range(200)}) == 4
