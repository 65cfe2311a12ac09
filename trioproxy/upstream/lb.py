"""Load balancers: sans-IO pickers over a fixed list of hosts.

Theory of operation: a balancer is built over a snapshot of the cluster's hosts (priority 0) and
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

``choose(context)`` returns ``None`` when there is no host; ``context`` is for hash-based
balancers to come.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from trioproxy.upstream.host import Host

DEFAULT_PANIC_THRESHOLD = 50.0


def _usable(hosts: Sequence[Host], panic_threshold: float) -> tuple[list[Host], bool]:
    healthy = [h for h in hosts if h.healthy]
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
) -> LoadBalancer:
    """The balancer for a cluster's ``lb_policy`` over ``hosts``."""
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
