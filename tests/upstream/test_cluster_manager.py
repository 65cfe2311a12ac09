"""The cluster manager: lookup, dynamic add/update/remove, and pools across updates."""

from __future__ import annotations

from typing import Any

import trio

from trioproxy.stats import Store
from trioproxy.upstream.cluster_manager import ClusterManager
from trioproxy.upstream.config import ClusterConfig

from .conftest import EchoServer, cluster_dict


def config(port: int, name: str = "backend", **extra: Any) -> ClusterConfig:
    d = cluster_dict(port, **extra)
    d["name"] = name
    return ClusterConfig.from_proto(d)


async def test_static_clusters_are_ready_and_found_by_name(nursery: trio.Nursery) -> None:
    store = Store()
    cm = ClusterManager([config(80, "a"), config(81, "b")], store)
    await nursery.start(cm.run)
    assert set(cm.clusters) == {"a", "b"}
    assert cm.get("missing") is None
    a = cm.get("a")
    assert a is not None
    assert a.info.circuit_breakers.max_connections == 1024
    assert not a.info.added_via_api
    assert a.stats.membership_total.value == 1
    assert store.gauge("cluster_manager.active_clusters").value == 2
    assert repr(a) == "<Cluster a STATIC hosts=1>"
    nursery.cancel_scope.cancel()


async def test_add_update_remove(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    store = Store()
    cm = ClusterManager([config(echo_server.port)], store)
    await nursery.start(cm.run)
    old = cm.get("backend")
    assert old is not None
    host = old.choose_host()
    assert host is not None
    conn = await old.pool(host).acquire()

    assert not await cm.add_or_update(config(echo_server.port))  # unchanged
    assert await cm.add_or_update(config(echo_server.port, connect_timeout="2s"))
    new = cm.get("backend")
    assert new is not None and new is not old
    assert new.info.added_via_api
    assert store.counter("cluster_manager.cluster_modified").value == 1
    # the old pool drains: the lent-out connection closes when it comes back
    old.pool(host).release(conn, True)
    assert conn.closed

    assert await cm.add_or_update(config(1, "dns", address="localhost", type="STRICT_DNS"))
    dns = cm.get("dns")
    assert dns is not None and len(dns.hosts) >= 1
    assert store.gauge("cluster_manager.active_clusters").value == 2

    assert cm.remove("dns")
    assert not cm.remove("dns")
    assert cm.get("dns") is None
    assert store.counter("cluster_manager.cluster_removed").value == 1
    assert store.gauge("cluster_manager.active_clusters").value == 1
    nursery.cancel_scope.cancel()


async def test_weighted_static_cluster_and_host_health() -> None:
    d = cluster_dict(80)
    eps = d["load_assignment"]["endpoints"][0]["lb_endpoints"]
    eps.append(
        {
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.2", "port_value": 80}}},
            "load_balancing_weight": 3,
        }
    )
    cm = ClusterManager([ClusterConfig.from_proto(d)], Store())
    cluster = cm.get("backend")
    assert cluster is not None
    assert cluster.stats.max_host_weight.value == 3
    picks = [cluster.choose_host() for _ in range(4)]
    assert sum(1 for h in picks if h is cluster.hosts[1]) == 3
    cluster.hosts[1].healthy = False
    cluster.on_health_change()
    assert cluster.stats.membership_healthy.value == 1
    assert all(cluster.choose_host() is cluster.hosts[0] for _ in range(4))
    await cm.aclose()


async def test_panic_mode_is_counted_per_pick() -> None:
    cm = ClusterManager([config(80)], Store())
    cluster = cm.get("backend")
    assert cluster is not None
    cluster.hosts[0].healthy = False
    cluster.on_health_change()
    assert cluster.choose_host() is cluster.hosts[0]  # panic: all hosts are used
    assert cluster.stats.lb_healthy_panic.value == 1
    assert cluster.stats.membership_healthy.value == 0


def test_stat_names_match_envoys() -> None:
    """The names a real Envoy 1.40 shows for a fresh cluster with track_remaining."""
    store = Store()
    ClusterManager(
        [config(80, circuit_breakers={"thresholds": [{"track_remaining": True}]})], store
    )
    names = {g.name for g in store.gauges()} | {c.name for c in store.counters()}
    expected = {
        f"cluster.backend.circuit_breakers.{prio}.{g}"
        for prio in ("default", "high")
        for g in ("cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open")
    } | {
        f"cluster.backend.circuit_breakers.default.remaining_{r}"
        for r in ("cx", "cx_pools", "pending", "retries", "rq")
    }
    expected |= {
        "cluster.backend." + n
        for n in [
            "lb_healthy_panic",
            "max_host_weight",
            "membership_change",
            "membership_degraded",
            "membership_excluded",
            "membership_healthy",
            "membership_total",
            "update_attempt",
            "update_empty",
            "update_failure",
            "update_no_rebuild",
            "update_success",
        ]
    }
    expected |= {
        "cluster_manager." + n
        for n in [
            "active_clusters",
            "cluster_added",
            "cluster_modified",
            "cluster_removed",
            "cluster_updated",
            "cluster_updated_via_merge",
            "update_merge_cancelled",
            "update_out_of_merge_window",
            "warming_clusters",
        ]
    }
    assert expected <= names
    assert store.gauge("cluster.backend.circuit_breakers.default.remaining_rq").value == 1024
