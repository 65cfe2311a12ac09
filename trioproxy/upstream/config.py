"""``envoy.config.cluster.v3.Cluster`` → an immutable ``ClusterConfig``.

Theory of operation: ``ClusterConfig.from_proto`` takes the canonical proto-JSON dict (snake_case
names, durations as ``"5s"``, enums as names, integers possibly as strings, wrapper types either
bare or as ``{"value": n}``) and checks what trioproxy acts on. Errors carry the field path
relative to the dict handed in. Endpoints from ``load_assignment`` and from the older ``hosts``
field become one flat tuple of ``EndpointConfig``, each with its priority and its locality's
weight (``lb.build_for_cluster`` spreads load across them). Fields we do not act on yet are kept raw
(``typed_extension_protocol_options``, ``transport_socket``) and the whole dict is kept for
``/config_dump``.

Defaults follow trioproxy's edge defaults (DEFAULTS.md): connect timeout 5 s, upstream
keep-alive idle 50 s (Envoy's is 1 h), 32 KiB per-connection buffers (Envoy: 1 MiB), circuit
breakers 1024/1024/1024/3.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trioproxy.errors import ConfigError

CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST")
UNSUPPORTED_TYPES: tuple[str, ...] = ()
LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV", "CLUSTER_PROVIDED")
MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_ORIGINAL_DST_CLEANUP = 5.0
DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
UNHEALTHY_STATUSES = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})
HEALTH_STATUSES = frozenset({"UNKNOWN", "HEALTHY", "DEGRADED"}) | UNHEALTHY_STATUSES

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_DNS_REFRESH_RATE = 5.0
DEFAULT_IDLE_TIMEOUT = 50.0  # Envoy: 1 h; shorter than typical upstream keep-alive
DEFAULT_BUFFER_LIMIT = 32 * 1024
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: The receive windows our HTTP/2 client announces unless a cluster sets them (smaller than
#: Envoy's 256 MiB: the reader holds back what the router has not taken)
H2_STREAM_WINDOW = 256 * 1024
H2_CONNECTION_WINDOW = 1024 * 1024

_DURATION = re.compile(r"^(-?\d+(?:\.\d{0,9})?)s$")

log = logging.getLogger(__name__)


def duration(value: Any, path: str) -> float:
    """A proto-JSON Duration (``"1.5s"`` or ``{"seconds": 1, "nanos": 5e8}``) in seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ConfigError(f"invalid duration {value!r}", path=path)
        secs = float(m.group(1))
    elif isinstance(value, Mapping):
        try:
            secs = int(value.get("seconds", 0)) + int(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            raise ConfigError(f"invalid duration {value!r}", path=path) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        secs = float(value)
    else:
        raise ConfigError(f"invalid duration {value!r}", path=path)
    if secs < 0:
        raise ConfigError(f"duration must be non-negative, got {value!r}", path=path)
    return secs


def uint(value: Any, path: str) -> int:
    """A proto-JSON unsigned integer: a number, a decimal string, or a wrapper ``{"value": n}``."""
    if isinstance(value, Mapping):
        value = value.get("value", 0)
    if isinstance(value, bool):
        raise ConfigError(f"expected an unsigned integer, got {value!r}", path=path)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    raise ConfigError(f"expected an unsigned integer, got {value!r}", path=path)


def _enum(d: Mapping[str, Any], key: str, allowed: Sequence[str], default: str) -> str:
    value = d.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"unknown or unsupported value {value!r} (expected one of {', '.join(allowed)})",
            path=key,
        )
    return str(value)


@attrs.frozen
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> Locality:
        return cls(str(d.get("region", "")), str(d.get("zone", "")), str(d.get("sub_zone", "")))


@attrs.frozen
class EndpointConfig:
    """One ``lb_endpoint``: an IP address (STATIC) or a name to resolve (DNS clusters)."""

    address: str
    port: int
    weight: int = 1
    hostname: str = ""
    priority: int = 0
    locality: Locality = Locality()
    healthy: bool = True
    #: the ``LocalityLbEndpoints.load_balancing_weight`` of its locality (0: none given)
    locality_weight: int = 0


def _socket_address(d: Mapping[str, Any], path: str) -> tuple[str, int]:
    """``core.v3.Address`` → (address, port); only TCP socket addresses are supported."""
    if "socket_address" not in d:
        kind = next(iter(d), "nothing")
        raise ConfigError(f"address kind {kind!r} not supported yet", path=path)
    sa = d["socket_address"]
    spath = f"{path}.socket_address"
    if sa.get("protocol", "TCP") != "TCP":
        raise ConfigError("only TCP upstream addresses are supported", path=f"{spath}.protocol")
    if "named_port" in sa:
        raise ConfigError("named_port is not supported", path=f"{spath}.named_port")
    address = sa.get("address", "")
    if not address:
        raise ConfigError("address is required", path=f"{spath}.address")
    port = uint(sa.get("port_value", 0), f"{spath}.port_value")
    if port > 65535:
        raise ConfigError(f"port {port} out of range", path=f"{spath}.port_value")
    return str(address), port


def _endpoints(d: Mapping[str, Any]) -> list[EndpointConfig]:
    out: list[EndpointConfig] = []
    la = d.get("load_assignment") or {}
    for i, loc in enumerate(la.get("endpoints", ())):
        lpath = f"load_assignment.endpoints[{i}]"
        locality = Locality.from_proto(loc.get("locality") or {})
        priority = uint(loc.get("priority", 0), f"{lpath}.priority")
        locality_weight = uint(
            loc.get("load_balancing_weight", 0), f"{lpath}.load_balancing_weight"
        )
        for j, lbe in enumerate(loc.get("lb_endpoints", ())):
            epath = f"{lpath}.lb_endpoints[{j}]"
            if "endpoint_name" in lbe:
                raise ConfigError(
                    "named endpoints are not supported", path=f"{epath}.endpoint_name"
                )
            ep = lbe.get("endpoint") or {}
            address, port = _socket_address(ep.get("address") or {}, f"{epath}.endpoint.address")
            weight = uint(lbe.get("load_balancing_weight", 1), f"{epath}.load_balancing_weight")
            if weight < 1:
                raise ConfigError(
                    "weight must be at least 1", path=f"{epath}.load_balancing_weight"
                )
            status = lbe.get("health_status", "UNKNOWN")
            if status not in HEALTH_STATUSES:
                raise ConfigError(
                    f"unknown health status {status!r}", path=f"{epath}.health_status"
                )
            out.append(
                EndpointConfig(
                    address=address,
                    port=port,
                    weight=weight,
                    hostname=str(ep.get("hostname", "")),
                    priority=priority,
                    locality=locality,
                    healthy=status not in UNHEALTHY_STATUSES,
                    locality_weight=locality_weight,
                )
            )
    for i, h in enumerate(d.get("hosts", ())):
        address, port = _socket_address(h, f"hosts[{i}]")
        out.append(EndpointConfig(address=address, port=port))
    return out


@attrs.frozen
class CircuitBreakerThresholds:
    """``circuit_breakers.thresholds`` for priority DEFAULT (HIGH is kept raw, unused)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False
    #: ``retry_budget``: concurrent retries allowed as a share of the active and pending
    #: requests (``budget_percent``, default 20 %), at least ``min_retry_concurrency`` (3);
    #: when set, it replaces ``max_retries``.
    retry_budget_percent: float | None = None
    min_retry_concurrency: int = 3

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> CircuitBreakerThresholds:
        for i, t in enumerate(d.get("thresholds", ())):
            prio = t.get("priority", "DEFAULT")
            if prio not in ("DEFAULT", "HIGH"):
                raise ConfigError(f"unknown priority {prio!r}", path=f"thresholds[{i}].priority")
            if prio != "DEFAULT":
                log.warning(
                    "circuit_breakers thresholds[%d]: priority HIGH is accepted but not acted "
                    "on yet (HIGH-priority routes use the DEFAULT thresholds)",
                    i,
                )
                continue
            p = f"thresholds[{i}]"
            if t.get("max_connection_pools") is not None:
                raise ConfigError("not supported yet", path=f"{p}.max_connection_pools")
            budget = t.get("retry_budget")
            percent: float | None = None
            min_retries = 3
            if budget is not None:
                raw = budget.get("budget_percent")
                # a Percent message given without value is 0 (proto3 drops zero values)
                raw = raw.get("value", 0.0) if isinstance(raw, Mapping) else raw
                percent = 20.0 if raw is None else float(raw)
                if not 0.0 <= percent <= 100.0:
                    raise ConfigError(
                        "must be between 0 and 100", path=f"{p}.retry_budget.budget_percent"
                    )
                mrc = budget.get("min_retry_concurrency")
                mrc = mrc.get("value", 3) if isinstance(mrc, Mapping) else mrc
                min_retries = 3 if mrc is None else int(mrc)
            return cls(
                retry_budget_percent=percent,
                min_retry_concurrency=min_retries,
                max_connections=uint(t.get("max_connections", 1024), f"{p}.max_connections"),
                max_pending_requests=uint(
                    t.get("max_pending_requests", 1024), f"{p}.max_pending_requests"
                ),
                max_requests=uint(t.get("max_requests", 1024), f"{p}.max_requests"),
                max_retries=uint(t.get("max_retries", 3), f"{p}.max_retries"),
                track_remaining=bool(t.get("track_remaining", False)),
            )
        return cls()


_LB_TYPES = {
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin": (
        "ROUND_ROBIN"
    ),
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest": (
        "LEAST_REQUEST"
    ),
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random": "RANDOM",
    "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash": (
        "RING_HASH"
    ),
    "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev": "MAGLEV",
}


@attrs.frozen
class HashLbSettings:
    """RING_HASH and MAGLEV settings: table sizes, the ring's hash function, and whether hosts
    are placed by hostname rather than by address (``use_hostname_for_hashing``)."""

    minimum_ring_size: int = 1024
    maximum_ring_size: int = MAX_RING_SIZE
    table_size: int = 65537
    hash_function: str = "XX_HASH"  # or MURMUR_HASH_2 (ring hash)
    use_hostname_for_hashing: bool = False

    @classmethod
    def from_proto(
        cls,
        policy: str,
        d: Mapping[str, Any],
        path: str,
        consistent: Mapping[str, Any],
        consistent_path: str,
    ) -> HashLbSettings:
        """From the policy's own config ``d`` (at ``path``) and the
        ``consistent_hashing_lb_config`` that applies (the typed policy's, or the cluster's
        ``common_lb_config``'s; at ``consistent_path``)."""

        def size(key: str, default: int) -> int:
            raw = d.get(key, default)
            if isinstance(raw, Mapping):
                raw = raw.get("value", default)
            return uint(raw, f"{path}.{key}")

        # (the typed RingHash has its own, deprecated, hash_balance_factor too)
        for where, at in (
            (consistent, consistent_path),
            (d if policy == "RING_HASH" else {}, path),
        ):
            if "hash_balance_factor" in where:
                raise ConfigError(
                    "bounded loads (hash_balance_factor) are not supported yet",
                    path=f"{at}.hash_balance_factor",
                )
        by_hostname = bool(consistent.get("use_hostname_for_hashing", False))
        if policy == "RING_HASH":
            # the typed RingHash's own (deprecated) field, when no consistent_hashing_lb_config
            by_hostname = by_hostname or bool(d.get("use_hostname_for_hashing", False))
            lo = size("minimum_ring_size", 1024)
            hi = size("maximum_ring_size", MAX_RING_SIZE)
            if hi > MAX_RING_SIZE or lo > MAX_RING_SIZE:
                raise ConfigError(
                    f"ring sizes must be <= {MAX_RING_SIZE}", path=f"{path}.maximum_ring_size"
                )
            if lo > hi:
                raise ConfigError(
                    f"ring hash: minimum_ring_size ({lo}) > maximum_ring_size ({hi})",
                    path=f"{path}.minimum_ring_size",
                )
            function = str(d.get("hash_function", "XX_HASH"))
            if function not in ("XX_HASH", "MURMUR_HASH_2"):
                raise ConfigError(
                    f"unknown hash_function {function!r} (expected XX_HASH or MURMUR_HASH_2)",
                    path=f"{path}.hash_function",
                )
            return cls(
                minimum_ring_size=max(lo, 1),
                maximum_ring_size=hi,
                hash_function=function,
                use_hostname_for_hashing=by_hostname,
            )
        if policy == "MAGLEV":
            table = size("table_size", 65537)
            if table < 2 or any(table % k == 0 for k in range(2, math.isqrt(table) + 1)):
                raise ConfigError(
                    f"The table size of maglev must be prime number, got {table}",
                    path=f"{path}.table_size",
                )
            return cls(table_size=table, use_hostname_for_hashing=by_hostname)
        return cls()


def _least_request(lr: Mapping[str, Any], path: str) -> tuple[int, float]:
    choice_count = uint(lr.get("choice_count", 2), f"{path}.choice_count")
    if choice_count < 2:
        raise ConfigError("choice_count must be at least 2", path=f"{path}.choice_count")
    bias_raw = lr.get("active_request_bias") or {}
    try:
        bias = float(bias_raw.get("default_value", 1.0))
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(
            "invalid active_request_bias", path=f"{path}.active_request_bias"
        ) from None
    return choice_count, bias


def _hash_settings(d: Mapping[str, Any], policy: str, cluster_type: str) -> HashLbSettings:
    for key in ("load_balancing_policy",):
        for i, p in enumerate((d.get(key) or {}).get("policies", ())):
            typed = (p.get("typed_extension_config") or {}).get("typed_config") or {}
            if _LB_TYPES.get(typed.get("@type", "")) == policy:
                path = f"{key}.policies[{i}].typed_extension_config.typed_config"
                consistent = typed.get("consistent_hashing_lb_config") or {}
                return HashLbSettings.from_proto(
                    policy, typed, path, consistent, f"{path}.consistent_hashing_lb_config"
                )
    field = {"RING_HASH": "ring_hash_lb_config", "MAGLEV": "maglev_lb_config"}.get(policy)
    if field is None:
        return HashLbSettings()
    consistent = (d.get("common_lb_config") or {}).get("consistent_hashing_lb_config") or {}
    if consistent.get("use_hostname_for_hashing") and cluster_type != "STRICT_DNS":
        # Envoy's rule for the cluster-level field (the typed policies' own is not checked)
        raise ConfigError(
            "Cannot use hostname for consistent hashing loadbalancing for cluster of type:"
            f" 'envoy.cluster.{cluster_type.lower()}'",
            path="common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
        )
    return HashLbSettings.from_proto(
        policy,
        d.get(field) or {},
        field,
        consistent,
        "common_lb_config.consistent_hashing_lb_config",
    )


def _lb_policy(d: Mapping[str, Any]) -> tuple[str, int, float]:
    """(policy, choice_count, active_request_bias) from ``lb_policy`` or, when present, the
    typed ``load_balancing_policy`` (the first policy we support wins, as in Envoy)."""
    if "load_balancing_policy" in d:
        policies = (d["load_balancing_policy"] or {}).get("policies", ())
        for i, p in enumerate(policies):
            tec = p.get("typed_extension_config") or {}
            typed = tec.get("typed_config") or {}
            policy = _LB_TYPES.get(typed.get("@type", ""))
            if policy is None:
                continue
            if policy == "LEAST_REQUEST":
                path = f"load_balancing_policy.policies[{i}].typed_extension_config.typed_config"
                return (policy, *_least_request(typed, path))
            return policy, 2, 1.0
        raise ConfigError(
            "no supported policy (round_robin, least_request, random, ring_hash, maglev)",
            path="load_balancing_policy.policies",
        )
    policy = _enum(d, "lb_policy", LB_POLICIES, "ROUND_ROBIN")
    lr = d.get("least_request_lb_config") or {}
    return (policy, *_least_request(lr, "least_request_lb_config"))


def _http_options(
    d: Mapping[str, Any],
) -> tuple[Mapping[str, Any], Mapping[str, Any], tuple[Mapping[str, Any], str] | None, bool]:
    """The effective ``common_http_protocol_options`` and HTTP/1.1 ``http_protocol_options``;
    the HTTP/2 ``http2_protocol_options`` with their path, if HTTP/2 is asked for; and whether
    the protocol is chosen per connection by ALPN (``auto_config``)."""
    common: Mapping[str, Any] = d.get("common_http_protocol_options") or {}
    http1: Mapping[str, Any] = d.get("http_protocol_options") or {}
    http2: tuple[Mapping[str, Any], str] | None = None
    if "http2_protocol_options" in d:
        http2 = (d["http2_protocol_options"] or {}, "http2_protocol_options")
    auto = False
    tepo = d.get("typed_extension_protocol_options") or {}
    opts = tepo.get(HTTP_PROTOCOL_OPTIONS)
    if opts is not None:
        common = opts.get("common_http_protocol_options") or common
        explicit = opts.get("explicit_http_config") or {}
        auto = "auto_config" in opts
        chosen = opts.get("auto_config") or explicit
        http1 = chosen.get("http_protocol_options") or http1
        if "http2_protocol_options" in explicit or (auto and "http2_protocol_options" in chosen):
            which = "auto_config" if auto else "explicit_http_config"
            path = f"typed_extension_protocol_options.{HTTP_PROTOCOL_OPTIONS}.{which}"
            http2 = (chosen.get("http2_protocol_options") or {}, f"{path}.http2_protocol_options")
        if auto and "http3_protocol_options" in (opts.get("auto_config") or {}):
            raise ConfigError(
                "HTTP/3 is not supported",
                path=f"typed_extension_protocol_options.{HTTP_PROTOCOL_OPTIONS}.auto_config",
            )
        if "use_downstream_protocol_config" in opts:
            raise ConfigError(
                "use_downstream_protocol_config is not supported yet",
                path=f"typed_extension_protocol_options.{HTTP_PROTOCOL_OPTIONS}",
            )
    return common, http1, http2, auto


def _http2_limits(opts: Mapping[str, Any], path: str) -> tuple[int, int, int]:
    """A cluster's ``http2_protocol_options`` as its HTTP/2 client uses them: the most
    streams per connection (the least of it and the upstream's SETTINGS, as Envoy's pool),
    and the stream and connection receive windows (ours unless set)."""
    defaults = (
        ("max_concurrent_streams", 2**31 - 1),
        ("initial_stream_window_size", H2_STREAM_WINDOW),
        ("initial_connection_window_size", H2_CONNECTION_WINDOW),
    )
    limits = [
        uint(opts[name], f"{path}.{name}") if name in opts else default
        for name, default in defaults
    ]
    for name, value in zip(("initial_stream_window_size", "initial_connection_window_size"),
                           limits[1:], strict=True):  # fmt: skip
        if not 65535 <= value <= 2**31 - 1:
            raise ConfigError("must be in [65535, 2^31-1]", path=f"{path}.{name}")
    if limits[0] < 1:
        raise ConfigError("must be at least 1", path=f"{path}.max_concurrent_streams")
    return limits[0], limits[1], limits[2]


@attrs.frozen
class H2Keepalive:
    """``connection_keepalive`` on a cluster: a PING every ``interval`` seconds (0: none) plus
    up to ``jitter`` percent of it, and one before a new stream on a connection that has
    read nothing for ``idle_interval`` (0: never); nothing read ``timeout`` after a PING
    closes the connection."""

    timeout: float
    interval: float = 0.0
    jitter: float = 15.0
    idle_interval: float = 0.0


def _keepalive(opts: Mapping[str, Any], path: str) -> H2Keepalive | None:
    d = opts.get("connection_keepalive")
    if d is None:
        return None
    path = f"{path}.connection_keepalive"

    def seconds(name: str) -> float:
        return duration(d[name], f"{path}.{name}") if name in d else 0.0

    jitter = d.get("interval_jitter")
    return H2Keepalive(
        timeout=seconds("timeout"),
        interval=seconds("interval"),
        jitter=15.0 if jitter is None else float(jitter.get("value", 0.0)),
        idle_interval=seconds("connection_idle_interval"),
    )


@attrs.frozen
class OriginalDstConfig:
    """An ORIGINAL_DST cluster's settings: hosts are made on demand from each downstream
    connection's original destination (or the ``x-envoy-original-dst-host`` header when
    ``use_http_header``) and removed ``cleanup_interval`` after their last use."""

    cleanup_interval: float = DEFAULT_ORIGINAL_DST_CLEANUP
    use_http_header: bool = False
    http_header_name: str = "x-envoy-original-dst-host"
    port_override: int | None = None

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> OriginalDstConfig:
        cleanup = DEFAULT_ORIGINAL_DST_CLEANUP
        if "cleanup_interval" in d:
            cleanup = duration(d["cleanup_interval"], "cleanup_interval")
            if cleanup <= 0:
                raise ConfigError(
                    "cleanup_interval must be greater than 0", path="cleanup_interval"
                )
        lbc = d.get("original_dst_lb_config") or {}
        override = lbc.get("upstream_port_override")
        if isinstance(override, Mapping):
            override = override.get("value")
        port = None
        if override is not None:
            port = uint(override, "original_dst_lb_config.upstream_port_override")
            if port > 65535:
                raise ConfigError(
                    f"port {port} out of range",
                    path="original_dst_lb_config.upstream_port_override",
                )
        return cls(
            cleanup_interval=cleanup,
            use_http_header=bool(lbc.get("use_http_header", False)),
            http_header_name=str(
                lbc.get("http_header_name") or "x-envoy-original-dst-host"
            ).lower(),
            port_override=port,
        )


def _bind_config(d: Mapping[str, Any]) -> tuple[str, int] | None:
    ubc = d.get("upstream_bind_config")
    if not ubc:
        return None
    sa = ubc.get("source_address")
    if not sa:
        raise ConfigError("source_address is required", path="upstream_bind_config.source_address")
    address = str(sa.get("address", ""))
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(
            f"malformed IP address: {address}",
            path="upstream_bind_config.source_address.address",
        ) from None
    return address, uint(sa.get("port_value", 0), "upstream_bind_config.source_address.port_value")


@attrs.frozen
class ClusterConfig:
    name: str
    type: str = "STATIC"
    lb_policy: str = "ROUND_ROBIN"
    choice_count: int = 2  # LEAST_REQUEST
    active_request_bias: float = 1.0  # LEAST_REQUEST, weighted
    healthy_panic_threshold: float = 50.0  # percent; 0 disables panic mode
    #: ``common_lb_config.locality_weighted_lb_config``: pick a locality by weight first.
    locality_weighted: bool = False
    #: ``load_assignment.policy.overprovisioning_factor`` (percent, default 140).
    overprovisioning: int = 140
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    endpoints: tuple[EndpointConfig, ...] = ()
    dns_refresh_rate: float = DEFAULT_DNS_REFRESH_RATE
    respect_dns_ttl: bool = False  # parsed; not acted on yet
    dns_lookup_family: str = "AUTO"
    circuit_breakers: CircuitBreakerThresholds = CircuitBreakerThresholds()
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # None: never close idle connections
    max_requests_per_connection: int = 0  # 0: unlimited
    #: ``common_http_protocol_options.max_connection_duration`` (None: unlimited): an older
    #: connection takes no new request and closes once idle
    max_connection_duration: float | None = None
    http2: bool = False  # HTTP/2 to the hosts (H2Pool), from the protocol options
    #: ``auto_config``: HTTP/2 or HTTP/1.1 as ALPN decides (only over TLS, as in Envoy).
    auto_http: bool = False
    #: ``http_protocol_options.header_key_format.proper_case_words``: HTTP/1.1 request
    #: header names go out proper-cased (``Content-Type``)
    proper_case_headers: bool = False
    #: ``http2_protocol_options``: streams per connection at most (with the upstream's own
    #: limit), and the receive windows our client announces
    http2_max_concurrent_streams: int = 2**31 - 1
    http2_stream_window: int = H2_STREAM_WINDOW
    http2_connection_window: int = H2_CONNECTION_WINDOW
    #: ``http2_protocol_options.connection_keepalive``, None when absent
    http2_keepalive: H2Keepalive | None = None
    typed_extension_protocol_options: Mapping[str, Any] = attrs.field(factory=dict)
    transport_socket: Mapping[str, Any] | None = None
    tls: Mapping[str, Any] | None = None  # UpstreamTlsContext typed_config
    #: The built client TLS context (``trioproxy.upstream.tls.UpstreamTls``).
    upstream_tls: Any = attrs.field(default=None, eq=False)
    #: EDS: the name endpoints are requested by, and the config source to request them from.
    eds_service_name: str = ""
    eds_config: Mapping[str, Any] | None = None
    #: ``upstream_bind_config.source_address``: the local address upstream sockets bind to.
    source_address: tuple[str, int] | None = None
    #: ``alt_stat_name``: the cluster's name in stats and access logs ("" : its name)
    alt_stat_name: str = ""
    #: ``upstream_connection_options.tcp_keepalive``: (probes, time, interval), each None
    #: for the system's default; None: no keepalive
    tcp_keepalive: tuple[int | None, int | None, int | None] | None = None
    original_dst: OriginalDstConfig | None = None
    hash_lb: HashLbSettings = HashLbSettings()
    #: ``outlier_detection`` (``trioproxy.upstream.outlier.OutlierConfig``), if configured.
    outlier: Any = None
    #: ``health_checks`` (``trioproxy.upstream.health_check.HealthCheckConfig``), if any.
    health_check: Any = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> ClusterConfig:
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("cluster name is required", path="name")
        ctype = d.get("type", "STATIC")
        if "cluster_type" in d:
            raise ConfigError("custom cluster types are not supported yet", path="cluster_type")
        if ctype in UNSUPPORTED_TYPES:
            raise ConfigError(f"cluster type {ctype} not supported yet", path="type")
        ctype = _enum(d, "type", CLUSTER_TYPES, "STATIC")
        lb_policy, choice_count, bias = _lb_policy(d)
        panic = 50.0
        common_lb = d.get("common_lb_config") or {}
        if "healthy_panic_threshold" in common_lb:
            raw_panic = common_lb["healthy_panic_threshold"]
            if isinstance(raw_panic, Mapping):
                raw_panic = raw_panic.get("value", 0.0)
            if not isinstance(raw_panic, int | float) or not 0.0 <= raw_panic <= 100.0:
                raise ConfigError(
                    "healthy_panic_threshold must be a percentage",
                    path="common_lb_config.healthy_panic_threshold",
                )
            panic = float(raw_panic)

        endpoints = _endpoints(d)
        if ctype == "STATIC":
            _check_ips(d, endpoints)
        eds = d.get("eds_cluster_config") or {}
        if ctype == "EDS":
            if "load_assignment" in d:
                raise ConfigError(
                    "an EDS cluster takes its endpoints from EDS, not load_assignment",
                    path="load_assignment",
                )
            if "eds_config" not in eds:
                raise ConfigError(
                    "an EDS cluster needs eds_cluster_config.eds_config",
                    path="eds_cluster_config",
                )
        if ctype == "ORIGINAL_DST":
            if lb_policy != "CLUSTER_PROVIDED":
                raise ConfigError(
                    f"cluster: LB policy {lb_policy} is not valid for Cluster type ORIGINAL_DST."
                    " Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
                    path="lb_policy",
                )
            if endpoints:
                raise ConfigError(
                    "ORIGINAL_DST clusters must have no load assignment configured",
                    path="load_assignment",
                )
        elif lb_policy == "CLUSTER_PROVIDED":
            raise ConfigError(
                f"cluster manager: cluster provided LB specified but cluster '{name}' did not"
                " provide one. Check cluster documentation.",
                path="lb_policy",
            )
        if ctype == "LOGICAL_DNS":
            locs = (d.get("load_assignment") or {}).get("endpoints", ())
            if len(endpoints) != 1 or len(locs) > 1:
                raise ConfigError(
                    "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single"
                    " lb_endpoint",
                    path="load_assignment",
                )

        connect_timeout = DEFAULT_CONNECT_TIMEOUT
        if "connect_timeout" in d:
            connect_timeout = duration(d["connect_timeout"], "connect_timeout")
            if connect_timeout <= 0:
                raise ConfigError("connect_timeout must be greater than 0", path="connect_timeout")
        refresh = DEFAULT_DNS_REFRESH_RATE
        if "dns_refresh_rate" in d:
            refresh = duration(d["dns_refresh_rate"], "dns_refresh_rate")
            if refresh < 0.001:
                raise ConfigError("dns_refresh_rate must be at least 1ms", path="dns_refresh_rate")

        try:
            breakers = CircuitBreakerThresholds.from_proto(d.get("circuit_breakers") or {})
        except ConfigError as e:
            raise e.at("circuit_breakers") from None

        common, http1, http2_options, auto = _http_options(d)
        # HTTP/2 always; under auto_config, only where ALPN picks it (AutoPool)
        http2 = http2_options is not None and not auto
        h2_limits = (2**31 - 1, H2_STREAM_WINDOW, H2_CONNECTION_WINDOW)
        keepalive = None
        if http2_options is not None:
            h2_limits = _http2_limits(*http2_options)
            keepalive = _keepalive(*http2_options)
        idle: float | None = DEFAULT_IDLE_TIMEOUT
        if "idle_timeout" in common:
            idle = duration(common["idle_timeout"], "common_http_protocol_options.idle_timeout")
            idle = idle or None  # 0 disables, as in Envoy
        max_duration = None
        if "max_connection_duration" in common:
            max_duration = duration(
                common["max_connection_duration"],
                "common_http_protocol_options.max_connection_duration",
            )
            max_duration = max_duration or None  # 0 disables, as in Envoy
        max_rpc = 0
        if "max_requests_per_connection" in common:
            max_rpc = uint(
                common["max_requests_per_connection"],
                "common_http_protocol_options.max_requests_per_connection",
            )
        elif "max_requests_per_connection" in d:
            max_rpc = uint(d["max_requests_per_connection"], "max_requests_per_connection")

        buffer_limit = DEFAULT_BUFFER_LIMIT
        if "per_connection_buffer_limit_bytes" in d:
            buffer_limit = uint(
                d["per_connection_buffer_limit_bytes"], "per_connection_buffer_limit_bytes"
            )

        ts = d.get("transport_socket")
        tls = None
        upstream_tls = None
        if ts is not None:
            from trioproxy.upstream.tls import cluster_tls

            # built now: a bad context is a config error, not a failed connect
            alpn = ("h2", "http/1.1") if auto else ("h2",) if http2 else ("http/1.1",)
            upstream_tls = cluster_tls(ts, default_alpn=alpn)
            tls = ts.get("typed_config") or {}
        if auto and upstream_tls is None:
            # (Envoy 1.40 refuses it the same way: without TLS there is no ALPN to choose)
            raise ConfigError(
                f"ALPN configured for cluster {name} which has a non-ALPN transport socket",
                path=f"typed_extension_protocol_options.{HTTP_PROTOCOL_OPTIONS}.auto_config",
            )
        return cls(
            name=name,
            type=ctype,
            lb_policy=lb_policy,
            choice_count=choice_count,
            active_request_bias=bias,
            healthy_panic_threshold=panic,
            locality_weighted="locality_weighted_lb_config" in common_lb,
            overprovisioning=_overprovisioning(d),
            connect_timeout=connect_timeout,
            endpoints=tuple(endpoints),
            dns_refresh_rate=refresh,
            respect_dns_ttl=bool(d.get("respect_dns_ttl", False)),
            dns_lookup_family=_enum(d, "dns_lookup_family", DNS_FAMILIES, "AUTO"),
            circuit_breakers=breakers,
            per_connection_buffer_limit_bytes=buffer_limit,
            idle_timeout=idle,
            max_requests_per_connection=max_rpc,
            max_connection_duration=max_duration,
            http2=http2,
            auto_http=auto,
            proper_case_headers="proper_case_words" in (http1.get("header_key_format") or {}),
            http2_max_concurrent_streams=h2_limits[0],
            http2_stream_window=h2_limits[1],
            http2_connection_window=h2_limits[2],
            http2_keepalive=keepalive,
            typed_extension_protocol_options=dict(d.get("typed_extension_protocol_options") or {}),
            transport_socket=ts,
            tls=tls,
            upstream_tls=upstream_tls,
            eds_service_name=str(eds.get("service_name", "")) or name,
            eds_config=eds.get("eds_config") if ctype == "EDS" else None,
            source_address=_bind_config(d),
            alt_stat_name=str(d.get("alt_stat_name", "")),
            tcp_keepalive=_tcp_keepalive(d),
            original_dst=OriginalDstConfig.from_proto(d) if ctype == "ORIGINAL_DST" else None,
            hash_lb=_hash_settings(d, lb_policy, ctype),
            outlier=_outlier(d),
            health_check=_health_check(d),
            raw=d,
        )


def _tcp_keepalive(d: Mapping[str, Any]) -> tuple[int | None, int | None, int | None] | None:
    options = d.get("upstream_connection_options") or {}
    if "tcp_keepalive" not in options:
        return None
    ka = options["tcp_keepalive"] or {}

    def value(name: str) -> int | None:
        v = ka.get(name)
        v = v.get("value") if isinstance(v, Mapping) else v
        return None if v is None else int(v)

    return value("keepalive_probes"), value("keepalive_time"), value("keepalive_interval")


def _overprovisioning(d: Mapping[str, Any]) -> int:
    policy = (d.get("load_assignment") or {}).get("policy") or {}
    value = policy.get("overprovisioning_factor")
    if isinstance(value, Mapping):
        value = value.get("value")
    if value is None:
        return 140
    if int(value) < 1:
        raise ConfigError(
            "must be greater than 0", path="load_assignment.policy.overprovisioning_factor"
        )
    return int(value)


def _outlier(d: Mapping[str, Any]) -> Any:
    if "outlier_detection" not in d:
        return None
    from trioproxy.upstream.outlier import OutlierConfig  # (outlier → host → config)

    return OutlierConfig.from_proto(d["outlier_detection"] or {})


def _health_check(d: Mapping[str, Any]) -> Any:
    from trioproxy.upstream.health_check import parse_health_checks  # (→ host → config)

    return parse_health_checks(d.get("health_checks") or ())


def assignment_endpoints(cla: Mapping[str, Any]) -> list[EndpointConfig]:
    """The endpoints of an EDS ``ClusterLoadAssignment``; IP addresses only, as Envoy."""
    d = {"load_assignment": cla}
    endpoints = _endpoints(d)
    _check_ips(d, endpoints)
    return endpoints


def _check_ips(d: Mapping[str, Any], endpoints: list[EndpointConfig]) -> None:
    """STATIC clusters take IP addresses only (Envoy: "malformed IP address")."""
    paths: list[str] = []
    la = d.get("load_assignment") or {}
    for i, loc in enumerate(la.get("endpoints", ())):
        for j, _ in enumerate(loc.get("lb_endpoints", ())):
            paths.append(
                f"load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address"
                ".socket_address.address"
            )
    paths.extend(f"hosts[{i}].socket_address.address" for i in range(len(d.get("hosts", ()))))
    for ep, path in zip(endpoints, paths, strict=True):
        try:
            ipaddress.ip_address(ep.address)
        except ValueError:
            raise ConfigError(f"malformed IP address: {ep.address}", path=path) from None
