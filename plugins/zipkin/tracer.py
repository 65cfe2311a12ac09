"""Zipkin spans and their reporter.

Span ids follow Envoy's Zipkin tracer: a root span's id is its (64-bit) trace id; a CLIENT
span (OUTBOUND) is always a child of the incoming span; a SERVER span (INBOUND) shares the
incoming span's id when ``shared_span_context`` is on, else is its child. A span is reported
only when sampled; an unsampled one still propagates its context (``x-b3-sampled: 0``).

Finished spans go to a ``trioproxy.tracing.reporter.BatchReporter`` as Zipkin v2 JSON and
are POSTed as one list to the collector cluster (5 spans or 5 s, Envoy's
``tracing.zipkin.min_flush_spans`` and ``flush_interval_ms``). A report answered 202 counts
in ``reports_sent``, another status in ``reports_dropped``, a failed connection in
``reports_failed``.
"""

from __future__ import annotations

import json
import logging
import random

from trioproxy.http.headers import Headers
from trioproxy.stats import Counter, StatBlock
from trioproxy.tracing import SpanStart, TracerContext
from trioproxy.tracing.reporter import BatchReporter, ReportStats, ReportTarget

from .b3 import NO_B3, B3Error, extract
from .config import ZipkinConfig

log = logging.getLogger(__name__)

_getrandbits = random.getrandbits
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ZipkinStats(StatBlock):
    """``tracing.zipkin.*``."""

    spans_sent: Counter
    timer_flushed: Counter
    reports_sent: Counter
    reports_dropped: Counter
    reports_failed: Counter
    reports_skipped_no_cluster: Counter


def _id() -> int:
    n = 0
    while n == 0:
        n = _getrandbits(64)
    return n


class NullSpan:
    """For a request whose incoming context is malformed: nothing is traced or propagated."""

    def set_operation(self, name: str) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def inject(self, headers: Headers) -> None:
        pass

    def finish(self, end_time: float) -> None:
        pass


class ZipkinSpan:
    __slots__ = (
        "_reporter",
        "id",
        "kind",
        "name",
        "parent_id",
        "sampled",
        "shared",
        "single_header",
        "start",
        "fresh",
        "hex_ids",
        "tags",
        "trace_id",
        "trace_id_high",
        "trace_128",
    )

    def __init__(self, reporter: Reporter, start: SpanStart, sampled: bool) -> None:
        self._reporter = reporter
        self.name = start.operation
        self.kind = "SERVER" if start.ingress else "CLIENT"
        self.start = start.start_time
        self.sampled = sampled
        self.tags: dict[str, str] = {}
        self.shared = False
        self.single_header = False
        self.id = 0
        self.trace_id = 0
        self.parent_id: int | None = None
        self.trace_id_high = 0
        self.trace_128 = False
        #: The request carried no B3 header: ours can be appended without looking.
        self.fresh = False
        self.hex_ids: tuple[str, str] | None = None

    def set_operation(self, name: str) -> None:
        self.name = name

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def _trace_hex(self) -> str:
        if self.trace_128:
            return f"{self.trace_id_high:016x}{self.trace_id:016x}"
        return f"{self.trace_id:016x}"

    def _ids(self) -> tuple[str, str]:
        """(trace id, span id) in hex, computed once (inject and encode both need them)."""
        ids = self.hex_ids
        if ids is None:
            ids = self.hex_ids = (self._trace_hex(), f"{self.id:016x}")
        return ids

    def inject(self, headers: Headers) -> None:
        sampled = "1" if self.sampled else "0"
        if self.fresh:
            trace, span_id = self._ids()
            headers.items().extend(
                (("x-b3-traceid", trace), ("x-b3-spanid", span_id), ("x-b3-sampled", sampled))
            )
            return
        if self.single_header:
            value = f"{self._trace_hex()}-{self.id:016x}-{sampled}"
            if self.parent_id is not None:
                value += f"-{self.parent_id:016x}"
            headers.set("b3", value)
            return
        headers.set("x-b3-traceid", self._trace_hex())
        headers.set("x-b3-spanid", f"{self.id:016x}")
        if self.parent_id is not None:
            headers.set("x-b3-parentspanid", f"{self.parent_id:016x}")
        else:
            headers.remove("x-b3-parentspanid")
        headers.set("x-b3-sampled", sampled)

    def finish(self, end_time: float) -> None:
        if self.sampled:
            self._reporter.add(self, end_time)

    def encode(self, end_time: float, endpoint: str) -> str:
        """This span as Zipkin v2 JSON (``endpoint``: the encoded ``localEndpoint``)."""
        start_us = int(self.start * 1_000_000)
        end_us = int(end_time * 1_000_000)
        parent = f',"parentId":"{self.parent_id:016x}"' if self.parent_id is not None else ""
        shared = ',"shared":true' if self.shared else ""
        trace, span_id = self._ids()
        return (
            f'{{"traceId":"{trace}","id":"{span_id}"{parent},'
            f'"name":{_dumps(self.name)},"kind":"{self.kind}","timestamp":{start_us},'
            f'"duration":{max(end_us - start_us, 0)},"localEndpoint":{endpoint},'
            f'"annotations":[{{"timestamp":{end_us},'
            f'"value":"{"ss" if self.kind == "SERVER" else "cr"}"}}],'
            f'"tags":{_dumps(self.tags)}{shared}}}'
        )


class Reporter:
    """Encodes finished spans as Zipkin v2 JSON for a ``BatchReporter``."""

    def __init__(self, config: ZipkinConfig, ctx: TracerContext, stats: ZipkinStats) -> None:
        self.stats = stats
        self._endpoint = _dumps(
            {"serviceName": ctx.service_cluster, "ipv4": ctx.local_address, "port": 0}
        )
        self.batch = BatchReporter(
            ctx.cluster_manager,
            ReportTarget(
                cluster=config.collector_cluster,
                path=config.collector_endpoint,
                authority=config.collector_hostname or config.collector_cluster,
                content_type="application/json",
            ),
            ReportStats(
                spans_sent=stats.spans_sent,
                timer_flushed=stats.timer_flushed,
                sent=stats.reports_sent,
                dropped=stats.reports_dropped,
                failed=stats.reports_failed,
                skipped_no_cluster=stats.reports_skipped_no_cluster,
            ),
            lambda spans: b"[" + b",".join(spans) + b"]",
            accepted=lambda status: status == 202,  # Envoy counts other answers as dropped
        )

    def add(self, span: ZipkinSpan, end_time: float) -> None:
        self.batch.add(span.encode(end_time, self._endpoint).encode())

    async def run(self) -> None:
        await self.batch.run()


class ZipkinTracer:
    def __init__(self, config: ZipkinConfig, ctx: TracerContext, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter

    def start_span(self, start: SpanStart) -> ZipkinSpan | NullSpan:
        try:
            found = extract(start.headers)
        except B3Error as exc:
            log.debug("not tracing a request with a malformed B3 header: %s", exc)
            return NullSpan()
        incoming, sampled_hdr, single = found
        sampled = start.sampled if sampled_hdr is None else sampled_hdr
        span = ZipkinSpan(self.reporter, start, sampled)
        span.single_header = single
        span.fresh = found is NO_B3
        if incoming is None:
            root = _id()
            span.id = span.trace_id = root
            if self.config.trace_id_128bit:
                span.trace_id_high = _id()
                span.trace_128 = True
            return span
        span.trace_id = incoming.trace_id
        span.trace_id_high = incoming.trace_id_high
        span.trace_128 = incoming.is_128
        if start.ingress and self.config.shared_span_context:
            span.id = incoming.span_id
            span.parent_id = incoming.parent_id
            span.shared = True
        else:
            span.id = _id()
            span.parent_id = incoming.span_id
        return span
