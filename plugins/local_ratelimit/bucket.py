"""A token bucket that refills continuously (Envoy's timer-less bucket, the default since
1.33): ``tokens_per_fill`` every ``fill_interval``, at most ``max_tokens``, full at start."""

from __future__ import annotations

import math
from collections.abc import Callable

import trio


class TokenBucket:
    __slots__ = (
        "max_tokens",
        "rate",
        "fill_interval",
        "tokens_per_fill",
        "_tokens",
        "_at",
        "_clock",
    )

    def __init__(
        self,
        max_tokens: int,
        tokens_per_fill: int,
        fill_interval: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval
        self.rate = tokens_per_fill / fill_interval  # tokens per second
        self._clock = clock
        self._tokens = float(max_tokens)
        self._at: float | None = None  # (built with the config, outside trio: timed on first use)

    def _refill(self) -> None:
        now = self._clock()
        if self._at is None:
            self._at = now
            return
        self._tokens = min(self.max_tokens, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def consume(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def remaining(self) -> int:
        self._refill()
        return int(self._tokens)

    def reset_seconds(self) -> int:
        """Seconds until the next token (``x-ratelimit-reset``, as Envoy computes it)."""
        self._refill()
        return 0 if self._tokens >= 1.0 else math.ceil((1.0 - self._tokens) / self.rate)
