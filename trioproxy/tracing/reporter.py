"""Batched span reports to a collector cluster, off the request path.

A tracer encodes each finished span (``add``) and a ``BatchReporter`` task sends them: when
``min_flush`` spans have gathered — after waiting ``coalesce`` seconds for more, so a busy
proxy sends one report per 50 ms rather than one per few requests — or every
``flush_interval`` seconds (Envoy: 5 spans, 5 s). A report is one POST through the cluster
manager's pools (``trioproxy.upstream.client``); a request never waits for it. Spans beyond
``max_pending`` are dropped instead of queued without bound while the collector lags. The
last spans are sent when the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import attrs
import trio

from trioproxy.errors import UpstreamError
from trioproxy.stats import Counter
from trioproxy.upstream.client import request

log = logging.getLogger(__name__)


@attrs.frozen
class ReportTarget:
    cluster: str
    path: str
    authority: str
    content_type: str
    headers: Sequence[tuple[str, str]] = ()
    timeout: float = 5.0


@attrs.frozen
class ReportStats:
    """The provider's counters for what happens to reports (``None``: not counted)."""

    spans_sent: Counter
    timer_flushed: Counter
    sent: Counter | None = None
    dropped: Counter | None = None
    failed: Counter | None = None
    skipped_no_cluster: Counter | None = None


def _inc(counter: Counter | None) -> None:
    if counter is not None:
        counter.value += 1


class BatchReporter:
    def __init__(
        self,
        cluster_manager: object,
        target: ReportTarget,
        stats: ReportStats,
        encode: Callable[[list[bytes]], bytes],
        *,
        accepted: Callable[[int], bool] = lambda status: 200 <= status < 300,
        min_flush: int = 5,
        flush_interval: float = 5.0,
        coalesce: float = 0.05,
        max_pending: int = 10_000,
    ) -> None:
        self.cluster_manager = cluster_manager
        self.target = target
        self.stats = stats
        self.encode = encode
        self.accepted = accepted
        self.min_flush = min_flush
        self.flush_interval = flush_interval
        self.coalesce = coalesce
        self.max_pending = max_pending
        self._pending: list[bytes] = []
        self._wake = trio.Event()

    def add(self, encoded: bytes) -> None:
        pending = self._pending
        if len(pending) >= self.max_pending:
            _inc(self.stats.dropped)
            return
        pending.append(encoded)
        if len(pending) >= self.min_flush:
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(self.flush_interval) as timer:
                    await self._wake.wait()
                if timer.cancelled_caught:
                    self.stats.timer_flushed.value += 1
                else:
                    await trio.sleep(self.coalesce)
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.move_on_after(1.0, shield=True):
                await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        spans, self._pending = self._pending, []
        t = self.target
        cm = self.cluster_manager
        if cm.get(t.cluster) is None:  # type: ignore[attr-defined]
            _inc(self.stats.skipped_no_cluster)
            return
        self.stats.spans_sent.value += len(spans)
        try:
            resp = await request(
                cm,  # type: ignore[arg-type]
                t.cluster,
                "POST",
                t.path,
                authority=t.authority,
                headers=[("content-type", t.content_type), *t.headers],
                body=self.encode(spans),
                deadline_s=t.timeout,
            )
        except UpstreamError as exc:
            _inc(self.stats.failed)
            log.debug("span report to %s failed: %s", t.cluster, exc)
            return
        _inc(self.stats.sent if self.accepted(resp.status) else self.stats.dropped)
