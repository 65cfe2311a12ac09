"""Load balancers: sans-IO pickers over a fixed list of hosts.

Theory of operation: a balancer is built over a snapshot of the cluster's hosts (one priority;
``PriorityBalancer`` at the end spreads load over several, and over localities) and
keeps only the healthy ones; when membership or health changes the cluster builds a new one
(cheap, and it keeps ``choose`` free of filtering). Envoy's panic mode applies at build time:
when fewer than ``panic_threshold`` percent of the hosts are healthy, all hosts are used and
``panic`` is set so the cluster can count ``lb_healthy_panic`` per pick.

- ROUND_ROBIN: equal weights rotate from a random start offset; differing weights use smooth
  weighted round robin (nginx's), which spreads a host's turns evenly over a cycle as Envoy's
  EDF scheduler does.
- LEAST_REQUEST: equal weights pick ``choice_count`` hosts at random and take the one with the
  fewest active requests; differing weights pick at random with effective weight
  ``weight / (rq_active + 1) ** active_request_bias`` (Envoy's weighted variant).
- RANDOM: uniform over the healthy hosts (Envoy ignores weights here too).
- RING_HASH and MAGLEV: consistent hashing on ``context.lb_hash()`` (see ``hashing``); a
  request without a hash gets a random host. Both place hosts exactly as Envoy does (the same
  host key, hash functions, point counts and fill order), so with the same hosts a hash reaches
  the host Envoy would pick; ``tests/differential/test_hash_lb.py`` checks it against Envoy.
  Over several priorities the hash picks the priority too, and with locality weights one ring
  or table spans all the localities, as in Envoy (a key never changes level or locality).

``choose(context)`` returns ``None`` when there is no host.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Any

from trioproxy.upstream.hashing import murmur2_64, xxhash64
from trioproxy.upstream.host import Host

DEFAULT_PANIC_THRESHOLD = 50.0


def _usable(hosts: Sequence[Host], panic_threshold: float) -> tuple[list[Host], bool]:
    healthy = [h for h in hosts if h.usable]
    if hosts and len(healthy) * 100.0 < panic_threshold * len(hosts):
        return list(hosts), True
    return healthy, False


class LoadBalancer:
    """Base: holds the usable hosts; subclasses implement ``choose``."""

    __slots__ = ("_rng", "hosts", "panic")

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        self.hosts, self.panic = _usable(hosts, panic_threshold)
        self._rng = rng or random.Random()

    def choose(self, context: Any = None) -> Host | None:
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    __slots__ = ("_current", "_next", "_total", "_weighted")

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(hosts, panic_threshold=panic_threshold, rng=rng)
        n = len(self.hosts)
        self._next = self._rng.randrange(n) if n else 0
        self._weighted = len({h.weight for h in self.hosts}) > 1
        self._current = [0] * n
        self._total = sum(h.weight for h in self.hosts)
        if self._weighted:
            # A random start point in the smooth cycle, so instances do not move in lockstep.
            for _ in range(self._rng.randrange(self._total)):
                self._smooth()

    def _smooth(self) -> Host:
        current = self._current
        best = 0
        best_value = -1
        for i, h in enumerate(self.hosts):
            v = current[i] + h.weight
            current[i] = v
            if v > best_value:
                best, best_value = i, v
        current[best] -= self._total
        return self.hosts[best]

    def choose(self, context: Any = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if self._weighted:
            return self._smooth()
        i = self._next
        self._next = i + 1 if i + 1 < len(hosts) else 0
        return hosts[i]


class LeastRequest(LoadBalancer):
    __slots__ = ("_weighted", "bias", "choice_count")

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        choice_count: int = 2,
        active_request_bias: float = 1.0,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(hosts, panic_threshold=panic_threshold, rng=rng)
        self.choice_count = choice_count
        self.bias = active_request_bias
        self._weighted = len({h.weight for h in self.hosts}) > 1

    def choose(self, context: Any = None) -> Host | None:
        hosts = self.hosts
        n = len(hosts)
        if n == 0:
            return None
        if n == 1:
            return hosts[0]
        rng = self._rng
        if self._weighted:
            bias = self.bias
            weights = [h.weight / (h.rq_active + 1) ** bias for h in hosts]
            return rng.choices(hosts, weights)[0]
        best = hosts[rng.randrange(n)]
        for _ in range(self.choice_count - 1):
            h = hosts[rng.randrange(n)]
            if h.rq_active < best.rq_active:
                best = h
        return best


class RandomLB(LoadBalancer):
    __slots__ = ()

    def choose(self, context: Any = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        return hosts[self._rng.randrange(len(hosts))]


def build(
    policy: str,
    hosts: Sequence[Host],
    *,
    choice_count: int = 2,
    active_request_bias: float = 1.0,
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    rng: random.Random | None = None,
    minimum_ring_size: int = 1024,
    maximum_ring_size: int = 8 * 1024 * 1024,
    table_size: int = 65537,
    hash_function: str = "XX_HASH",
    use_hostname_for_hashing: bool = False,
    shares: Sequence[float] | None = None,
) -> LoadBalancer:
    """The balancer for a cluster's ``lb_policy`` over ``hosts``. ``shares`` (RING_HASH and
    MAGLEV): each host's share of the ring or table, for hosts the caller already chose."""
    if policy == "RING_HASH":
        return RingHash(
            hosts,
            minimum_ring_size=minimum_ring_size,
            maximum_ring_size=maximum_ring_size,
            hash_function=hash_function,
            use_hostname_for_hashing=use_hostname_for_hashing,
            shares=shares,
            panic_threshold=panic_threshold,
            rng=rng,
        )
    if policy == "MAGLEV":
        return Maglev(
            hosts,
            table_size=table_size,
            use_hostname_for_hashing=use_hostname_for_hashing,
            shares=shares,
            panic_threshold=panic_threshold,
            rng=rng,
        )
    if policy == "ROUND_ROBIN":
        return RoundRobin(hosts, panic_threshold=panic_threshold, rng=rng)
    if policy == "LEAST_REQUEST":
        return LeastRequest(
            hosts,
            choice_count=choice_count,
            active_request_bias=active_request_bias,
            panic_threshold=panic_threshold,
            rng=rng,
        )
    if policy == "RANDOM":
        return RandomLB(hosts, panic_threshold=panic_threshold, rng=rng)
    raise ValueError(f"unknown lb_policy {policy!r}")


def _context_hash(context: Any) -> int | None:
    """The request's hash: ``context.lb_hash()`` (an ``HttpStream`` with a route hash policy,
    a UDP session with ``hash_policies``), or ``None``."""
    get = getattr(context, "lb_hash", None)
    return get() if get is not None else None


def hash_key(host: Host, use_hostname: bool) -> bytes:
    """What places ``host`` on a ring or in a Maglev table, as Envoy's ``hashKey``: its
    hostname with ``use_hostname_for_hashing``, else its address as Envoy writes it
    (``127.0.0.1:80``, ``[::1]:80``)."""
    return (host.hostname if use_hostname else host.address_str).encode()


def _normalized_weights(hosts: Sequence[Host]) -> list[float]:
    """Each host's share of the total weight, as the doubles Envoy computes."""
    total = sum(h.weight for h in hosts)
    return [h.weight / total for h in hosts]


class RingHash(LoadBalancer):
    """Envoy's ketama-style ring. The ring has ``minimum_ring_size`` points or more, enough for
    the lightest host to get a whole number of them, at most ``maximum_ring_size``; walking
    the hosts in order, each adds points (hashes of ``"<key>_0"``, ``"<key>_1"``, ...) while
    the running count is below the running target ``scale * share`` (so a host whose share
    is not whole rounds up, and the next one makes up for it). A request goes to the first
    point at or after its hash, wrapping to the first. No hash: a random point."""

    __slots__ = ("_points", "_ring")

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        minimum_ring_size: int = 1024,
        maximum_ring_size: int = 8 * 1024 * 1024,
        hash_function: str = "XX_HASH",
        use_hostname_for_hashing: bool = False,
        shares: Sequence[float] | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(hosts, panic_threshold=panic_threshold, rng=rng)
        if shares is not None:  # the caller chose the hosts (and decided panic)
            self.hosts = list(hosts)
        murmur = hash_function == "MURMUR_HASH_2"
        ring: list[tuple[int, Host]] = []
        usable = self.hosts
        if usable:
            weights = _normalized_weights(usable) if shares is None else list(shares)
            smallest = min(weights)
            scale = min(
                math.ceil(smallest * minimum_ring_size) / smallest, float(maximum_ring_size)
            )
            target = 0.0
            made = 0
            for h, w in zip(usable, weights, strict=True):
                prefix = hash_key(h, use_hostname_for_hashing) + b"_"
                target += scale * w
                i = 0
                while made < target:
                    point = prefix + str(i).encode()
                    ring.append((murmur2_64(point) if murmur else xxhash64(point), h))
                    i += 1
                    made += 1
        ring.sort(key=lambda p: p[0])
        self._points = [p[0] for p in ring]
        self._ring = [p[1] for p in ring]

    def choose(self, context: Any = None) -> Host | None:
        ring = self._ring
        if not ring:
            return None
        h = _context_hash(context)
        if h is None:
            h = self._rng.getrandbits(64)
        i = bisect.bisect_left(self._points, h)
        return ring[i if i < len(ring) else 0]


class Maglev(LoadBalancer):
    """Maglev consistent hashing with weights (Envoy's table builder): a prime-sized table
    filled by each host's permutation in turn, heavier hosts taking more turns. A host's
    permutation starts at ``xxHash64(key) % size`` and steps by
    ``xxHash64(key, seed=1) % (size - 1) + 1``; hosts take their turns in the order of their
    keys, so the table does not depend on the order the hosts were listed in."""

    __slots__ = ("_table",)

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        table_size: int = 65537,
        use_hostname_for_hashing: bool = False,
        shares: Sequence[float] | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(hosts, panic_threshold=panic_threshold, rng=rng)
        if shares is not None:  # the caller chose the hosts (and decided panic)
            self.hosts = list(hosts)
        table: list[Host | None] = [None] * table_size
        if self.hosts:
            weights = _normalized_weights(self.hosts) if shares is None else list(shares)
            top = max(weights)
            keyed = sorted(
                (
                    (hash_key(h, use_hostname_for_hashing), h, w)
                    for h, w in zip(self.hosts, weights, strict=True)
                ),
                key=lambda e: e[0],
            )
            usable = [e[1] for e in keyed]
            shares = [e[2] for e in keyed]
            offsets = [xxhash64(e[0]) % table_size for e in keyed]
            skips = [xxhash64(e[0], 1) % (table_size - 1) + 1 for e in keyed]
            nexts = [0] * len(keyed)
            targets = [0.0] * len(keyed)
            filled = 0
            iteration = 1
            while filled < table_size:
                for i, h in enumerate(usable):
                    if filled >= table_size:
                        break
                    if iteration * shares[i] < targets[i]:
                        continue
                    targets[i] += top
                    while True:
                        c = (offsets[i] + skips[i] * nexts[i]) % table_size
                        nexts[i] += 1
                        if table[c] is None:
                            break
                    table[c] = h
                    filled += 1
                iteration += 1
        self._table = table

    def choose(self, context: Any = None) -> Host | None:
        if not self.hosts:
            return None
        h = _context_hash(context)
        if h is None:
            h = self._rng.getrandbits(64)
        return self._table[h % len(self._table)]


# -- priorities and localities -------------------------------------------------------------


def _availability(hosts: Sequence[Host], overprovisioning: int) -> int:
    """A level's health in percent, times the overprovisioning factor, capped at 100 (Envoy's
    integer arithmetic)."""
    if not hosts:
        return 0
    usable = sum(1 for h in hosts if h.usable)
    return min(100, overprovisioning * usable // len(hosts))


HASHING_POLICIES = frozenset({"RING_HASH", "MAGLEV"})


def _hashing_over_localities(
    policy: str, hosts: Sequence[Host], *, panic_threshold: float, **kw: Any
) -> LoadBalancer:
    """RING_HASH or MAGLEV with ``locality_weighted_lb_config``, as Envoy builds it: one ring
    or table over the usable hosts of every locality, localities in name order (region, zone,
    sub-zone), each host's share its locality's share of all the locality weights (localities
    without a usable host still count in the total) times its share of its locality's weight.
    Picking a locality first would send one key to different localities."""
    usable, panic = _usable(hosts, panic_threshold)
    chosen = {id(h) for h in usable}
    localities: dict[Any, tuple[int, list[Host]]] = {}
    for h in hosts:
        weight, members = localities.setdefault(h.locality, (h.locality_weight, []))
        if id(h) in chosen:
            members.append(h)
    total = sum(weight for weight, _ in localities.values())
    ordered: list[Host] = []
    shares: list[float] = []
    for loc in sorted(localities, key=lambda lc: (lc.region, lc.zone, lc.sub_zone)):
        weight, members = localities[loc]
        if weight == 0 or not members:
            continue
        locality_share = weight / total
        member_total = sum(h.weight for h in members)
        for h in members:
            ordered.append(h)
            shares.append(h.weight * locality_share / member_total)
    balancer = build(policy, ordered, shares=shares, **kw)
    balancer.panic = panic
    return balancer


class _Localities(LoadBalancer):
    """``locality_weighted_lb_config`` within one priority: a locality by its weight times its
    availability (smooth weighted round robin over localities), then a host of it by the
    cluster's policy."""

    __slots__ = ("_current", "_levels", "_weights")

    def __init__(
        self,
        policy: str,
        hosts: Sequence[Host],
        *,
        overprovisioning: int,
        panic_threshold: float,
        rng: random.Random | None,
        **kw: Any,
    ) -> None:
        super().__init__(hosts, panic_threshold=panic_threshold, rng=rng)
        groups: dict[Any, list[Host]] = {}
        for h in hosts:
            groups.setdefault(h.locality, []).append(h)
        self._levels: list[LoadBalancer] = []
        self._weights: list[int] = []
        for members in groups.values():
            weight = members[0].locality_weight * _availability(members, overprovisioning)
            if weight <= 0 and not self.panic:
                continue  # no weight, or no available host: no traffic
            # the locality level already decided panic for the whole priority
            inner_threshold = 100.1 if self.panic else 0.0
            inner = build(policy, members, panic_threshold=inner_threshold, rng=rng, **kw)
            self._levels.append(inner)
            self._weights.append(max(weight, 1) if self.panic else weight)
        self._current = [0] * len(self._levels)

    def choose(self, context: Any = None) -> Host | None:
        if not self._levels:
            return None
        total = sum(self._weights)
        best = 0
        for i, w in enumerate(self._weights):
            self._current[i] += w
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= total
        return self._levels[best].choose(context)


class PriorityBalancer(LoadBalancer):
    """Several priorities (Envoy's priority load): each level's availability is its healthy
    share times the overprovisioning factor (140 %) capped at 100; load goes to the first
    levels as far as their availability reaches, normalised when the total is under 100.
    While the total is 100 there is no panic; under it, a level whose healthy share is below
    the panic threshold balances over all its hosts; with no availability at all, priority 0
    takes everything in panic. ``panic`` reflects the level of the last pick. RING_HASH and
    MAGLEV pick the level by the request's hash as Envoy does (``hash % 100 + 1`` against the
    cumulative loads), so a key stays on its level."""

    __slots__ = ("_cumulative", "_hashing", "_levels")

    def __init__(
        self,
        policy: str,
        hosts: Sequence[Host],
        *,
        overprovisioning: int = 140,
        locality_weighted: bool = False,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
        **kw: Any,
    ) -> None:
        self._rng = rng or random.Random()
        self.hosts = list(hosts)
        self.panic = False
        self._hashing = policy in HASHING_POLICIES
        priorities = sorted({h.priority for h in hosts})
        levels = [[h for h in hosts if h.priority == p] for p in priorities]
        health = [_availability(lv, overprovisioning) for lv in levels]
        total = min(100, sum(health))
        loads = [0] * len(levels)
        if total == 0:
            if loads:
                loads[0] = 100
        else:
            remaining = 100
            for i, h in enumerate(health):
                loads[i] = min(remaining, h * 100 // total)
                remaining -= loads[i]
            first = next(i for i, h in enumerate(health) if h > 0)
            loads[first] += remaining
        # panic thresholds only count while the levels together cannot take all the load
        threshold = panic_threshold if total < 100 else 0.0
        if total == 0:
            threshold = 100.1
        self._levels: list[LoadBalancer] = []
        self._cumulative: list[float] = []
        acc = 0
        for level, load in zip(levels, loads, strict=True):
            if load <= 0:
                continue
            if locality_weighted and self._hashing:
                inner: LoadBalancer = _hashing_over_localities(
                    policy, level, panic_threshold=threshold, rng=self._rng, **kw
                )
            elif locality_weighted:
                inner = _Localities(
                    policy,
                    level,
                    overprovisioning=overprovisioning,
                    panic_threshold=threshold,
                    rng=self._rng,
                    **kw,
                )
            else:
                inner = build(policy, level, panic_threshold=threshold, rng=self._rng, **kw)
            acc += load
            self._levels.append(inner)
            self._cumulative.append(acc)

    def choose(self, context: Any = None) -> Host | None:
        levels = self._levels
        if not levels:
            return None
        h = _context_hash(context) if self._hashing and len(levels) > 1 else None
        if len(levels) == 1:
            inner = levels[0]
        elif h is not None:
            inner = levels[bisect.bisect_left(self._cumulative, h % 100 + 1)]
        else:
            point = self._rng.random() * self._cumulative[-1]
            inner = levels[bisect.bisect_right(self._cumulative, point)]
        self.panic = inner.panic
        return inner.choose(context)


def build_for_cluster(
    policy: str,
    hosts: Sequence[Host],
    *,
    locality_weighted: bool = False,
    overprovisioning: int = 140,
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    **kw: Any,
) -> LoadBalancer:
    """A cluster's balancer: the plain one for a single priority without locality weights
    (the common case, no extra step per pick), else a ``PriorityBalancer``."""
    if not locality_weighted and len({h.priority for h in hosts}) <= 1:
        return build(policy, hosts, panic_threshold=panic_threshold, **kw)
    return PriorityBalancer(
        policy,
        hosts,
        overprovisioning=overprovisioning,
        locality_weighted=locality_weighted,
        panic_threshold=panic_threshold,
        **kw,
    )
