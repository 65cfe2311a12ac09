"""Stats renderers against Envoy 1.40's exact output formats."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from trioproxy.stats.render import (
    StatsQuery,
    extract_tags,
    render_json,
    render_prometheus,
    render_text,
    sanitize,
)
from trioproxy.stats.store import Store


def small_store() -> Store:
    s = Store()
    s.counter("cluster.service.upstream_rq_200").value = 3
    s.counter("cluster.service.upstream_rq_404").value = 1
    s.counter("cluster.service.upstream_rq_total").value = 4
    s.counter("cluster_manager.cluster_added").value = 1
    s.counter("http.ingress_http.downstream_rq_2xx").value = 3
    s.counter("http.ingress_http.downstream_rq_timeout")
    s.gauge("cluster.service.membership_healthy").set(1)
    s.histogram("http.ingress_http.downstream_rq_time")
    return s


def test_text_sorts_counters_and_gauges_together_then_histograms() -> None:
    assert render_text(small_store()) == (
        "cluster.service.membership_healthy: 1\n"
        "cluster.service.upstream_rq_200: 3\n"
        "cluster.service.upstream_rq_404: 1\n"
        "cluster.service.upstream_rq_total: 4\n"
        "cluster_manager.cluster_added: 1\n"
        "http.ingress_http.downstream_rq_2xx: 3\n"
        "http.ingress_http.downstream_rq_timeout: 0\n"
        "http.ingress_http.downstream_rq_time: No recorded values\n"
    )


def test_text_filter_usedonly_and_type() -> None:
    s = small_store()
    q = StatsQuery.from_params({"filter": "rq_time", "usedonly": ""})
    assert render_text(s, q) == ""
    q = StatsQuery.from_params({"filter": "rq_time"})
    assert render_text(s, q) == (
        "http.ingress_http.downstream_rq_timeout: 0\n"
        "http.ingress_http.downstream_rq_time: No recorded values\n"
    )
    q = StatsQuery.from_params({"type": "Gauges"})
    assert render_text(s, q) == "cluster.service.membership_healthy: 1\n"


def test_text_histogram_quantiles() -> None:
    s = Store()
    h = s.histogram("h")
    h.record(1)
    line = render_text(s)
    # interval quantiles describe the last completed flush interval: none yet (Envoy: nan)
    assert line.startswith("h: P0(nan,1) P25(nan,")
    assert re.fullmatch(r"h: (P[\d.]+\(nan,[\d.]+\) ){9}P100\(nan,[\d.]+\)\n", line), line
    assert [p.split("(")[0] for p in line[3:].split()] == [
        "P0", "P25", "P50", "P75", "P90", "P95", "P99", "P99.5", "P99.9", "P100",
    ]  # fmt: skip
    h.flush_interval()  # the stats flush ends the interval: now it has the sample
    assert render_text(s).startswith("h: P0(1,1) P25(1.025,1.025)")
    h.flush_interval()  # an interval without samples
    assert render_text(s).startswith("h: P0(nan,1)")


def test_text_cumulative_buckets() -> None:
    s = Store()
    h = s.histogram("h")
    h.record(0.2)
    h.record(3)
    out = render_text(s, StatsQuery.from_params({"histogram_buckets": "cumulative"}))
    assert out.startswith("h: B0.5(0,1) B1(0,1) B5(0,2) B10(0,2)")  # no flush yet
    h.flush_interval()
    out = render_text(s, StatsQuery.from_params({"histogram_buckets": "cumulative"}))
    assert out.startswith("h: B0.5(1,1) B1(1,1) B5(2,2) B10(2,2)")
    assert out.endswith("B1.8e+06(2,2) B3.6e+06(2,2)\n")


def test_json_matches_envoy_shape() -> None:
    s = small_store()
    h = s.histogram("http.ingress_http.downstream_rq_time")
    doc = json.loads(render_json(s))
    stats = doc["stats"]
    assert stats[0] == {"name": "cluster.service.membership_healthy", "value": 1}
    hist = stats[-1]["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    cq = hist["computed_quantiles"][0]
    assert cq["name"] == "http.ingress_http.downstream_rq_time"
    assert cq["values"] == [{"cumulative": None, "interval": None}] * 10
    h.record(2)
    doc = json.loads(render_json(s, StatsQuery.from_params({"filter": "rq_time$"})))
    assert len(doc["stats"]) == 1
    values = doc["stats"][0]["histograms"]["computed_quantiles"][0]["values"]
    assert all(isinstance(v["cumulative"], int | float) for v in values)
    assert render_json(s).startswith('{"stats":[{"name":')


def test_tag_extraction_front_proxy_names() -> None:
    assert extract_tags("cluster.service.upstream_rq_200") == (
        "cluster.upstream_rq",
        (("envoy.response_code", "200"), ("envoy.cluster_name", "service")),
    )
    assert extract_tags("http.ingress_http.downstream_rq_2xx") == (
        "http.downstream_rq_xx",
        (("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress_http")),
    )
    assert extract_tags("listener.0.0.0.0_8000.downstream_cx_total") == (
        "listener.downstream_cx_total",
        (("envoy.listener_address", "0.0.0.0_8000"),),
    )
    assert extract_tags("listener.0.0.0.0_8000.worker_1.downstream_cx_total") == (
        "listener.worker_downstream_cx_total",
        (("envoy.worker_id", "1"), ("envoy.listener_address", "0.0.0.0_8000")),
    )
    assert extract_tags("vhost.service.vcluster.other.upstream_rq_503")[1] == (
        ("envoy.response_code", "503"),
        ("envoy.virtual_cluster", "other"),
        ("envoy.virtual_host", "service"),
    )
    assert extract_tags("tcp.db.downstream_cx_total") == (
        "tcp.downstream_cx_total",
        (("envoy.tcp_prefix", "db"),),
    )
    assert extract_tags("server.uptime") == ("server.uptime", ())


def test_prometheus_counters_gauges_histograms() -> None:
    s = small_store()
    s.histogram("cluster.service.upstream_rq_time").record(0.3)
    out = render_prometheus(s)
    assert out.startswith(
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="service"} 3\n'
        'envoy_cluster_upstream_rq{envoy_response_code="404",envoy_cluster_name="service"} 1\n'
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="service"} 4\n'
        "# TYPE envoy_cluster_manager_cluster_added counter\n"
        "envoy_cluster_manager_cluster_added{} 1\n"
    )
    assert (
        "# TYPE envoy_cluster_membership_healthy gauge\n"
        'envoy_cluster_membership_healthy{envoy_cluster_name="service"} 1\n'
    ) in out
    assert (
        "# TYPE envoy_cluster_upstream_rq_time histogram\n"
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="service",le="0.5"} 1\n'
    ) in out
    assert (
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="service",le="3600000"} 1\n'
        in out
    )
    assert (
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="service",le="+Inf"} 1\n' in out
    )
    assert 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="service"} 1\n' in out
    assert 'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="service"} 0.2' in out
    assert out.index("gauge\n") < out.index("histogram\n")


def test_prometheus_usedonly_and_filter() -> None:
    s = small_store()
    out = render_prometheus(s, StatsQuery.from_params({"usedonly": "", "filter": "http"}))
    assert out == (
        "# TYPE envoy_http_downstream_rq_xx counter\n"
        'envoy_http_downstream_rq_xx{envoy_response_code_class="2",'
        'envoy_http_conn_manager_prefix="ingress_http"} 3\n'
    )


@given(st.text(alphabet="abc._-123:", min_size=1, max_size=30))
def test_sanitized_names_are_prometheus_safe(name: str) -> None:
    assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", sanitize(name))
    extracted, _tags = extract_tags(name)
    assert len(extracted) <= len(name)


def test_json_without_histograms_and_with_buckets() -> None:
    s = small_store()
    assert render_json(s, StatsQuery.from_params({"filter": "zzz"})) == '{"stats":[]}'
    s.histogram("http.ingress_http.downstream_rq_time").record(3)
    s.histogram("http.ingress_http.downstream_rq_time").flush_interval()
    out = render_json(
        s, StatsQuery.from_params({"histogram_buckets": "cumulative", "type": "Histograms"})
    )
    assert out.startswith(
        '{"stats":[{"histograms":[{"name":"http.ingress_http.downstream_rq_time","buckets":['
        '{"upper_bound":0.5,"interval":0,"cumulative":0},'
        '{"upper_bound":1,"interval":0,"cumulative":0},'
        '{"upper_bound":5,"interval":1,"cumulative":1},'
    )
    assert '{"upper_bound":3e+05,"interval":1,"cumulative":1}' in out
    assert '{"upper_bound":1800000,"interval":1,"cumulative":1}' in out
    assert json.loads(out)["stats"][0]["histograms"][0]["buckets"][-1]["upper_bound"] == 3600000
