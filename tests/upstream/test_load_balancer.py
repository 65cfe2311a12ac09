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


# -- Envoy's placement (tests/differential/test_hash_lb.py checks it against Envoy itself) ---

# XXH64 of bytes(range(n)) with seeds 0 and 1, from the reference implementation.
XXH64_KNOWN = {
    0: (0xEF46DB3751D8E999, 0xD5AFBA1336A3BE4B),
    1: (0xE934A84ADB052768, 0x771917C7F6EE2451),
    3: (0xE5C7BB4533BC65DD, 0xA2168D89C582B451),
    4: (0xFFCED8604453CC1E, 0x94506F8C7E5870A9),
    7: (0x14CC643F630C72D2, 0xAF4C5311C47C77B7),
    8: (0x884A173614B81B8D, 0x9D2B7C7354FE4E23),
    12: (0x424AF23F1F08DCA5, 0x797CF4FAC65D4C13),
    31: (0xC346D2B59B4D8EE1, 0xF031031D65977DFC),
    32: (0xCBF59C5116FF32B4, 0xD74E6766CE9DBA94),
    33: (0x0C535D1ACAFB8EAD, 0xA371825F4210FE99),
    64: (0xF7C67301DB6713F0, 0x3CE5BDF7575926C0),
    100: (0x6AC1E58032166597, 0x3D19A3A2098A7023),
}

# libstdc++'s std::hash<std::string> on 64-bit Linux, the ring's MURMUR_HASH_2.
MURMUR_KNOWN = {
    b"": 6142509188972423790,
    b"hello": 2762169579135187400,
    b"abcdefghijk": 3672398144843267301,
    b"127.0.0.1:8080_0": 16027637164591516499,
    b"[::1]:443_1023": 5524376911652813245,
    b"0123456789abcdef0123456789abcdef!": 452676222913866261,
}


def test_xxhash64_matches_the_reference_values() -> None:
    from trioproxy.upstream.hashing import xxhash64

    for n, (seed0, seed1) in XXH64_KNOWN.items():
        assert (xxhash64(bytes(range(n))), xxhash64(bytes(range(n)), 1)) == (seed0, seed1), n


def test_murmur2_64_matches_libstdcxx_std_hash() -> None:
    from trioproxy.upstream.hashing import murmur2_64

    for data, expected in MURMUR_KNOWN.items():
        assert murmur2_64(data) == expected, data


def test_request_values_hash_as_their_wire_bytes() -> None:
    from trioproxy.upstream.hashing import hash64, xxhash64

    # header values are decoded as Latin-1: hashing must see the byte 0xE9, not UTF-8's C3 A9
    assert hash64("caf\u00e9") == xxhash64(b"caf\xe9")
    assert hash64("\u2603") == xxhash64("\u2603".encode())  # not from the wire: UTF-8


def test_hosts_are_keyed_by_envoys_address_string_or_hostname() -> None:
    v4 = Host(address=("10.0.0.1", 80), hostname="a.example")
    v6 = Host(address=("::1", 80), hostname="b.example")
    assert lb.hash_key(v4, False) == b"10.0.0.1:80"
    assert lb.hash_key(v6, False) == b"[::1]:80"
    assert lb.hash_key(v6, True) == b"b.example"


def _ring_counts(ring: lb.RingHash, hs: list[Host]) -> list[int]:
    counts = Counter(id(h) for h in ring._ring)
    return [counts[id(h)] for h in hs]


def test_ring_rounds_each_hosts_share_of_points_up_as_envoy_does() -> None:
    # Envoy's own example: 4 equal hosts on a 6-point ring want 1.5 points each; the running
    # count passes each running target, so the hosts get 2, 1, 2 and 1.
    hs = hosts(4)
    ring = lb.RingHash(hs, minimum_ring_size=1024, maximum_ring_size=6)
    assert _ring_counts(ring, hs) == [2, 1, 2, 1]
    # by default the lightest host gets a whole number of points, 1024 or more in all
    hs = hosts(3, [1, 2, 3])
    assert _ring_counts(lb.RingHash(hs), hs) == [171, 342, 513]


def test_ring_points_are_hashes_of_the_host_key_and_index() -> None:
    from trioproxy.upstream.hashing import murmur2_64, xxhash64

    v6 = Host(address=("::1", 80))
    ring = lb.RingHash([v6], minimum_ring_size=3, maximum_ring_size=3)
    assert ring._points == sorted(xxhash64(f"[::1]:80_{i}".encode()) for i in range(3))
    ring = lb.RingHash(
        [v6], minimum_ring_size=3, maximum_ring_size=3, hash_function="MURMUR_HASH_2"
    )
    assert ring._points == sorted(murmur2_64(f"[::1]:80_{i}".encode()) for i in range(3))


class Hashed:
    def __init__(self, value: int) -> None:
        self.value = value

    def lb_hash(self) -> int:
        return self.value


def test_ring_takes_the_first_point_at_or_after_the_hash_and_wraps() -> None:
    hs = hosts(3)
    ring = lb.RingHash(hs, minimum_ring_size=3, maximum_ring_size=3)
    points, owners = ring._points, ring._ring
    assert ring.choose(Hashed(points[1])) is owners[1]
    assert ring.choose(Hashed(points[1] - 1)) is owners[1]
    assert ring.choose(Hashed(points[1] + 1)) is owners[2]
    assert ring.choose(Hashed(0)) is owners[0]
    assert ring.choose(Hashed(points[-1] + 1)) is owners[0]


def test_maglev_table_does_not_depend_on_the_order_of_the_hosts() -> None:
    hs = hosts(4, [1, 2, 3, 1])
    table = lb.Maglev(hs, table_size=251)._table
    assert lb.Maglev(hs[::-1], table_size=251)._table == table
    assert lb.Maglev(hs[2:] + hs[:2], table_size=251)._table == table


def test_maglev_starts_each_host_at_its_offset() -> None:
    from trioproxy.upstream.hashing import xxhash64

    # the first host to take a turn (the smallest key) takes its offset slot
    a, b = Host(address=("::1", 80)), Host(address=("10.0.0.1", 80))
    table = lb.Maglev([a, b], table_size=13)._table
    assert table[xxhash64(b"10.0.0.1:80") % 13] is b
    assert lb.Maglev([b, a], table_size=13)._table == table
