"""The connection manager's side of tracing: sampling, span names, Envoy's standard tags.

Sampling follows Envoy. The decision is recorded in the ``x-request-id`` UUID itself (its
14th character: ``9`` sampled, ``a`` forced by ``x-envoy-force-trace``, ``b`` forced by the
client's ``x-client-trace-id``, ``4`` not traced), so every proxy a request passes through
agrees: a request id that already carries a decision keeps it. Otherwise the first of
``x-client-trace-id`` (under ``client_sampling``), ``x-envoy-force-trace``, and
``random_sampling`` of the request id's first 32 bits modulo 10 000 decides, and
``overall_sampling`` can veto. A request without a request id is not traced. Each decision
counts in ``http.<prefix>.tracing.*``.

The span is named after the route's ``decorator.operation``, else the request's host; an
INBOUND connection manager takes an ``x-envoy-decorator-operation`` request header when the
route has no decorator (and never forwards it), an OUTBOUND one sends its decorator upstream
in that header. At the end of the stream the span gets Envoy's tags (``component``,
``node_id``, ``guid:x-request-id``, ``http.url``, ``http.method``, ``http.protocol``,
``http.status_code``, ``upstream_cluster``, ``response_flags``, ``request_size``,
``response_size``, ``peer.address``, ``user_agent``, ``downstream_cluster``, ``error``) and
the ``custom_tags`` (literal, request header, environment).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from trioproxy.errors import ConfigError
from trioproxy.stats import Counter, Scope, StatBlock
from trioproxy.tracing import Span, SpanStart, Tracer

if TYPE_CHECKING:
    from trioproxy.http.filter import HttpStream
    from trioproxy.http.headers import Headers

SAMPLED, SERVICE_FORCED, CLIENT_FORCED, NOT_TRACEABLE = "9", "a", "b", "4"
_REASON_STAT = {
    SAMPLED: "random_sampling",
    SERVICE_FORCED: "service_forced",
    CLIENT_FORCED: "client_enabled",
    NOT_TRACEABLE: "not_traceable",
}
DEFAULT_MAX_PATH_TAG_LENGTH = 256


class TracingStats(StatBlock):
    """``http.<prefix>.tracing.*``."""

    random_sampling: Counter
    service_forced: Counter
    client_enabled: Counter
    not_traceable: Counter
    health_check: Counter


def _percent(d: Mapping[str, Any], key: str, path: str) -> int:
    """A ``type.v3.Percent`` (default 100 %) in units of 1/10 000."""
    raw = d.get(key)
    if raw is None:
        return 10_000
    value = raw.get("value", 0.0) if isinstance(raw, Mapping) else raw
    try:
        pct = float(value)
    except (TypeError, ValueError):
        raise ConfigError("invalid percent", path=f"{path}.{key}") from None
    if not 0.0 <= pct <= 100.0:
        raise ConfigError("value must be inside range [0, 100]", path=f"{path}.{key}")
    return round(pct * 100)


def _custom_tag(d: Mapping[str, Any], i: int) -> tuple[str, Callable[[HttpStream], str | None]]:
    tag = str(d.get("tag", ""))
    if not tag:
        raise ConfigError(
            "value length must be at least 1 characters", path=f"custom_tags[{i}].tag"
        )
    if "literal" in d:
        value = str(d["literal"].get("value", ""))
        return tag, lambda s: value
    if "environment" in d:
        env = d["environment"]
        found = os.environ.get(str(env.get("name", "")), env.get("default_value"))
        return tag, lambda s: found
    if "request_header" in d:
        rh = d["request_header"]
        name = str(rh.get("name", "")).lower()
        default = rh.get("default_value")
        return tag, lambda s: s.request_headers.get(name) or default
    raise ConfigError(
        "custom tags of kind literal, environment or request_header are supported",
        path=f"custom_tags[{i}]",
    )


@attrs.frozen
class HttpTracing:
    tracer: Tracer
    ingress: bool
    stats: TracingStats
    node_id: str = ""
    random_sampling: int = 10_000
    client_sampling: int = 10_000
    overall_sampling: int = 10_000
    max_path_tag_length: int = DEFAULT_MAX_PATH_TAG_LENGTH
    custom_tags: tuple[tuple[str, Callable[[HttpStream], str | None]], ...] = ()

    @classmethod
    def from_proto(
        cls,
        d: Mapping[str, Any],
        tracer: Tracer,
        scope: Scope,
        *,
        traffic_direction: str,
        node_id: str,
    ) -> HttpTracing:
        if d.get("spawn_upstream_span"):
            raise ConfigError(
                "spawn_upstream_span is not supported yet", path="spawn_upstream_span"
            )
        length = d.get("max_path_tag_length")
        if isinstance(length, Mapping):
            length = length.get("value")
        return cls(
            tracer=tracer,
            ingress=traffic_direction != "OUTBOUND",
            stats=TracingStats(scope.scope("tracing.")),
            node_id=node_id,
            random_sampling=_percent(d, "random_sampling", "tracing"),
            client_sampling=_percent(d, "client_sampling", "tracing"),
            overall_sampling=_percent(d, "overall_sampling", "tracing"),
            max_path_tag_length=int(length) if length is not None else DEFAULT_MAX_PATH_TAG_LENGTH,
            custom_tags=tuple(_custom_tag(t, i) for i, t in enumerate(d.get("custom_tags", ()))),
        )

    # ------------------------------------------------------------------ request start

    def _decide(self, headers: Headers) -> bool:
        rid = headers.get("x-request-id")
        if rid is None or len(rid) != 36 or rid[8] != "-":
            self.stats.not_traceable.value += 1
            return False
        try:
            bucket = int(rid[:8], 16) % 10_000
        except ValueError:
            self.stats.not_traceable.value += 1
            return False
        reason = rid[14]
        if reason not in (SAMPLED, SERVICE_FORCED, CLIENT_FORCED):
            reason = NOT_TRACEABLE
            if "x-client-trace-id" in headers and random.randrange(10_000) < self.client_sampling:
                reason = CLIENT_FORCED
            elif "x-envoy-force-trace" in headers:
                reason = SERVICE_FORCED
            elif bucket < self.random_sampling:
                reason = SAMPLED
        if reason != NOT_TRACEABLE and bucket >= self.overall_sampling:
            reason = NOT_TRACEABLE
        if reason != rid[14]:
            headers.set("x-request-id", f"{rid[:14]}{reason}{rid[15:]}")
        getattr(self.stats, _REASON_STAT[reason]).value += 1
        return reason != NOT_TRACEABLE

    def start(self, stream: HttpStream) -> Span:
        headers = stream.request_headers
        sampled = self._decide(headers)
        route = stream.route
        operation = getattr(route, "decorator", None)
        if self.ingress:
            override = headers.get("x-envoy-decorator-operation")
            if override is not None:
                headers.remove("x-envoy-decorator-operation")
                if not operation and override:
                    operation = override
        elif operation:
            headers.set("x-envoy-decorator-operation", operation)
        if not operation:
            operation = headers.get(":authority") or ""
        return self.tracer.start_span(
            SpanStart(
                headers=headers,
                operation=operation,
                ingress=self.ingress,
                sampled=sampled,
                start_time=stream.info.start_time,
            )
        )

    # ------------------------------------------------------------------ stream end

    def finish(self, stream: HttpStream, span: Span) -> None:
        info = stream.info
        headers = stream.request_headers
        get = headers.get
        path = get("x-envoy-original-path") or get(":path") or ""
        url = f"{get('x-forwarded-proto') or 'http'}://{get(':authority') or ''}{path}"
        remote = info.downstream_direct_remote_address or info.downstream_remote_address
        status = info.response_code
        tags = {
            "component": "proxy",
            "http.url": url[: self.max_path_tag_length],
            "http.method": get(":method") or "",
            "downstream_cluster": get("x-envoy-downstream-service-cluster") or "-",
            "user_agent": get("user-agent") or "-",
            "http.protocol": info.protocol,
            "peer.address": remote.rsplit(":", 1)[0].strip("[]"),
            "request_size": str(info.bytes_received),
            "response_size": str(info.bytes_sent),
            "http.status_code": str(status),
            "response_flags": info.flags_string(),
        }
        if self.node_id:
            tags["node_id"] = self.node_id
        rid = get("x-request-id")
        if rid is not None:
            tags["guid:x-request-id"] = rid
        client_id = get("x-client-trace-id")
        if client_id is not None:
            tags["guid:x-client-trace-id"] = client_id
        if info.upstream_cluster:
            tags["upstream_cluster"] = info.upstream_cluster
            # (Envoy: the cluster's observability name, its alt_stat_name if set)
            name = info.upstream_cluster_observability or info.upstream_cluster
            tags["upstream_cluster.name"] = name
        if status == 0 or status >= 500:
            tags["error"] = "true"
        for name, tag_value in self.custom_tags:
            value = tag_value(stream)
            if value is not None:
                tags[name] = value
        span.set_tags(tags)
        end = info.end_monotonic if info.end_monotonic is not None else info.start_monotonic
        span.finish(info.start_time + (end - info.start_monotonic))
