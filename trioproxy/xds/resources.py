"""Resource types, and protobuf ↔ canonical dict conversion through the private pool.

A resource arrives as a ``google.protobuf.Any``; ``Decoder.decode`` parses it with a message
class from the Envoy v3 descriptor pool, turns it into proto-JSON with proto field names, and
validates it with ``trioproxy.config.schema.canonicalize`` — the same walk a YAML bootstrap
takes, so a pushed cluster is checked exactly like a static one. Decoded resources are cached by
their raw bytes: a state-of-the-world resend of 1,000 clusters with one change costs one decode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError, Message

from trioproxy.config.descriptors import pool
from trioproxy.config.schema import canonicalize
from trioproxy.errors import ConfigError

PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Make-before-break: the order in which a server applies updates and subscribes.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: gRPC method of the non-aggregated service for each type, and of ADS.
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
METHODS = {
    CLUSTER: "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
    LISTENER: "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
    ROUTE: "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
    ENDPOINT: "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
    SECRET: "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
}

#: Short names used in stats (``cluster_manager.cds.``, ``listener_manager.lds.`` …).
SHORT = {CLUSTER: "cds", LISTENER: "lds", ROUTE: "rds", ENDPOINT: "eds", SECRET: "sds"}

_classes: dict[str, type[Message]] = {}


def message_class(full_name: str) -> type[Message]:
    cls = _classes.get(full_name)
    if cls is None:
        cls = _classes[full_name] = message_factory.GetMessageClass(
            pool().FindMessageTypeByName(full_name)
        )
    return cls


def type_name(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def resource_name(type_url: str, d: Mapping[str, Any]) -> str:
    """The name a resource is known by (``cluster_name`` for endpoints)."""
    if type_url == ENDPOINT:
        return str(d.get("cluster_name", ""))
    return str(d.get("name", ""))


def to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, descriptor_pool=pool()
    )
    return out


def from_dict(full_name: str, d: Mapping[str, Any]) -> Message:
    msg = message_class(full_name)()
    json_format.ParseDict(d, msg, descriptor_pool=pool())
    return msg


class Decoder:
    """Decodes ``Any`` resources to canonical dicts, caching by (type URL, bytes)."""

    def __init__(self, opaque_types: Collection[str] = (), cache_size: int = 20_000) -> None:
        self.opaque_types = opaque_types
        self._cache: dict[tuple[str, bytes], dict[str, Any]] = {}
        self._cache_size = cache_size

    def decode(self, type_url: str, value: bytes) -> dict[str, Any]:
        """The canonical dict of one resource; ``ConfigError`` when it is not valid."""
        key = (type_url, value)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        name = type_name(type_url)
        try:
            msg = message_class(name)()
        except KeyError:
            raise ConfigError(f"unknown resource type {type_url!r}") from None
        try:
            msg.ParseFromString(value)
            raw = to_dict(msg)
        except (DecodeError, TypeError, KeyError) as exc:
            raise ConfigError(f"cannot decode {name}: {exc}") from None
        out = canonicalize(name, raw, opaque_types=self.opaque_types)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = out
        return out
