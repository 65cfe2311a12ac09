"""``/clusters`` and ``/listeners`` of several workers as one (``trioproxy.workers.clusters``)."""

from __future__ import annotations

import json

from trioproxy.admin.views import clusters_text
from trioproxy.stats import Store
from trioproxy.upstream.cluster_manager import Cluster
from trioproxy.upstream.config import ClusterConfig
from trioproxy.upstream.host import Host
from trioproxy.workers.clusters import cluster_records, merge_clusters, merge_listeners

CLUSTER = {
    "name": "backend",
    "type": "STATIC",
    "load_assignment": {
        "cluster_name": "backend",
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": a, "port_value": 80}}}}
                    for a in ("10.0.0.1", "10.0.0.2")
                ]
            }
        ],
    },
}


def _worker_cluster(rq_total: int, *, second_failed: bool) -> Cluster:
    cluster = Cluster(ClusterConfig.from_proto(CLUSTER), Store())
    first, second = cluster.hosts
    first.rq_total = first.rq_success = rq_total
    second.hc_failed = second_failed
    return cluster


def test_host_stats_add_up_and_a_failure_anywhere_shows() -> None:
    records = [
        json.loads(json.dumps(cluster_records([_worker_cluster(3, second_failed=False)]))),
        json.loads(json.dumps(cluster_records([_worker_cluster(4, second_failed=True)]))),
    ]
    (merged,) = merge_clusters(records)
    assert [h.address for h in merged.hosts] == [("10.0.0.1", 80), ("10.0.0.2", 80)]
    text = clusters_text([merged])
    assert "backend::10.0.0.1:80::rq_total::7\n" in text
    assert "backend::10.0.0.1:80::rq_success::7\n" in text
    assert "backend::10.0.0.1:80::health_flags::healthy\n" in text
    assert "backend::10.0.0.2:80::health_flags::/failed_active_hc\n" in text
    assert "backend::default_priority::max_connections::1024\n" in text


def test_a_single_worker_renders_as_the_process_itself() -> None:
    cluster = _worker_cluster(5, second_failed=True)
    assert isinstance(cluster.hosts[0], Host)
    assert clusters_text(merge_clusters([cluster_records([cluster])])) == clusters_text([cluster])


def test_listeners_in_first_seen_order() -> None:
    a = [["main", "127.0.0.1:8080"], ["udp", "127.0.0.1:5353"]]
    b = [["main", "127.0.0.1:8080"], ["lds", "127.0.0.1:9090"]]
    assert merge_listeners([a, b]) == [
        ("main", "127.0.0.1:8080"),
        ("udp", "127.0.0.1:5353"),
        ("lds", "127.0.0.1:9090"),
    ]
