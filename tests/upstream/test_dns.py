"""DNS clusters: address selection (pure), membership, and names that do not resolve."""

from __future__ import annotations

import socket
from typing import Any

import trio
import trio.testing

from trioproxy.stats import Store
from trioproxy.upstream.cluster_manager import ClusterManager
from trioproxy.upstream.config import ClusterConfig, EndpointConfig
from trioproxy.upstream.dns import next_hosts, select_addresses
from trioproxy.upstream.host import Host

from .conftest import cluster_dict

V4 = socket.AF_INET
V6 = socket.AF_INET6


def info(fam: int, addr: str) -> tuple[Any, Any, Any, str, tuple[Any, ...]]:
    return (fam, socket.SOCK_STREAM, 6, "", (addr, 80))


INFOS = [info(V4, "10.0.0.1"), info(V6, "::1"), info(V4, "10.0.0.2"), info(V4, "10.0.0.1")]


def test_lookup_family_policies() -> None:
    assert select_addresses(INFOS, "V4_ONLY") == ["10.0.0.1", "10.0.0.2"]
    assert select_addresses(INFOS, "V6_ONLY") == ["::1"]
    assert select_addresses(INFOS, "AUTO") == ["::1"]
    assert select_addresses(INFOS, "V4_PREFERRED") == ["10.0.0.1", "10.0.0.2"]
    assert select_addresses(INFOS, "ALL") == ["10.0.0.1", "::1", "10.0.0.2"]
    v4only = [i for i in INFOS if i[0] == V4]
    assert select_addresses(v4only, "AUTO") == ["10.0.0.1", "10.0.0.2"]
    assert select_addresses([info(V6, "::2")], "V4_PREFERRED") == ["::2"]


def test_next_hosts_keeps_hosts_that_stay() -> None:
    ep = EndpointConfig(address="svc", port=80, weight=3)
    kept = Host(address=("10.0.0.1", 80))
    kept.rq_total = 7
    gone = Host(address=("10.0.0.9", 80))
    hosts = next_hosts([kept, gone], [(ep, ["10.0.0.1", "10.0.0.2"])])
    assert hosts[0] is kept and kept.rq_total == 7 and kept.weight == 3
    assert hosts[1].address == ("10.0.0.2", 80)
    assert hosts[1].hostname == "svc"
    assert gone not in hosts


def dns_config(name: str, type: str, **extra: Any) -> ClusterConfig:
    d = cluster_dict(80, address=name, type=type, dns_lookup_family="V4_ONLY", **extra)
    d["name"] = f"{type.lower()}_{name}"
    return ClusterConfig.from_proto(d)


async def test_strict_and_logical_dns_resolve_localhost_before_ready(
    nursery: trio.Nursery,
) -> None:
    store = Store()
    strict = dns_config("localhost", "STRICT_DNS")
    logical = dns_config("localhost", "LOGICAL_DNS")
    cm = ClusterManager([strict, logical], store)
    assert store.gauge("cluster_manager.warming_clusters").value == 2
    await nursery.start(cm.run)
    assert store.gauge("cluster_manager.warming_clusters").value == 0
    assert store.gauge("cluster_manager.active_clusters").value == 2
    assert store.counter("cluster_manager.cluster_added").value == 2
    for name in (strict.name, logical.name):
        cluster = cm.get(name)
        assert cluster is not None
        assert [h.address for h in cluster.hosts] == [("127.0.0.1", 80)]
        host = cluster.choose_host()
        assert host is not None and host.address == ("127.0.0.1", 80)
        prefix = f"cluster.{name}."
        assert store.gauge(prefix + "membership_total").value == 1
        assert store.gauge(prefix + "membership_healthy").value == 1
        assert store.counter(prefix + "membership_change").value == 1
        assert store.counter(prefix + "update_attempt").value == 1
        assert store.counter(prefix + "update_success").value == 1
        assert store.gauge(prefix + "max_host_weight").value == 1
    nursery.cancel_scope.cancel()


async def test_refresh_keeps_hosts_and_counts_no_rebuild(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = Store()
    config = dns_config("localhost", "STRICT_DNS", dns_refresh_rate="1s")
    cm = ClusterManager([config], store)
    await nursery.start(cm.run)
    cluster = cm.get(config.name)
    assert cluster is not None
    before = list(cluster.hosts)
    while cluster.stats.update_no_rebuild.value < 2:  # noqa: ASYNC110 (a stat, not an event)
        await trio.sleep(0.5)
    assert cluster.hosts == before and cluster.hosts[0] is before[0]
    assert cluster.stats.update_success.value >= 3
    assert cluster.stats.membership_change.value == 1
    nursery.cancel_scope.cancel()


async def test_unresolvable_name_leaves_cluster_empty(nursery: trio.Nursery) -> None:
    store = Store()
    bad = dns_config("does-not-exist.invalid", "STRICT_DNS")
    not_idna = dns_config("a" * 70 + ".example", "LOGICAL_DNS")
    cm = ClusterManager([bad, not_idna], store)
    await nursery.start(cm.run)
    cluster = cm.get(bad.name)
    assert cluster is not None
    assert cluster.hosts == []
    assert cluster.choose_host() is None
    assert cluster.stats.update_failure.value == 1
    assert cluster.stats.membership_total.value == 0
    assert store.gauge("cluster_manager.active_clusters").value == 2
    other = cm.get(not_idna.name)
    assert other is not None and other.hosts == []
    assert other.stats.update_failure.value == 1
    nursery.cancel_scope.cancel()
