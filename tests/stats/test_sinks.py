"""statsd and DogStatsD sinks: what a UDP collector receives after a flush."""

from __future__ import annotations

import socket

import trio

from tests.support import Backend, Client, simple_config, start_proxy


def with_sink(config: str, sink: str, port: int) -> str:
    kind, url = {
        "statsd": ("envoy.stat_sinks.statsd", "envoy.config.metrics.v3.StatsdSink"),
        "dog_statsd": ("envoy.stat_sinks.dog_statsd", "envoy.config.metrics.v3.DogStatsdSink"),
    }[sink]
    return (
        config
        + f"""
stats_flush_interval: 0.2s
stats_sinks:
- name: {kind}
  typed_config:
    "@type": type.googleapis.com/{url}
    address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: {port}}}}}
    prefix: edge
"""
    )


async def collect(sock: trio.socket.SocketType, seconds: float = 1.0) -> list[str]:
    """Every line received for a while (several 0.2 s flushes)."""
    lines: list[str] = []
    with trio.move_on_after(seconds):
        while True:
            data = await sock.recv(65536)
            lines.extend(data.decode().split("\n"))
    return lines


def total(lines: list[str], metric: str) -> float:
    """A counter's or timer's total over all flushes (sample rates multiplied back)."""
    out = 0.0
    for ln in lines:
        name, _, rest = ln.partition(":")
        if name != metric:
            continue
        value, _, flags = rest.partition("|")
        if flags.startswith("c"):
            out += float(value)
        elif "|@" in rest:
            out += 1 / float(rest.split("|@")[1].split("|")[0])
        else:
            out += 1
    return out


async def _run(nursery: trio.Nursery, sink: str) -> list[str]:
    backend = Backend()
    await nursery.start(backend.serve)
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind(("127.0.0.1", 0))
    proxy = await start_proxy(
        nursery, with_sink(simple_config([backend.port]), sink, udp.getsockname()[1])
    )
    client = await Client.connect(proxy.port)
    try:
        for _ in range(3):
            resp, _ = await client.request("GET", "/")
            assert resp.status_code == 200
    finally:
        await client.aclose()
    with udp:
        return await collect(udp)


async def test_statsd_gets_counter_deltas_gauges_and_timers(nursery: trio.Nursery) -> None:
    lines = await _run(nursery, "statsd")
    assert total(lines, "edge.cluster.backend.upstream_rq_total") == 3
    assert total(lines, "edge.http.ingress_http.downstream_rq_2xx") == 3
    assert "edge.cluster.backend.membership_healthy:1|g" in lines
    # three samples, sent as buckets with sample rates that add back up to three
    timers = [ln for ln in lines if ln.startswith("edge.cluster.backend.upstream_rq_time:")]
    assert timers and all("|ms" in t for t in timers)
    assert round(total(lines, "edge.cluster.backend.upstream_rq_time")) == 3


async def test_dog_statsd_sends_tag_extracted_names(nursery: trio.Nursery) -> None:
    lines = await _run(nursery, "dog_statsd")
    tagged = [ln.split("|#") for ln in lines if "|#" in ln]

    def with_tags(tags: str) -> list[str]:
        return [metric for metric, t in tagged if t == tags]

    backend = with_tags("envoy.cluster_name:backend")
    assert total(backend, "edge.cluster.upstream_rq_total") == 3
    http_2xx = with_tags("envoy.response_code_class:2,envoy.http_conn_manager_prefix:ingress_http")
    assert total(http_2xx, "edge.http.downstream_rq_xx") == 3
