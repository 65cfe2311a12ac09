"""Config sources: which transport serves a subscription, from the bootstrap's words.

``Sources.resolve(config_source, type_url)`` maps Envoy's ``ConfigSource`` to a transport,
creating it on first use:

- ``ads: {}`` → the one ADS stream of ``dynamic_resources.ads_config``;
- ``api_config_source`` (``api_type: GRPC``, ``envoy_grpc.cluster_name``) → a stream of that
  type's own service to that cluster (one per cluster and type, as Envoy opens them);
- ``path_config_source`` / ``path`` → a watched file.

Anything else (REST, delta xDS, ``google_grpc``) is refused with a ``ConfigError`` naming the
field. The gRPC cluster must be a static cluster, as in Envoy. Transports created before the
server runs are started by ``run``; later ones start at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import trio

from trioproxy.errors import ConfigError
from trioproxy.stats import Store
from trioproxy.xds import resources as R
from trioproxy.xds.file_source import FileSource
from trioproxy.xds.grpc_mux import GrpcMux, Opener
from trioproxy.xds.manager import Mux, XdsManager, initial_fetch_timeout

_GRPC_TYPES = ("GRPC", "AGGREGATED_GRPC")


class Sources:
    def __init__(
        self,
        manager: XdsManager,
        node: Mapping[str, Any],
        store: Store,
        opener: Opener,
        *,
        static_clusters: frozenset[str],
        base_dir: str = ".",
        opaque_types: tuple[str, ...] = (),
    ) -> None:
        self.manager = manager
        self.node = node
        self.store = store
        self.opener = opener
        self.static_clusters = static_clusters
        self.base_dir = base_dir
        self.decoder = R.Decoder(opaque_types)
        self.opaque_types = opaque_types
        self.ads: GrpcMux | None = None
        self._transports: dict[tuple[str, str], GrpcMux | FileSource] = {}
        self._nursery: trio.Nursery | None = None
        manager.resolve_mux = self.resolve

    def _grpc_cluster(self, api: Mapping[str, Any], path: str) -> str:
        api_type = api.get("api_type", "")
        if api_type not in _GRPC_TYPES:
            raise ConfigError(
                f"api_type {api_type or 'REST (unset)'} is not supported: use GRPC",
                path=f"{path}.api_type",
            )
        services = api.get("grpc_services") or []
        if len(services) != 1:
            raise ConfigError("exactly one grpc_services entry is needed", path=f"{path}")
        if "envoy_grpc" not in services[0]:
            raise ConfigError("only envoy_grpc is supported", path=f"{path}.grpc_services[0]")
        cluster = str(services[0]["envoy_grpc"].get("cluster_name", ""))
        if cluster not in self.static_clusters:
            raise ConfigError(
                f"envoy_grpc cluster '{cluster}' must be a statically defined cluster",
                path=f"{path}.grpc_services[0].envoy_grpc.cluster_name",
            )
        return cluster

    def configure_ads(self, ads_config: Mapping[str, Any]) -> None:
        cluster = self._grpc_cluster(ads_config, "ads_config")
        self.ads = GrpcMux(
            self.manager,
            self.decoder,
            self.node,
            cluster,
            opener=self.opener,
            store=self.store,
            node_on_first_only=bool(ads_config.get("set_node_on_first_message_only", False)),
        )
        self._start(("ads", ""), self.ads)

    def resolve(self, source: Mapping[str, Any], type_url: str) -> Mux:
        if "ads" in source:
            if self.ads is None:
                raise ConfigError(
                    "an 'ads' config source needs dynamic_resources.ads_config", path="ads"
                )
            self.ads.state(type_url)
            return self.ads
        if "api_config_source" in source:
            api = source["api_config_source"]
            cluster = self._grpc_cluster(api, "api_config_source")
            key = (cluster, type_url)
            mux = self._transports.get(key)
            if mux is None:
                grpc = GrpcMux(
                    self.manager,
                    self.decoder,
                    self.node,
                    cluster,
                    opener=self.opener,
                    store=self.store,
                    type_url=type_url,
                    node_on_first_only=bool(api.get("set_node_on_first_message_only", False)),
                )
                grpc.state(type_url)
                self._start(key, grpc)
                mux = grpc
            return mux
        path = source.get("path") or (source.get("path_config_source") or {}).get("path")
        if path:
            path = os.path.join(self.base_dir, str(path))
            key = (path, type_url)
            mux = self._transports.get(key)
            if mux is None:
                mux = FileSource(self.manager, path, type_url, opaque_types=self.opaque_types)
                self._start(key, mux)
            return mux
        which = next(iter(source), "")
        raise ConfigError(
            f"config source {which!r} is not supported" if which else "empty config source",
            path=which,
        )

    def _start(self, key: tuple[str, str], mux: GrpcMux | FileSource) -> None:
        self._transports[key] = mux
        if self._nursery is not None:
            self._nursery.start_soon(mux.run)

    def subscribe(self, source: Mapping[str, Any], type_url: str, path: str) -> None:
        """A wildcard subscription named in the bootstrap (``cds_config``, ``lds_config``)."""
        try:
            mux = self.resolve(source, type_url)
        except ConfigError as exc:
            raise exc.at(path) from None
        self.manager.muxes[type_url] = mux
        try:
            self.manager.initial[type_url] = initial_fetch_timeout(source)
        except ConfigError as exc:
            raise exc.at(path) from None
        mux.interest_changed(type_url)

    def rejection(self, type_url: str) -> Any:
        mux = self.manager.muxes.get(type_url)
        return mux.rejection(type_url) if mux is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for mux in self._transports.values():
                nursery.start_soon(mux.run)
            task_status.started()
            await trio.sleep_forever()


def make_opener(cluster_manager: Any) -> Opener:
    from trioproxy.xds.grpc_stream import open_stream

    def opener(cluster: str, method: str) -> Any:
        return open_stream(cluster_manager, cluster, method)

    return opener


OpenerFactory = Callable[[Any], Opener]
