"""Distributed tracing: the tracer API providers implement, and the connection manager's side.

A tracer provider (``envoy.tracers.zipkin``, ``envoy.tracers.opentelemetry``, a plugin's own)
registers a ``TracerFactory`` through the ``trioproxy_tracers`` hook; the factory builds one
``Tracer`` per connection manager that names it in ``tracing.provider``. Per traced request
the connection manager (``trioproxy.tracing.http``) decides whether to sample, names the span
and calls ``Tracer.start_span``; the router calls ``Span.inject`` on the upstream request's
headers; when the stream ends the connection manager sets Envoy's standard tags and calls
``Span.finish``. Providers report finished spans from their own tasks (never blocking a
request) and count what they send in their own stats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from trioproxy.http.headers import Headers


@attrs.define  # not frozen: built per request, and frozen attrs classes build slower
class SpanStart:
    """What a tracer gets to start a span for a downstream request."""

    #: The request's headers: incoming context to extract (B3, W3C …).
    headers: Headers
    operation: str
    #: ``True`` for INBOUND listeners (a SERVER span), ``False`` for OUTBOUND (CLIENT).
    ingress: bool
    #: The connection manager's sampling decision; an incoming context may override it.
    sampled: bool
    start_time: float  # wall clock, seconds since the epoch


class Span(Protocol):
    """One span. Tags are strings; ``finish`` is called exactly once."""

    def set_operation(self, name: str) -> None: ...
    def set_tag(self, key: str, value: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None:
        """Set several tags at once (the connection manager's standard tags)."""

    def inject(self, headers: Headers) -> None:
        """Write this span's context into an upstream request's headers."""

    def finish(self, end_time: float) -> None:
        """End the span at ``end_time`` (wall clock) and hand it to the reporter."""


class Tracer(Protocol):
    def start_span(self, start: SpanStart) -> Span: ...


@attrs.frozen
class TracerContext:
    """What a tracer factory may use: the process's identity, the cluster manager for
    collectors, a nursery for reporter tasks and a stats scope."""

    service_cluster: str
    node_id: str
    local_address: str
    cluster_manager: Any
    #: ``trioproxy.background.Background``: where reporters run (None in ``--mode validate``).
    background: Any
    store: Any
    node: Mapping[str, Any] = attrs.field(factory=dict)
