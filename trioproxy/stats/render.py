"""Stats output formats of Envoy's admin: text, JSON and Prometheus.

Theory of operation: every renderer takes a ``Store`` and a ``StatsQuery`` (the parsed query
parameters: ``filter``, ``usedonly``, ``type``, ``histogram_buckets``) and returns the body as a
``str``, formatted exactly as Envoy 1.40 prints it (checked against the real binary):

* text: counters and gauges merged and sorted by name as ``name: value``, then histograms sorted
  by name as ``name: P0(interval,cumulative) … P100(…)`` or ``name: No recorded values``;
* JSON: ``{"stats":[{"name":…,"value":…},…,{"histograms":{…}}]}`` (compact, as Envoy);
* Prometheus: names go through Envoy's default tag extractors (``TAG_SPECIFIERS``, compiled once;
  the result per stat name is cached in ``_TAGS``), are sanitised to ``[a-zA-Z0-9_]`` and prefixed
  with ``envoy_``; metrics are grouped by extracted name, counters then gauges then histograms,
  each group sorted and introduced by a ``# TYPE`` line.

This is an admin path, not a hot path; still, nothing here is recomputed per stat name twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from trioproxy.stats.store import Counter, Gauge, Histogram, Store

SUPPORTED_QUANTILES: tuple[float, ...] = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)
_QS = tuple(q / 100.0 for q in SUPPORTED_QUANTILES)
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip

_TYPES = {"all", "counters", "gauges", "histograms", "textreadouts"}
_BUCKET_MODES = {"cumulative", "disjoint", "detailed", "summary", "unset"}


class QueryError(ValueError):
    """A bad query parameter; the admin answers 400 with this message."""


@attrs.frozen
class StatsQuery:
    """The query parameters ``/stats`` and ``/stats/prometheus`` understand."""

    filter: re.Pattern[str] | None = None
    used_only: bool = False
    type: str = "all"
    histogram_buckets: str = "unset"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> StatsQuery:
        pattern = None
        if params.get("filter"):
            try:
                pattern = re.compile(params["filter"])
            except re.error as exc:
                raise QueryError(f"Invalid re2 regex: {exc}") from exc
        kind = params.get("type", "All").lower()
        if kind not in _TYPES:
            raise QueryError(f"invalid type={params['type']}")
        buckets = params.get("histogram_buckets", "unset").lower()
        if buckets not in _BUCKET_MODES:
            raise QueryError(
                "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|none)"
            )
        return cls(pattern, "usedonly" in params, kind, buckets)

    def keep(self, name: str, used: bool) -> bool:
        if self.used_only and not used:
            return False
        return self.filter is None or self.filter.search(name) is not None


def fmt_number(v: float) -> str:
    """A double as Envoy prints it: shortest round-trip form, integers without ``.0``."""
    if math.isnan(v):
        return "nan"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _selected(store: Store, q: StatsQuery) -> tuple[list[Counter | Gauge], list[Histogram]]:
    scalars: list[Counter | Gauge] = []
    if q.type in ("all", "counters"):
        scalars.extend(c for c in store.counters() if q.keep(c.name, c.used))
    if q.type in ("all", "gauges"):
        scalars.extend(g for g in store.gauges() if q.keep(g.name, g.used))
    hists: list[Histogram] = []
    if q.type in ("all", "histograms"):
        hists = [h for h in store.histograms() if q.keep(h.name, h.used)]
    scalars.sort(key=lambda s: s.name)
    hists.sort(key=lambda h: h.name)
    return scalars, hists


def _interval_quantiles(h: Histogram) -> list[float]:
    return h.quantiles(_QS, interval=True)


def _histogram_text(h: Histogram, mode: str) -> str:
    if mode in ("cumulative", "disjoint"):
        cum = h.bucket_counts(DEFAULT_BUCKETS)
        if mode == "disjoint":
            cum = [c - (cum[i - 1] if i else 0) for i, c in enumerate(cum)]
        # Interval buckets: computed from the interval samples the same way.
        inter = _interval_bucket_counts(h, mode)
        return " ".join(
            f"B{b:g}({i},{c})" for b, i, c in zip(DEFAULT_BUCKETS, inter, cum, strict=True)
        )
    if not h.used:
        return "No recorded values"
    inter_q = _interval_quantiles(h)
    cum_q = h.quantiles(_QS)
    return " ".join(
        f"P{fmt_number(p)}({fmt_number(i)},{fmt_number(c)})"
        for p, i, c in zip(SUPPORTED_QUANTILES, inter_q, cum_q, strict=True)
    )


def _interval_bucket_counts(h: Histogram, mode: str) -> list[int]:
    tmp = Histogram(h.name)
    tmp.cumulative = h.interval
    out = tmp.bucket_counts(DEFAULT_BUCKETS)
    if mode == "disjoint":
        out = [c - (out[i - 1] if i else 0) for i, c in enumerate(out)]
    return out


def render_text(store: Store, q: StatsQuery = StatsQuery()) -> str:
    """``GET /stats``."""
    scalars, hists = _selected(store, q)
    lines = [f"{s.name}: {s.value}" for s in scalars]
    mode = q.histogram_buckets
    lines.extend(f"{h.name}: {_histogram_text(h, mode)}" for h in hists)
    return "".join(line + "\n" for line in lines)


def _json_number(v: float) -> Any:
    if math.isnan(v):
        return None
    return int(v) if v == int(v) and abs(v) < 1e15 else v


def _short(v: float) -> str:
    """A JSON number as Envoy writes it: the shorter of fixed and exponent form (``3e+05``)."""
    fixed = fmt_number(v)
    mantissa, _, exp = f"{v:e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    sci = f"{mantissa}e{exp}"
    return sci if len(sci) < len(fixed) else fixed


def _json_buckets(hists: Sequence[Histogram], mode: str) -> str:
    out = []
    for h in hists:
        cum = h.bucket_counts(DEFAULT_BUCKETS)
        if mode == "disjoint":
            cum = [c - (cum[i - 1] if i else 0) for i, c in enumerate(cum)]
        inter = _interval_bucket_counts(h, mode)
        buckets = ",".join(
            f'{{"upper_bound":{_short(b)},"interval":{i},"cumulative":{c}}}'
            for b, i, c in zip(DEFAULT_BUCKETS, inter, cum, strict=True)
        )
        out.append(f'{{"name":{json.dumps(h.name)},"buckets":[{buckets}]}}')
    return '{"histograms":[' + ",".join(out) + "]}"


def render_json(store: Store, q: StatsQuery = StatsQuery()) -> str:
    """``GET /stats?format=json``."""
    scalars, hists = _selected(store, q)
    stats: list[Any] = [{"name": s.name, "value": s.value} for s in scalars]
    if hists and q.histogram_buckets in ("cumulative", "disjoint"):
        head = json.dumps({"stats": stats}, separators=(",", ":"))[:-2]
        sep = "," if stats else ""
        return head + sep + _json_buckets(hists, q.histogram_buckets) + "]}"
    if hists:
        computed = []
        for h in hists:
            cum = h.quantiles(_QS)
            inter = _interval_quantiles(h)
            values = [
                {"cumulative": _json_number(c), "interval": _json_number(i)}
                for c, i in zip(cum, inter, strict=True)
            ]
            computed.append({"name": h.name, "values": values})
        block = {"supported_quantiles": list(SUPPORTED_QUANTILES), "computed_quantiles": computed}
        stats.append({"histograms": block})
    return json.dumps({"stats": stats}, separators=(",", ":"))


# --- Prometheus -----------------------------------------------------------------------------

# Envoy's default tag specifiers (source/common/config/well_known_names.cc), in Envoy's order:
# (tag name, regex, substring that must be present for the regex to be tried). The first
# capture group is removed from the name; the second (or the first when alone) is the value.
TAG_SPECIFIERS: tuple[tuple[str, str, str], ...] = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    ("envoy.worker_id", r"^listener\..*?\.worker_((\d+)\.)", ".worker_"),
    ("envoy.worker_id", r"^server\.worker_((\d+)\.)", "server.worker_"),
    ("envoy.worker_id", r"^thread_local_cluster_manager\.worker_((\d+)\.)", ".worker_"),
    ("envoy.worker_id", r"^listener_manager\.worker_((\d+)\.)", "listener_manager.worker_"),
    (
        "envoy.dynamo_partition_id",
        r"^http(?=\.).*?\.dynamodb\.table(?=\.).*?\.capacity(?=\.).*?(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
    ),
    (
        "envoy.dyanmo_operation",
        r"^http(?=\.).*?\.dynamodb.(?:operation|table(?=\.).*?\.capacity)(\.(.*?))(?:\.|$)",
        ".dynamodb.",
    ),
    (
        "envoy.mongo_callsite",
        r"^mongo(?=\.).*?\.collection(?=\.).*?\.callsite\.((.*?)\.).*?query.\w+?$",
        ".collection.",
    ),
    ("envoy.dyanmo_table", r"^http(?=\.).*?\.dynamodb.(?:table|error)\.((.*?)\.)", ".dynamodb."),
    (
        "envoy.mongo_collection",
        r"^mongo(?=\.).*?\.collection\.((.*?)\.).*?query.\w+?$",
        ".collection.",
    ),
    ("envoy.mongo_cmd", r"^mongo(?=\.).*?\.cmd\.((.*?)\.)\w+?$", ".cmd."),
    ("envoy.grpc_bridge_method", r"^cluster(?=\.).*?\.grpc(?=\.).*\.((.*?)\.)\w+?$", ".grpc."),
    ("envoy.http_user_agent", r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$", ".user_agent."),
    ("envoy.virtual_cluster", r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$", ".vcluster."),
    ("envoy.fault_downstream_cluster", r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$", ".fault."),
    ("envoy.ssl_cipher", r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$", ".ssl.cipher"),
    ("envoy.ssl_cipher_suite", r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$", ".ssl.ciphers."),
    ("envoy.grpc_bridge_service", r"^cluster(?=\.).*?\.grpc\.((.*?)\.)", ".grpc."),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$", ""),
    ("envoy.udp_prefix", r"^udp\.((.*?)\.)\w+?$", ""),
    ("envoy.clientssl_prefix", r"^auth\.clientssl\.((.*?)\.)\w+?$", ""),
    ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)\w+?$", ""),
    ("envoy.cluster_name", r"^cluster\.(([^\.]+)\.).*", ""),
    ("envoy.http_conn_manager_prefix", r"^listener(?=\.).*?\.http\.((.*?)\.)", ".http."),
    ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)", ""),
    (
        "envoy.listener_address",
        r"^listener\.(((?:[_.\d]*|[_\[\]aAbBcCdDeEfF\d]*))\.)",
        "",
    ),
    ("envoy.virtual_host", r"^vhost\.((.*?)\.)", ""),
    ("envoy.mongo_prefix", r"^mongo\.((.*?)\.)", ""),
    ("envoy.rds_route_config", r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$", ".rds."),
)

_COMPILED = tuple((_n, re.compile(_r), _s) for _n, _r, _s in TAG_SPECIFIERS)
_TAGS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
_INF = 'le="+Inf"'
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def sanitize(name: str) -> str:
    """Envoy's Prometheus name sanitising: anything outside ``[a-zA-Z0-9_]`` becomes ``_``."""
    out = _BAD.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def extract_tags(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``cluster.service.upstream_rq_200`` → ``("cluster.upstream_rq", (("envoy.response_code",
    "200"), ("envoy.cluster_name", "service")))``; cached per name."""
    hit = _TAGS.get(name)
    if hit is not None:
        return hit
    tags: list[tuple[str, str]] = []
    removed: list[tuple[int, int]] = []
    seen: set[str] = set()
    for tag, rx, substr in _COMPILED:
        if tag in seen or (substr and substr not in name):
            continue
        m = rx.search(name)
        if m is None:
            continue
        value_group = 2 if (rx.groups >= 2 and m.group(2) is not None) else 1
        tags.append((tag, m.group(value_group)))
        removed.append(m.span(1))
        seen.add(tag)
    if removed:
        keep = bytearray(b"\x01" * len(name))
        for start, end in removed:
            keep[start:end] = b"\x00" * (end - start)
        extracted = "".join(ch for ch, k in zip(name, keep, strict=True) if k)
    else:
        extracted = name
    result = (extracted, tuple(tags))
    _TAGS[name] = result
    return result


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(tags: Iterable[tuple[str, str]], extra: str = "") -> str:
    parts = [f'{sanitize(k)}="{_escape(v)}"' for k, v in tags]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _groups(
    stats: Iterable[Counter | Gauge | Histogram], q: StatsQuery
) -> list[tuple[str, list[tuple[tuple[tuple[str, str], ...], Any]]]]:
    by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], Any]]] = {}
    for s in sorted(stats, key=lambda s: s.name):
        if not q.keep(s.name, s.used):
            continue
        extracted, tags = extract_tags(s.name)
        by_name.setdefault(extracted, []).append((tags, s))
    return [("envoy_" + sanitize(n), by_name[n]) for n in sorted(by_name)]


def render_prometheus(store: Store, q: StatsQuery = StatsQuery()) -> str:
    """``GET /stats/prometheus`` (text exposition format 0.0.4)."""
    out: list[str] = []
    kinds: Sequence[tuple[str, str, Iterable[Any]]] = (
        ("counters", "counter", store.counters()),
        ("gauges", "gauge", store.gauges()),
    )
    for kind, ptype, stats in kinds:
        if q.type not in ("all", kind):
            continue
        for metric, series in _groups(stats, q):
            out.append(f"# TYPE {metric} {ptype}\n")
            for tags, s in series:
                out.append(f"{metric}{_labels(tags)} {s.value}\n")
    if q.type in ("all", "histograms"):
        for metric, series in _groups(store.histograms(), q):
            out.append(f"# TYPE {metric} histogram\n")
            for tags, h in series:
                counts = h.bucket_counts(DEFAULT_BUCKETS)
                for bound, n in zip(DEFAULT_BUCKETS, counts, strict=True):
                    le = 'le="' + format(bound, ".32g") + '"'
                    out.append(f"{metric}_bucket{_labels(tags, le)} {n}\n")
                out.append(f"{metric}_bucket{_labels(tags, _INF)} {h.count}\n")
                out.append(f"{metric}_sum{_labels(tags)} {h.sum:.32g}\n")
                out.append(f"{metric}_count{_labels(tags)} {h.count}\n")
    return "".join(out)
