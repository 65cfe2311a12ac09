"""Applying xDS updates to the running server, and what ``/config_dump`` shows of them.

Theory of operation
-------------------
A transport (``grpc_mux.GrpcMux`` or ``file_source.FileSource``) hands ``XdsManager.apply``
the decoded resources of one response. ``apply`` validates the whole response first — a NACK
rejects it whole and keeps the last good config — then changes the server in
make-before-break order:

- **CDS** (state of the world): new and changed clusters *warm* (DNS clusters resolve once,
  EDS clusters wait for their first ``ClusterLoadAssignment`` up to ``initial_fetch_timeout``)
  while the cluster they replace keeps serving; clusters missing from the response are removed
  and their pools drain.
- **EDS**: endpoints replace a cluster's hosts, keeping the hosts (and pools) that stayed.
- **LDS** (state of the world): new and changed listeners warm until their routes arrive over
  RDS, then take over (see ``trioproxy.listener.manager``); unchanged listeners are not touched.
- **RDS**: a route configuration is built for every connection manager that uses it before any
  of them switches; the next request on every connection sees it.

Warming runs in tasks of the manager's nursery, so a transport is never blocked waiting for
a resource that it has yet to receive. After each update the manager recomputes which EDS and
RDS names are wanted and tells the transports (``Mux.interest_changed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs
import trio

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError
from trioproxy.http.rds import RouteHolder
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.store import NEVER_IMPORT, ImportMode
from trioproxy.upstream.config import ClusterConfig, assignment_endpoints
from trioproxy.xds import resources as R
from trioproxy.xds.sotw import Rejection

if TYPE_CHECKING:
    from trioproxy.context import BuildContext
    from trioproxy.listener.config import ListenerConfig
    from trioproxy.listener.manager import ListenerManager
    from trioproxy.upstream.cluster_manager import Cluster, ClusterManager

log = logging.getLogger(__name__)

DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0


class SubscriptionStats(StatBlock):
    """Envoy's per-subscription stats (``cluster_manager.cds.``, ``listener_manager.lds.`` …)."""

    import_mode: ClassVar[ImportMode] = NEVER_IMPORT  # every worker applies the same updates

    update_attempt: Counter
    update_success: Counter
    update_rejected: Counter
    update_failure: Counter
    update_empty: Counter
    init_fetch_timeout: Counter
    version: Gauge
    update_time: Gauge


class Mux(Protocol):
    """A transport carrying subscriptions (an ADS stream, one xDS stream, a watched file)."""

    def interest_changed(self, type_url: str) -> None: ...

    def rejection(self, type_url: str) -> Rejection | None: ...

    def received(self, type_url: str) -> bool:
        """Whether any response (accepted or not) arrived for ``type_url``."""
        ...


@attrs.define(eq=False)
class Dynamic:
    """One dynamic resource as ``/config_dump`` shows it."""

    version_info: str
    canonical: Mapping[str, Any]
    last_updated: float = attrs.field(factory=time.time)


@attrs.frozen
class ResourceError:
    """``UpdateFailureState`` in ``/config_dump``."""

    version_info: str
    details: str
    failed_configuration: Mapping[str, Any]
    at: float = attrs.field(factory=time.time)


@attrs.define(eq=False)
class RouteProvider:
    """One RDS route configuration, shared by the connection managers that name it."""

    name: str
    source: Mapping[str, Any]
    holders: list[RouteHolder] = attrs.field(factory=list)
    current: Dynamic | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class SecretProvider:
    """One SDS secret and the TLS contexts that use it (by listener key)."""

    name: str
    source: Mapping[str, Any]
    callbacks: dict[str, list[Callable[[Mapping[str, Any]], None]]] = attrs.field(factory=dict)
    current: Dynamic | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)


def check_secret(d: Mapping[str, Any], base_dir: str) -> None:
    """Load a secret's certificate into a scratch context: a bad one is rejected before any
    listener's context is touched."""
    import ssl

    from trioproxy.listener.tls import load_tls_certificate

    cert = d.get("tls_certificate")
    if not cert:
        raise ConfigError("only tls_certificate secrets are supported", path="tls_certificate")
    load_tls_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, base_dir, "tls_certificate")


def _version_hash(version: str) -> int:
    """Envoy's ``version`` gauge is a hash of ``version_info``; any stable 52-bit one will do."""
    return int.from_bytes(hashlib.sha256(version.encode()).digest()[:6], "big")


class XdsManager:
    def __init__(self, store: Store, cluster_manager: ClusterManager) -> None:
        self.store = store
        self.cluster_manager = cluster_manager
        self.listener_manager: ListenerManager | None = None
        self.ctx: BuildContext | None = None  # set by the server once built
        self.static_clusters: frozenset[str] = frozenset()
        self.static_listeners: frozenset[str] = frozenset()
        self.clusters: dict[str, Dynamic] = {}
        self.warming_clusters: dict[str, Dynamic] = {}
        self.listeners: dict[str, Dynamic] = {}
        self.warming_listeners: dict[str, Dynamic] = {}
        self.endpoints: dict[str, Dynamic] = {}
        self.routes: dict[str, RouteProvider] = {}
        self.versions: dict[str, str] = {}
        #: type URL → name → the last rejected update of that resource (``error_state``).
        self.errors: dict[str, dict[str, ResourceError]] = {R.CLUSTER: {}, R.LISTENER: {}}
        self.muxes: dict[str, Mux] = {}  # type URL → the transport it comes from
        self.route_muxes: dict[str, Mux] = {}  # RDS name → transport
        self.endpoint_muxes: dict[str, Mux] = {}  # EDS name → transport
        self.static_secrets: dict[str, Dynamic] = {}
        self.secrets: dict[str, SecretProvider] = {}
        self.secret_muxes: dict[str, Mux] = {}  # SDS name → transport
        self.base_dir = "."
        self._collect_key: str | None = None
        self._listener_secrets: dict[str, list[SecretProvider]] = {}
        self._pending_secrets: list[
            tuple[SecretProvider, str, Callable[[Mapping[str, Any]], None]]
        ] = []
        self._cla_events: dict[str, trio.Event] = {}
        self._listener_holders: dict[str, list[RouteHolder]] = {}
        self._collecting: list[RouteHolder] | None = None
        self._nursery: trio.Nursery | None = None
        self._cluster_tasks: dict[str, trio.CancelScope] = {}
        self.stats = {
            R.CLUSTER: SubscriptionStats(store.scope("cluster_manager.cds.")),
            R.LISTENER: SubscriptionStats(store.scope("listener_manager.lds.")),
        }
        self.resolve_mux: Any = None  # (config_source, type_url) → Mux, set by the server
        #: Bootstrap subscriptions (cds_config, lds_config) → their initial_fetch_timeout.
        self.initial: dict[str, float] = {}
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _initialized(self) -> bool:
        for type_url in self.initial:
            mux = self.muxes.get(type_url)
            if mux is None or not mux.received(type_url):
                return False
        return not self.warming_clusters and not self.warming_listeners

    async def wait_clusters_initialized(self) -> None:
        """Envoy starts LDS once the cluster manager has initialised: the bootstrap's CDS has
        answered once and what it brought has warmed (or its ``initial_fetch_timeout``
        passed). A file or gRPC source of its own for LDS waits here before its first
        fetch, so a listener naming a CDS cluster never meets an empty cluster manager. (Over
        one ADS stream the control plane orders CDS before LDS itself: XDS.md rule 8.)"""
        if R.CLUSTER not in self.initial:
            return
        timeout = self.initial[R.CLUSTER]
        with trio.move_on_after(timeout if timeout > 0 else float("inf")):
            while True:
                mux = self.muxes.get(R.CLUSTER)
                # (``versions``: applied, though the source has not acked it yet)
                answered = R.CLUSTER in self.versions or (
                    mux is not None and mux.received(R.CLUSTER)
                )
                if answered and not self.warming_clusters:
                    return
                await self._changed.wait()

    async def wait_initialized(self) -> None:
        """Envoy's init: the bootstrap's CDS and LDS have answered once and what they brought
        has warmed — or ``initial_fetch_timeout`` passed (counted in ``init_fetch_timeout``).
        A timeout of 0 waits forever."""
        if not self.initial:
            return
        timeouts = self.initial.values()
        timeout = float("inf") if min(timeouts) <= 0 else max(timeouts)  # 0: wait forever
        with trio.move_on_after(timeout) as scope:
            while not self._initialized():
                await self._changed.wait()
        if scope.cancelled_caught:
            for type_url in self.initial:
                mux = self.muxes.get(type_url)
                if mux is not None and not mux.received(type_url):
                    stats = self.stats.get(type_url)
                    if stats is not None:
                        stats.init_fetch_timeout.value += 1
            log.warning("xDS: initial fetch timed out after %.1f s; going live", timeout)

    # ------------------------------------------------------------------ subscriptions

    def _mux_for(self, source: Mapping[str, Any], type_url: str) -> Mux:
        if self.resolve_mux is None:
            raise ConfigError("no xDS transport is available")
        mux: Mux = self.resolve_mux(source, type_url)
        return mux

    @contextlib.contextmanager
    def collecting(self, key: str) -> Iterator[list[RouteHolder]]:
        """Record the route holders subscribed while building listener ``key``."""
        holders: list[RouteHolder] = []
        self._collecting = holders
        self._collect_key = key
        self._listener_secrets[key] = []
        try:
            yield holders
        finally:
            self._collecting = None
            self._collect_key = None

    def subscribe_routes(
        self, name: str, config_source: Mapping[str, Any], holder: RouteHolder
    ) -> None:
        if not name:
            raise ConfigError("route_config_name is required", path="route_config_name")
        provider = self.routes.get(name)
        if provider is None:
            mux = self._mux_for(config_source, R.ROUTE)
            provider = self.routes[name] = RouteProvider(name, config_source)
            self.route_muxes[name] = mux
        if provider.current is not None:
            holder.current = holder.build(provider.current.canonical)
        provider.holders.append(holder)
        if self._collecting is not None:
            self._collecting.append(holder)

    def wanted(self, type_url: str, mux: Mux) -> set[str]:
        """The names a named subscription (EDS, RDS) on ``mux`` should ask for now."""
        if type_url == R.ROUTE:
            return {n for n, m in self.route_muxes.items() if m is mux and n in self.routes}
        if type_url == R.ENDPOINT:
            return {n for n, m in self.endpoint_muxes.items() if m is mux}
        if type_url == R.SECRET:
            return {n for n, m in self.secret_muxes.items() if m is mux}
        return set()

    def _prune_routes(self) -> None:
        live = {h.rds_name for hs in self._listener_holders.values() for h in hs}
        for name in [n for n in self.routes if n not in live]:
            del self.routes[name]
            mux = self.route_muxes.pop(name, None)
            if mux is not None:
                mux.interest_changed(R.ROUTE)
        ids = {id(h) for hs in self._listener_holders.values() for h in hs}
        for provider in self.routes.values():
            provider.holders = [h for h in provider.holders if id(h) in ids]

    def register_static_listener(self, key: str, holders: list[RouteHolder]) -> None:
        """A bootstrap listener built under ``collecting(key)``; it is never removed."""
        self._listener_holders[key] = holders
        self.commit_secrets([key])

    # ------------------------------------------------------------------ secrets

    def add_static_secret(self, d: Mapping[str, Any], base_dir: str) -> None:
        name = str(d.get("name", ""))
        if not name:
            raise ConfigError("a secret needs a name", path="name")
        if name in self.static_secrets:
            raise ConfigError(f"duplicate static secret {name!r}", path="name")
        check_secret(d, base_dir)
        self.static_secrets[name] = Dynamic("", d)
        self.base_dir = base_dir

    def subscribe_secret(
        self,
        name: str,
        sds_config: Mapping[str, Any],
        on_update: Callable[[Mapping[str, Any]], None],
    ) -> None:
        if not name:
            raise ConfigError("an SDS secret needs a name", path="name")
        if not sds_config:
            static = self.static_secrets.get(name)
            if static is None:
                raise ConfigError(f"no static secret named {name!r}", path="name")
            on_update(static.canonical)
            return
        provider = self.secrets.get(name)
        if provider is None:
            mux = self._mux_for(sds_config, R.SECRET)
            provider = self.secrets[name] = SecretProvider(name, sds_config)
            self.secret_muxes[name] = mux
        if provider.current is not None:
            on_update(provider.current.canonical)
        key = self._collect_key
        if key is None:
            provider.callbacks.setdefault("", []).append(on_update)
        else:
            # Kept aside until the listener is accepted (``_commit_secrets``): a rejected
            # build must not rotate anything, and a rebuilt listener replaces its callbacks.
            self._pending_secrets.append((provider, key, on_update))
            self._listener_secrets.setdefault(key, []).append(provider)
        self.secret_muxes[name].interest_changed(R.SECRET)

    def commit_secrets(self, keys: Sequence[str]) -> None:
        """The listeners ``keys`` were accepted: their new TLS contexts now get rotations
        (replacing those of the versions they replace); other pending ones are dropped."""
        fresh: dict[tuple[int, str], list[Callable[[Mapping[str, Any]], None]]] = {}
        providers: dict[int, SecretProvider] = {}
        for provider, key, cb in self._pending_secrets:
            if key in keys:
                fresh.setdefault((id(provider), key), []).append(cb)
                providers[id(provider)] = provider
        for (pid, key), cbs in fresh.items():
            providers[pid].callbacks[key] = cbs
        self._pending_secrets.clear()

    def _prune_secrets(self) -> None:
        live = set(self._listener_holders) | {k for k, v in self._listener_secrets.items() if v}
        for name, provider in list(self.secrets.items()):
            for key in [k for k in provider.callbacks if k and k not in live]:
                del provider.callbacks[key]
            if not provider.callbacks:
                del self.secrets[name]
                mux = self.secret_muxes.pop(name, None)
                if mux is not None:
                    mux.interest_changed(R.SECRET)

    def _apply_secrets(self, version: str, items: Sequence[Mapping[str, Any]]) -> None:
        names = self._names(R.SECRET, items, "secret")
        staged = []
        for name, d in zip(names, items, strict=True):
            provider = self.secrets.get(name)
            if provider is None:
                continue
            try:
                check_secret(d, self.base_dir)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            staged.append((provider, d))
        for provider, d in staged:
            for callbacks in provider.callbacks.values():
                for cb in callbacks:
                    cb(d)
            provider.current = Dynamic(version, d)
            provider.ready.set()

    def notify_routes(self) -> None:
        for mux in set(self.route_muxes.values()):
            mux.interest_changed(R.ROUTE)

    # ------------------------------------------------------------------ apply

    async def apply(
        self, type_url: str, version: str, items: Sequence[Mapping[str, Any]], mux: Mux
    ) -> None:
        """Apply one accepted-or-rejected response; ``ConfigError`` means NACK."""
        stats = self.stats.get(type_url)
        if stats is not None:
            stats.update_attempt.value += 1
        try:
            if type_url == R.CLUSTER:
                self._apply_clusters(version, items, mux)
            elif type_url == R.LISTENER:
                self._apply_listeners(version, items)
            elif type_url == R.ROUTE:
                self._apply_routes(version, items)
            elif type_url == R.ENDPOINT:
                self._apply_endpoints(version, items)
            elif type_url == R.SECRET:
                self._apply_secrets(version, items)
            else:
                raise ConfigError(f"resource type {type_url} is not supported")
        except ConfigError:
            if stats is not None:
                stats.update_rejected.value += 1
            self._notify()
            raise
        self.versions[type_url] = version
        if stats is not None:
            stats.update_success.value += 1
            if not items:
                stats.update_empty.value += 1
            stats.version.value = _version_hash(version)
            stats.update_time.value = int(time.time() * 1000)
        self._notify()
        await trio.lowlevel.checkpoint()

    def reject(
        self,
        type_url: str,
        version: str,
        failed: Sequence[tuple[str, Mapping[str, Any], str]],
    ) -> None:
        """Count a response rejected before ``apply`` (a resource that does not decode or
        validate) and remember each failed resource for ``/config_dump``."""
        stats = self.stats.get(type_url)
        if stats is not None:
            stats.update_attempt.value += 1
            stats.update_rejected.value += 1
        errors = self.errors.get(type_url)
        if errors is not None:
            for name, d, details in failed:
                errors[name] = ResourceError(version, details, d)
        self._notify()

    @staticmethod
    def _names(type_url: str, items: Sequence[Mapping[str, Any]], what: str) -> list[str]:
        names = [R.resource_name(type_url, d) for d in items]
        seen: set[str] = set()
        for n in names:
            if not n:
                raise ConfigError(f"{what} without a name")
            if n in seen:
                raise ConfigError(f"duplicate {what} {n} found")
            seen.add(n)
        return names

    # ---- clusters

    def _apply_clusters(self, version: str, items: Sequence[Mapping[str, Any]], mux: Mux) -> None:
        names = self._names(R.CLUSTER, items, "cluster")
        configs: list[tuple[ClusterConfig, Mapping[str, Any]]] = []
        errors: list[str] = []
        for name, d in zip(names, items, strict=True):
            if name in self.static_clusters:
                errors.append(f"{name}: a static cluster cannot be updated by CDS")
                continue
            current = self.warming_clusters.get(name) or self.clusters.get(name)
            if current is not None and (current.canonical is d or current.canonical == d):
                continue  # unchanged (decoded dicts are cached by bytes: usually ``is``)
            try:
                configs.append((ClusterConfig.from_proto(d), d))
            except ConfigError as exc:
                errors.append(f"{name}: {exc}")
                self.errors[R.CLUSTER][name] = ResourceError(version, str(exc), d)
        if errors:
            raise ConfigError("Error adding/updating cluster(s) " + ", ".join(errors))
        for cfg, _ in configs:
            if cfg.type == "EDS":
                assert cfg.eds_config is not None
                self.endpoint_muxes.setdefault(
                    cfg.eds_service_name, self._mux_for(cfg.eds_config, R.ENDPOINT)
                )
        self.errors[R.CLUSTER].clear()
        keep = set(names)
        for name in [n for n in (*self.clusters, *self.warming_clusters) if n not in keep]:
            self._cancel_cluster_warming(name)
            self.clusters.pop(name, None)
            self.cluster_manager.remove(name)
        for cfg, d in configs:
            self._cancel_cluster_warming(cfg.name)
            entry = self.warming_clusters[cfg.name] = Dynamic(version, d)
            assert self._nursery is not None
            self._nursery.start_soon(self._warm_cluster, cfg, entry)
        eds_wanted = {c.eds_service_name for c, _ in configs if c.type == "EDS"}
        for name in keep:
            kept = self.warming_clusters.get(name) or self.clusters.get(name)
            if kept is not None and kept.canonical.get("type") == "EDS":
                eds = kept.canonical.get("eds_cluster_config") or {}
                eds_wanted.add(str(eds.get("service_name", "")) or name)
        for name in [n for n in self.endpoint_muxes if n not in eds_wanted]:
            del self.endpoint_muxes[name]
        for m in {*self.endpoint_muxes.values(), mux}:
            m.interest_changed(R.ENDPOINT)

    def _cancel_cluster_warming(self, name: str) -> None:
        self.warming_clusters.pop(name, None)
        scope = self._cluster_tasks.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def _warm_cluster(self, cfg: ClusterConfig, entry: Dynamic) -> None:
        with trio.CancelScope() as scope:
            self._cluster_tasks[cfg.name] = scope
            warm = self._eds_warm(cfg) if cfg.type == "EDS" else None
            await self.cluster_manager.add_or_update(cfg, warm=warm)
            if self.warming_clusters.get(cfg.name) is entry:
                del self.warming_clusters[cfg.name]
                entry.last_updated = time.time()
                self.clusters[cfg.name] = entry
            if self._cluster_tasks.get(cfg.name) is scope:
                del self._cluster_tasks[cfg.name]
        self._notify()

    def _eds_warm(self, cfg: ClusterConfig) -> Any:
        timeout = initial_fetch_timeout(cfg.eds_config or {})

        async def warm(cluster: Cluster) -> None:
            name = cfg.eds_service_name
            if name not in self.endpoints:
                event = self._cla_events.setdefault(name, trio.Event())
                with trio.move_on_after(timeout if timeout > 0 else float("inf")):
                    await event.wait()
            cla = self.endpoints.get(name)
            if cla is not None:
                cluster.assign(assignment_endpoints(cla.canonical))

        return warm

    # ---- endpoints

    def _apply_endpoints(self, version: str, items: Sequence[Mapping[str, Any]]) -> None:
        names = self._names(R.ENDPOINT, items, "ClusterLoadAssignment")
        parsed = {}
        for name, d in zip(names, items, strict=True):
            try:
                parsed[name] = assignment_endpoints(d)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        for name, d in zip(names, items, strict=True):
            self.endpoints[name] = Dynamic(version, d)
            for cluster in self.cluster_manager.clusters.values():
                if cluster.config.type == "EDS" and cluster.config.eds_service_name == name:
                    cluster.assign(parsed[name])
            event = self._cla_events.pop(name, None)
            if event is not None:
                event.set()

    # ---- listeners

    def _apply_listeners(self, version: str, items: Sequence[Mapping[str, Any]]) -> None:
        from trioproxy.listener.config import ListenerConfig

        lm = self.listener_manager
        ctx = self.ctx
        assert lm is not None and ctx is not None
        names = self._names(R.LISTENER, items, "listener")
        built: list[tuple[ListenerConfig, Mapping[str, Any], list[RouteHolder]]] = []
        errors: list[str] = []
        holders_before = dict(self._listener_holders)
        for name, d in zip(names, items, strict=True):
            if name in self.static_listeners:
                errors.append(f"{name}: a static listener cannot be updated by LDS")
                continue
            current = self.warming_listeners.get(name) or self.listeners.get(name)
            if current is not None and current.canonical == d:
                continue
            try:
                with self.collecting(name) as holders:
                    built.append((ListenerConfig.from_proto(d, ctx), d, holders))
            except ConfigError as exc:
                errors.append(f"{name}: {exc}")
                self.errors[R.LISTENER][name] = ResourceError(version, str(exc), d)
        addresses: dict[tuple[str, int], str] = {}
        for name, d in zip(names, items, strict=True):
            sa = (d.get("address") or {}).get("socket_address") or {}
            key = (str(sa.get("address", "")), int(sa.get("port_value", 0) or 0))
            if key[1] and key in addresses:
                errors.append(f"{name}: listener '{addresses[key]}' has the same address")
            addresses[key] = name
        if errors:
            self._listener_holders = holders_before
            for name in names:
                if name not in self._listener_holders:
                    self._listener_secrets.pop(name, None)
            self.commit_secrets([])
            self._prune_routes()
            self._prune_secrets()
            raise ConfigError("Error adding/updating listener(s) " + ", ".join(errors))
        self.errors[R.LISTENER].clear()
        keep = set(names)
        for name in [n for n in (*self.listeners, *self.warming_listeners) if n not in keep]:
            self.listeners.pop(name, None)
            self.warming_listeners.pop(name, None)
            self._listener_holders.pop(name, None)
            self._listener_secrets.pop(name, None)
            lm.remove(name)
        for cfg, d, holders in built:
            self._listener_holders[cfg.name] = holders
            entry = self.warming_listeners[cfg.name] = Dynamic(version, d)
            assert self._nursery is not None
            self._nursery.start_soon(self._warm_listener, cfg, entry, holders)
        self.commit_secrets([cfg.name for cfg, _, _ in built])
        self._prune_routes()
        self._prune_secrets()
        self.notify_routes()

    async def _warm_listener(
        self, cfg: ListenerConfig, entry: Dynamic, holders: list[RouteHolder]
    ) -> None:
        lm = self.listener_manager
        assert lm is not None

        secrets = list(self._listener_secrets.get(cfg.name, ()))

        async def warm() -> None:
            for secret in secrets:
                if secret.ready.is_set():
                    continue
                timeout = initial_fetch_timeout(secret.source)
                with trio.move_on_after(timeout if timeout > 0 else float("inf")):
                    await secret.ready.wait()
            for holder in holders:
                provider = self.routes.get(holder.rds_name)
                if provider is None or provider.ready.is_set():
                    continue
                timeout = initial_fetch_timeout(provider.source)
                with trio.move_on_after(timeout if timeout > 0 else float("inf")):
                    await provider.ready.wait()

        await lm.add_or_update(cfg, entry.version_info, warm)
        if self.warming_listeners.get(cfg.name) is entry:
            del self.warming_listeners[cfg.name]
            entry.last_updated = time.time()
            self.listeners[cfg.name] = entry
        self._notify()

    # ---- routes

    def _apply_routes(self, version: str, items: Sequence[Mapping[str, Any]]) -> None:
        names = self._names(R.ROUTE, items, "RouteConfiguration")
        staged = []
        for name, d in zip(names, items, strict=True):
            provider = self.routes.get(name)
            if provider is None:
                continue  # not (or no longer) subscribed
            try:
                staged.append((provider, d, [(h, h.build(d)) for h in provider.holders]))
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        for provider, d, built in staged:
            for holder, routes in built:
                holder.current = routes
            provider.current = Dynamic(version, d)
            provider.ready.set()


def initial_fetch_timeout(source: Mapping[str, Any]) -> float:
    try:
        value = duration(source.get("initial_fetch_timeout"), DEFAULT_INITIAL_FETCH_TIMEOUT)
    except ConfigError as exc:
        raise exc.at("initial_fetch_timeout") from None
    return DEFAULT_INITIAL_FETCH_TIMEOUT if value is None else value
