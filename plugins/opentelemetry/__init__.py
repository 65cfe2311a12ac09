"""``envoy.tracers.opentelemetry``: W3C trace context and OTLP export over HTTP.

Incoming ``traceparent`` (and ``tracestate``) is joined; every span gets a new span id whose
parent is the incoming one, SERVER on INBOUND listeners and CLIENT on OUTBOUND ones, and the
upstream request carries ``traceparent`` with this span's id (``tracestate`` passed on).
Spans carry Envoy's tags as string attributes and ``service.name`` (``service_name``, default
``unknown_service:envoy``) as their resource; they are exported in batches (5 spans or 5 s)
as OTLP protobuf to ``http_service`` (``POST`` to its ``http_uri`` on its cluster, with
``request_headers_to_add``). Not built: ``grpc_service`` export, resource detectors and
samplers, which are refused by name. Stats: ``tracing.opentelemetry.*``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from trioproxy.errors import ConfigError
from trioproxy.hookspecs import hookimpl
from trioproxy.http.headers import Headers
from trioproxy.registry import TracerFactory
from trioproxy.stats import Counter, StatBlock
from trioproxy.tracing import SpanStart, TracerContext
from trioproxy.tracing.reporter import BatchReporter, ReportStats, ReportTarget
from trioproxy.upstream.config import duration

from . import otlp

NAME = "envoy.tracers.opentelemetry"
TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
_getrandbits = random.getrandbits


class OtelStats(StatBlock):
    """``tracing.opentelemetry.*``."""

    spans_sent: Counter
    timer_flushed: Counter
    http_reports_sent: Counter
    http_reports_dropped: Counter
    http_reports_failed: Counter


@attrs.frozen
class OtelConfig:
    cluster: str
    path: str
    authority: str
    timeout: float
    headers: tuple[tuple[str, str], ...]
    service_name: str

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> OtelConfig:
        for key in ("grpc_service", "resource_detectors", "sampler"):
            if d.get(key):
                raise ConfigError(f"{key} is not supported yet (http_service is)", path=key)
        hs = d.get("http_service")
        if not hs:
            raise ConfigError("http_service is required", path="http_service")
        uri = hs.get("http_uri") or {}
        cluster = str(uri.get("cluster", ""))
        if not cluster:
            raise ConfigError("a cluster is required", path="http_service.http_uri.cluster")
        parts = urlsplit(str(uri.get("uri", "")))
        timeout = (
            duration(uri["timeout"], "http_service.http_uri.timeout") if "timeout" in uri else 5.0
        )
        headers = []
        for i, h in enumerate(hs.get("request_headers_to_add", ())):
            hv = h.get("header") or {}
            if not hv.get("key"):
                raise ConfigError(
                    "a header key is required",
                    path=f"http_service.request_headers_to_add[{i}].header.key",
                )
            headers.append((str(hv["key"]).lower(), str(hv.get("value", ""))))
        return cls(
            cluster=cluster,
            path=parts.path or "/v1/traces",
            authority=parts.netloc or cluster,
            timeout=timeout or 5.0,
            headers=tuple(headers),
            service_name=str(d.get("service_name") or "unknown_service:envoy"),
        )


def _parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) from a version-00 ``traceparent``; else None."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    version, trace, parent, flags = parts[:4]
    if (version == "00" and len(parts) != 4) or len(trace) != 32 or len(parent) != 16:
        return None
    try:
        t, p, f = int(trace, 16), int(parent, 16), int(flags, 16)
    except ValueError:
        return None
    if t == 0 or p == 0:
        return None
    return t, p, bool(f & 1)


class OtelSpan:
    __slots__ = (
        "_tracer",
        "kind",
        "name",
        "parent",
        "sampled",
        "span_id",
        "start",
        "state",
        "tags",
        "trace_id",
    )

    def __init__(self, tracer: OtelTracer, start: SpanStart) -> None:
        self._tracer = tracer
        self.name = start.operation
        self.kind = otlp.SPAN_KIND_SERVER if start.ingress else otlp.SPAN_KIND_CLIENT
        self.start = start.start_time
        self.tags: dict[str, str] = {}
        self.span_id = _getrandbits(64) or 1
        self.state = start.headers.get("tracestate") or ""
        incoming = start.headers.get("traceparent")
        parsed = _parse_traceparent(incoming) if incoming is not None else None
        if parsed is None:
            self.trace_id = _getrandbits(128) or 1
            self.parent = 0
            self.sampled = start.sampled
        else:
            self.trace_id, self.parent, self.sampled = parsed

    def set_operation(self, name: str) -> None:
        self.name = name

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def inject(self, headers: Headers) -> None:
        flags = "01" if self.sampled else "00"
        headers.set("traceparent", f"00-{self.trace_id:032x}-{self.span_id:016x}-{flags}")
        if self.state:
            headers.set("tracestate", self.state)

    def finish(self, end_time: float) -> None:
        if not self.sampled:
            return
        self._tracer.reporter.add(
            otlp.span(
                trace_id=self.trace_id.to_bytes(16, "big"),
                span_id=self.span_id.to_bytes(8, "big"),
                parent_span_id=self.parent.to_bytes(8, "big") if self.parent else b"",
                trace_state=self.state,
                name=self.name,
                kind=self.kind,
                start_ns=int(self.start * 1e9),
                end_ns=int(end_time * 1e9),
                attrs=self.tags,
                error=self.tags.get("error") == "true",
            )
        )


class OtelTracer:
    def __init__(self, config: OtelConfig, ctx: TracerContext) -> None:
        stats = OtelStats(ctx.store.scope("tracing.opentelemetry."))
        resource = {"service.name": config.service_name}
        self.reporter = BatchReporter(
            ctx.cluster_manager,
            ReportTarget(
                cluster=config.cluster,
                path=config.path,
                authority=config.authority,
                content_type="application/x-protobuf",
                headers=config.headers,
                timeout=config.timeout,
            ),
            ReportStats(
                spans_sent=stats.spans_sent,
                timer_flushed=stats.timer_flushed,
                sent=stats.http_reports_sent,
                dropped=stats.http_reports_dropped,
                failed=stats.http_reports_failed,
            ),
            lambda spans: otlp.export_request(resource, spans),
        )

    def start_span(self, start: SpanStart) -> OtelSpan:
        return OtelSpan(self, start)


def _create(config: OtelConfig, ctx: TracerContext) -> OtelTracer:
    """One tracer (one reporter) per config for each server; a tracer built without a server
    (``ctx.background`` None) reports nothing and is not shared."""
    background = ctx.background
    key = (NAME, config)
    tracer: OtelTracer | None = background.shared.get(key) if background else None
    if tracer is None:
        tracer = OtelTracer(config, ctx)
        if background is not None:
            background.shared[key] = tracer
            background.start_soon(tracer.reporter.run)
    return tracer


@hookimpl
def trioproxy_tracers() -> list[TracerFactory]:
    return [TracerFactory(NAME, (TYPE_URL,), config_type=OtelConfig.from_proto, create=_create)]
