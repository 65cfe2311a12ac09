"""The server: one trio run whose root nursery owns every long-lived service.

Start-up follows Envoy's order: build the registry of extensions, the cluster manager (its
initial DNS resolution is the first init target), then listeners, then the admin endpoint; the
server is LIVE once every listener is bound. ``Server.run`` takes ``task_status`` and reports
the bound listener ports, so tests and callers wait for readiness without sleeping.

Shutdown (SIGTERM, SIGINT, ``POST /quitquitquit``): every listener stops accepting and drains —
idle keep-alive connections close at once, busy ones finish their current request (HTTP/1.1
answers it with ``Connection: close``) — for at most ``drain_time`` seconds; then everything is
cancelled and ``run`` returns.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import trio

from trioproxy import runtime
from trioproxy.accesslog.loggers import flush_all, run_flusher
from trioproxy.background import Background
from trioproxy.config import LoadedConfig
from trioproxy.context import BuildContext
from trioproxy.errors import ConfigError
from trioproxy.listener.config import ListenerConfig
from trioproxy.listener.manager import AnyListener, ListenerManager
from trioproxy.registry import Registry, build_registry
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.flush import DEFAULT_FLUSH_INTERVAL, StatsFlusher
from trioproxy.stats.store import NEVER_IMPORT, ImportMode
from trioproxy.upstream.cluster_manager import ClusterManager
from trioproxy.upstream.config import ClusterConfig, duration
from trioproxy.watchdog import Watchdog
from trioproxy.xds import resources as xds_resources
from trioproxy.xds.manager import XdsManager
from trioproxy.xds.sources import Sources, make_opener

log = logging.getLogger(__name__)

# Bootstrap sections that are accepted but not acted on yet: say so rather than pretend.
_NOT_YET = (
    "overload_manager",
    "cluster_manager",
    "watchdogs",
    "stats_config",
)


class ServerStats(StatBlock):
    """``server.*``."""

    #: The server's state: the main process of --concurrency N sets its own.
    import_modes: ClassVar[dict[str, ImportMode]] = {
        name: NEVER_IMPORT
        for name in (
            "live",
            "uptime",
            "concurrency",
            "state",
            "version",
            "hot_restart_epoch",
            "days_until_first_cert_expiring",
        )
    }

    live: Gauge
    uptime: Gauge
    concurrency: Gauge
    state: Gauge
    total_connections: Gauge
    version: Gauge
    memory_allocated: Gauge
    memory_physical_size: Gauge
    hot_restart_epoch: Gauge
    days_until_first_cert_expiring: Gauge
    envoy_bug_failures: Counter
    debug_assertion_failures: Counter
    dynamic_unknown_fields: Counter
    static_unknown_fields: Counter


@attrs.frozen
class Options:
    """Command-line options that shape the server (Envoy's names)."""

    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""
    concurrency: int = 1
    drain_time: float = 5.0
    #: Idle HTTP/1.1 connections park after this many seconds (0: never; listener.parking).
    park_after: float = 1.0
    h1_codec: str | None = None
    command_line: tuple[str, ...] = ()
    config_path: str = ""
    # Set by the main process of ``--concurrency N`` for each worker (trioproxy.workers):
    worker_index: int = 0  # listener.*.worker_<n>.* stats
    reuse_port: bool = False  # listeners bound with SO_REUSEPORT, beside the other workers'
    serve_admin: bool = True  # False: the main process serves the bootstrap's admin
    static_ports: tuple[int, ...] = ()  # ports chosen for static listeners configured on port 0


@attrs.frozen
class Built:
    """Everything built from one config snapshot, before any socket is bound."""

    registry: Registry
    store: Store
    cluster_manager: ClusterManager
    listeners: tuple[ListenerConfig, ...]
    node: Mapping[str, Any]
    admin_address: tuple[str, int] | None
    xds: XdsManager
    sources: Sources
    ctx: BuildContext
    background: Background
    stats_flusher: StatsFlusher
    runtime: runtime.Runtime


def _node(loaded: LoadedConfig, options: Options) -> dict[str, Any]:
    node = dict(loaded.canonical.get("node", {}))
    if options.service_cluster:
        node["cluster"] = options.service_cluster
    if options.service_node:
        node["id"] = options.service_node
    if options.service_zone:
        node.setdefault("locality", {})["zone"] = options.service_zone
    return node


def build(
    loaded: LoadedConfig,
    options: Options,
    store: Store | None = None,
    registry: Registry | None = None,
) -> Built:
    """Turn a loaded config into cluster manager and listener objects (no I/O).

    Raises ``ConfigError`` located in the source file; this is also ``--mode validate``."""
    boot = loaded.canonical
    store = store or Store()
    for name in _NOT_YET:
        if name in boot:
            log.warning("bootstrap field %r is not implemented yet and is ignored", name)
    static = boot.get("static_resources", {})
    registry = registry or build_registry()
    cluster_configs: list[ClusterConfig] = []
    names: set[str] = set()
    for i, raw in enumerate(static.get("clusters", [])):
        try:
            cfg = ClusterConfig.from_proto(raw)
        except ConfigError as exc:
            raise loaded.locate(exc.at(f"static_resources.clusters[{i}]")) from None
        if cfg.name in names:
            raise loaded.locate(
                ConfigError(
                    f"cluster manager: duplicate cluster '{cfg.name}'",
                    path=f"static_resources.clusters[{i}].name",
                )
            )
        names.add(cfg.name)
        cluster_configs.append(cfg)
    cm = ClusterManager(cluster_configs, store)
    node = _node(loaded, options)
    base_dir = os.path.dirname(os.path.abspath(loaded.source)) if loaded.source else "."
    xds = XdsManager(store, cm)
    xds.static_clusters = frozenset(names)
    for i, raw in enumerate(static.get("secrets", [])):
        try:
            xds.add_static_secret(raw, base_dir)
        except ConfigError as exc:
            raise loaded.locate(exc.at(f"static_resources.secrets[{i}]")) from None
    sources = Sources(
        xds,
        node,
        store,
        make_opener(cm),
        static_clusters=xds.static_clusters,
        base_dir=base_dir,
        opaque_types=tuple(registry.opaque_types()),
    )
    dynamic = boot.get("dynamic_resources", {})
    if "ads_config" in dynamic:
        try:
            sources.configure_ads(dynamic["ads_config"])
        except ConfigError as exc:
            raise loaded.locate(exc.at("dynamic_resources")) from None
    background = Background()
    try:
        rt = runtime.Runtime.from_bootstrap(
            boot.get("layered_runtime"), store, str(node.get("cluster", ""))
        )
    except ConfigError as exc:
        raise loaded.locate(exc) from None
    background.start_soon(rt.watch)
    bootstrap_tracing = (boot.get("tracing") or {}).get("http")
    ctx = BuildContext(
        background=background,
        bootstrap_tracing=bootstrap_tracing,
        registry=registry,
        store=store,
        cluster_manager=cm,
        node=node,
        service_cluster=str(node.get("cluster", "")),
        service_node=str(node.get("id", "")),
        base_dir=base_dir,
        h1_codec=options.h1_codec,
        rds=xds,
        secrets=xds,
        worker_index=options.worker_index,
    )
    listeners: list[ListenerConfig] = []
    seen: dict[tuple[str, int], int] = {}
    for i, raw in enumerate(static.get("listeners", [])):
        key = f"static:{raw.get('name') or i}"
        try:
            with xds.collecting(key) as holders:
                lc = ListenerConfig.from_proto(raw, ctx)
        except ConfigError as exc:
            raise loaded.locate(exc.at(f"static_resources.listeners[{i}]")) from None
        xds.register_static_listener(key, holders)
        if lc.address in seen and lc.address[1] != 0:
            raise loaded.locate(
                ConfigError(
                    f"error adding listener '{lc.address[0]}:{lc.address[1]}': listener "
                    f"'{lc.name}' has duplicate address",
                    path=f"static_resources.listeners[{i}].address",
                )
            )
        seen[lc.address] = i
        listeners.append(lc)
    xds.static_listeners = frozenset(lc.name for lc in listeners)
    for key, type_url in (
        ("cds_config", xds_resources.CLUSTER),
        ("lds_config", xds_resources.LISTENER),
    ):
        if key in dynamic:
            try:
                sources.subscribe(dynamic[key], type_url, f"dynamic_resources.{key}")
            except ConfigError as exc:
                raise loaded.locate(exc) from None
    admin_address = None
    admin = boot.get("admin")
    if admin and "address" in admin:
        sa = admin["address"].get("socket_address", {})
        admin_address = (str(sa.get("address", "127.0.0.1")), int(sa.get("port_value", 0)))
    flusher = StatsFlusher(store, _stat_sinks(boot, ctx, loaded), _flush_interval(boot, loaded))
    background.start_soon(flusher.run)
    return Built(
        registry,
        store,
        cm,
        tuple(listeners),
        node,
        admin_address,
        xds,
        sources,
        ctx,
        background,
        flusher,
        rt,
    )


def _flush_interval(boot: Mapping[str, Any], loaded: LoadedConfig) -> float:
    if "stats_flush_interval" not in boot:
        return DEFAULT_FLUSH_INTERVAL
    try:
        interval = duration(boot["stats_flush_interval"], "stats_flush_interval")
    except ConfigError as exc:
        raise loaded.locate(exc) from None
    if not 0.001 <= interval <= 300:
        raise loaded.locate(
            ConfigError("value must be inside range [1ms, 300s]", path="stats_flush_interval")
        )
    return interval


def _stat_sinks(boot: Mapping[str, Any], ctx: BuildContext, loaded: LoadedConfig) -> list[Any]:
    sinks = []
    for i, entry in enumerate(boot.get("stats_sinks", ())):
        try:
            factory, raw = ctx.registry.stat_sinks.lookup(entry)
            try:
                sinks.append(factory.create(factory.config_type(raw), ctx))
            except ConfigError as exc:
                raise exc.at("typed_config") from None
        except ConfigError as exc:
            raise loaded.locate(exc.at(f"stats_sinks[{i}]")) from None
    return sinks


async def shutdown_on_signal(
    request_shutdown: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``request_shutdown`` at the first SIGTERM or SIGINT (a server's, or the main
    process's of ``--concurrency N``). Started (``nursery.start``) once the handlers are
    installed: a signal from then on drains instead of killing the process."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            request_shutdown()
            return


class Server:
    """A running proxy. ``state`` follows Envoy's server states."""

    def __init__(
        self, loaded: LoadedConfig, options: Options, registry: Registry | None = None
    ) -> None:
        self.loaded = loaded
        self.options = options
        self.store = Store()
        self.built = build(loaded, options, self.store, registry)
        self.stats = ServerStats(self.store.scope("server."))
        self.listener_manager = ListenerManager(
            self.store,
            options.drain_time,
            reuse_port=options.reuse_port,
            park_after=options.park_after,
        )
        self.state = "PRE_INITIALIZING"
        self.started_wall = time.time()
        self.loaded_at = time.time()
        self.healthcheck_failed = False
        self.admin_port: int | None = None
        self._shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def cluster_manager(self) -> ClusterManager:
        return self.built.cluster_manager

    @property
    def listeners(self) -> list[AnyListener]:
        """The accepting listeners (static first, then dynamic ones in arrival order)."""
        return self.listener_manager.listeners()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def run(
        self, *, task_status: trio.TaskStatus[Sequence[int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        built = self.built
        self.stats.concurrency.set(self.options.concurrency)
        self.stats.version.set(0)
        self.stats.hot_restart_epoch.set(0)
        runtime.install(built.runtime)  # what routes and filters read at request time
        try:
            await self._run(task_status)
        finally:
            if runtime.current() is built.runtime:
                runtime.install(runtime.Runtime([]))
            with trio.CancelScope(shield=True):
                await built.cluster_manager.aclose()
                flush_all()

    async def _run(self, task_status: trio.TaskStatus[Sequence[int]]) -> None:
        built = self.built
        async with trio.open_nursery() as root:
            self._nursery = root
            self.state = "INITIALIZING"
            self.stats.state.set(2)
            await root.start(Watchdog().run)
            await root.start(built.cluster_manager.run)
            await root.start(built.background.run)
            if built.admin_address is not None and self.options.serve_admin:
                from trioproxy.admin.server import serve_admin
                from trioproxy.admin_backend import ServerAdminBackend

                host, port = built.admin_address
                self.admin_port = await root.start(
                    serve_admin, ServerAdminBackend(self), host, port
                )
            # before any listener accepts: a SIGTERM from then on drains, never kills
            await root.start(shutdown_on_signal, self.request_shutdown)
            await root.start(self.listener_manager.run)
            ports = await self.listener_manager.add_static(
                built.listeners, self.options.static_ports
            )
            built.xds.ctx = built.ctx
            built.xds.listener_manager = self.listener_manager
            await root.start(built.xds.run)
            await root.start(built.sources.run)
            root.start_soon(self._housekeeping)
            await root.start(run_flusher)
            task_status.started(ports)
            # Static listeners already accept (Envoy waits for init before starting any);
            # the server is LIVE — /ready answers 200 — once xDS has initialised. A shutdown
            # asked before then (a control plane that never answers) drains at once.
            async with trio.open_nursery() as initializing:
                initializing.start_soon(self._live_when_initialized)
                await self._shutdown.wait()
                initializing.cancel_scope.cancel()
            await self._drain()
            root.cancel_scope.cancel()

    async def _live_when_initialized(self) -> None:
        await self.built.xds.wait_initialized()
        self.state = "LIVE"
        self.stats.state.set(0)
        self.stats.live.set(1)

    async def _drain(self) -> None:
        self.state = "DRAINING"
        self.stats.state.set(1)
        self.stats.live.set(0)
        log.info("draining listeners for up to %.1f s", self.options.drain_time)
        await self.listener_manager.drain_all(self.options.drain_time)

    async def _housekeeping(self) -> None:
        """Once a second: uptime and the connection gauge."""
        while True:
            self.stats.uptime.set(int(time.time() - self.started_wall))
            self.stats.total_connections.set(sum(lst.active for lst in self.listeners))
            await trio.sleep(1.0)
