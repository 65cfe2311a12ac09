"""``envoy.stat_sinks.statsd`` and ``envoy.stat_sinks.dog_statsd``: stats over UDP.

Every flush (``stats_flush_interval``) sends each used counter's increase
(``<prefix>.<name>:<n>|c``), each used gauge (``|g``) and the histogram samples of the
interval. Histograms keep two-significant-digit buckets, not raw samples, so each non-empty
bucket goes out once with a sample rate (``<prefix>.<name>:<value>|ms|@<1/count>``) that
statsd and DogStatsD multiply back into the count. statsd gets one metric per datagram, as
Envoy sends them; DogStatsD gets Envoy's tag-extracted names with ``|#tag:value`` tags, packed
into datagrams of at most ``max_bytes_per_datagram`` (512) bytes. Nothing waits on a send:
UDP drops instead.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from trioproxy.config.types import socket_address
from trioproxy.errors import ConfigError
from trioproxy.hookspecs import hookimpl
from trioproxy.registry import StatSinkFactory
from trioproxy.stats.flush import Snapshot
from trioproxy.stats.render import extract_tags
from trioproxy.stats.store import _bucket_width

STATSD = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"
DOG_STATSD = "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink"


@attrs.frozen
class SinkConfig:
    address: tuple[str, int]
    prefix: str = "envoy"
    max_bytes_per_datagram: int = 512


def _config(raw: Mapping[str, Any], *, dog: bool) -> SinkConfig:
    if "tcp_cluster_name" in raw:
        raise ConfigError(
            "tcp_cluster_name is not supported yet (use address)", path="tcp_cluster_name"
        )
    addr = (raw.get("address") or {}).get("socket_address")
    if addr is None:
        raise ConfigError("a UDP socket address is required", path="address")
    try:
        host, port = socket_address(addr)
    except ConfigError as exc:
        raise exc.at("address.socket_address") from None
    size = raw.get("max_bytes_per_datagram", 512) if dog else 512
    if isinstance(size, Mapping):
        size = size.get("value", 512)
    return SinkConfig((host, port), str(raw.get("prefix") or "envoy"), int(size) or 512)


def _rate(count: int) -> str:
    return f"|@{1 / count:.6g}" if count > 1 else ""


class UdpStatsdSink:
    def __init__(self, config: SinkConfig, *, dog: bool) -> None:
        self.config = config
        self.dog = dog
        family = socket.AF_INET6 if ":" in config.address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.errors = 0

    def _name(self, name: str) -> tuple[str, str]:
        """(metric name, tag suffix)."""
        prefix = self.config.prefix
        if not self.dog:
            return f"{prefix}.{name}", ""
        extracted, tags = extract_tags(name)
        tag_text = "|#" + ",".join(f"{k}:{v}" for k, v in tags) if tags else ""
        return f"{prefix}.{extracted}", tag_text

    def lines(self, snapshot: Snapshot) -> Iterator[str]:
        for counter, delta in snapshot.counters:
            name, tags = self._name(counter.name)
            yield f"{name}:{delta}|c{tags}"
        for gauge in snapshot.gauges:
            name, tags = self._name(gauge.name)
            yield f"{name}:{gauge.value}|g{tags}"
        for hist, buckets in snapshot.histograms:
            name, tags = self._name(hist.name)
            for lower, count in sorted(buckets.items()):
                value = lower + _bucket_width(lower) / 2
                yield f"{name}:{value:g}|ms{_rate(count)}{tags}"

    def close(self) -> None:
        self.sock.close()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.config.address)
        except OSError:
            self.errors += 1

    async def flush(self, snapshot: Snapshot) -> None:
        if not self.dog:
            for line in self.lines(snapshot):
                self._send(line.encode())
            return
        limit = self.config.max_bytes_per_datagram
        buf = b""
        for line in self.lines(snapshot):
            data = line.encode()
            if buf and len(buf) + 1 + len(data) > limit:
                self._send(buf)
                buf = b""
            buf = data if not buf else buf + b"\n" + data
        if buf:
            self._send(buf)


@hookimpl
def trioproxy_stat_sinks() -> list[StatSinkFactory]:
    return [
        StatSinkFactory(
            "envoy.stat_sinks.statsd",
            (STATSD,),
            config_type=lambda raw: _config(raw, dog=False),
            create=lambda config, ctx: UdpStatsdSink(config, dog=False),
        ),
        StatSinkFactory(
            "envoy.stat_sinks.dog_statsd",
            (DOG_STATSD,),
            config_type=lambda raw: _config(raw, dog=True),
            create=lambda config, ctx: UdpStatsdSink(config, dog=True),
        ),
    ]
