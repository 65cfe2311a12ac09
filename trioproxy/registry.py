"""The extension registry: which factory serves which Envoy extension name and type URL.

Built once at start-up from the pluggy hooks in ``hookspecs``; looked up while a config is
built, never per request.
"""

from __future__ import annotations

import importlib.metadata
import logging
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import attrs
import pluggy

from trioproxy import hookspecs
from trioproxy.errors import ConfigError

log = logging.getLogger(__name__)

C = TypeVar("C")

TYPED_STRUCT_URLS = (
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
)


def _identity(raw: Mapping[str, Any]) -> Any:
    return raw


@attrs.frozen
class Factory(Generic[C]):
    """What every factory shares: the Envoy names it serves and its config converter."""

    name: str
    type_urls: tuple[str, ...]
    config_type: Callable[[Mapping[str, Any]], C] = _identity
    per_route_config_type: Callable[[Mapping[str, Any]], Any] | None = None


@attrs.frozen
class HttpFilterFactory(Factory[Any]):
    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)
    terminal: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen
class NetworkFilterFactory(Factory[Any]):
    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)
    terminal: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen
class AccessLoggerFactory(Factory[Any]):
    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)


@attrs.frozen
class StatSinkFactory(Factory[Any]):
    """A stats sink (``create(config, BuildContext)`` returns a
    ``trioproxy.stats.flush.StatsSink``)."""

    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)


@attrs.frozen
class TracerFactory(Factory[Any]):
    """A tracing provider (``create(config, TracerContext)`` returns a
    ``trioproxy.tracing.Tracer``)."""

    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)


@attrs.frozen
class ListenerFilterFactory(Factory[Any]):
    """A TCP listener filter (``create`` returns a ``ListenerFilter``)."""

    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)


@attrs.frozen
class UdpListenerFilterFactory(Factory[Any]):
    """A UDP listener filter (``create`` returns a ``UdpListenerFilter``)."""

    create: Callable[[Any, Any], Any] = attrs.field(kw_only=True)


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type_urls(self) -> tuple[str, ...]: ...


F = TypeVar("F", bound=_Named)


class Kind(Generic[F]):
    """The factories of one kind, by name and by type URL."""

    def __init__(self, kind: str, factories: Iterable[F]) -> None:
        self.kind = kind
        self.by_name: dict[str, F] = {}
        self.by_type: dict[str, F] = {}
        for f in factories:
            if f.name in self.by_name:
                raise ConfigError(f"two {kind} factories are named {f.name!r}")
            self.by_name[f.name] = f
            for url in f.type_urls:
                if url in self.by_type:
                    raise ConfigError(f"two {kind} factories accept {url!r}")
                self.by_type[url] = f

    def lookup(self, entry: Mapping[str, Any]) -> tuple[F, Mapping[str, Any]]:
        """The factory for a config entry ``{name, typed_config}`` and its config dict.

        Raises ``ConfigError`` naming the extension when nothing serves it, as Envoy does
        ("Didn't find a registered implementation for 'x' with type URL: 'y'").
        """
        typed = entry.get("typed_config")
        name = str(entry.get("name", ""))
        if typed is not None:
            url = str(typed.get("@type", ""))
            config: Mapping[str, Any] = {k: v for k, v in typed.items() if k != "@type"}
            if url in TYPED_STRUCT_URLS:
                url = "type.googleapis.com/" + str(typed.get("type_url", "")).split("/")[-1]
                config = typed.get("value", {}) or {}
            factory = self.by_type.get(url)
            if factory is None:
                raise ConfigError(
                    f"Didn't find a registered implementation for '{name}' with type URL: "
                    f"'{url.removeprefix('type.googleapis.com/')}'",
                    path="typed_config",
                )
            return factory, config
        factory = self.by_name.get(name)
        if factory is None:
            raise ConfigError(
                f"Didn't find a registered implementation for name: '{name}'", path="name"
            )
        return factory, {}


@attrs.frozen
class Registry:
    http_filters: Kind[HttpFilterFactory]
    network_filters: Kind[NetworkFilterFactory]
    access_loggers: Kind[AccessLoggerFactory]
    listener_filters: Kind[ListenerFilterFactory]
    udp_listener_filters: Kind[UdpListenerFilterFactory]
    tracers: Kind[TracerFactory]
    stat_sinks: Kind[StatSinkFactory]
    plugin_manager: pluggy.PluginManager

    def opaque_types(self) -> frozenset[str]:
        """Every type URL some factory claims; the schema keeps those it does not know
        (a third-party filter's own config type) opaque for the factory to validate."""
        kinds: tuple[Kind[Any], ...] = (
            self.http_filters,
            self.network_filters,
            self.access_loggers,
            self.listener_filters,
            self.udp_listener_filters,
            self.tracers,
            self.stat_sinks,
        )
        return frozenset(url for kind in kinds for url in kind.by_type)


# Modules of the core that provide extensions through the same hooks as plugins.
CORE_PLUGINS = (
    "trioproxy.http.conn_manager_factory",
    "trioproxy.accesslog.loggers",
)


def extra_plugin_modules(registry: Registry) -> tuple[str, ...]:
    """The names of the plugins ``registry`` holds beyond what ``build_registry()`` loads by
    itself (the ``extra`` it was given), for a process that must build the same registry
    (a worker of ``--concurrency N``). Each must be an importable module."""
    pm = registry.plugin_manager
    default = {id(plugin) for plugin, _ in pm.list_plugin_distinfo()}
    names = []
    for name, plugin in pm.list_name_plugin():
        if name in CORE_PLUGINS or id(plugin) in default or plugin is None:
            continue
        module = getattr(plugin, "__name__", None)
        if not isinstance(plugin, types.ModuleType) or module is None:
            raise ConfigError(
                f"plugin {plugin!r} is not a module: worker processes cannot load it "
                "(register it through the 'trioproxy' entry-point group)"
            )
        names.append(module)
    return tuple(names)


def build_registry(extra: Iterable[object] = ()) -> Registry:
    """Load every plugin of the ``trioproxy`` entry-point group, plus ``extra`` objects."""
    pm = pluggy.PluginManager("trioproxy")
    pm.add_hookspecs(hookspecs)
    for modname in CORE_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    pm.load_setuptools_entrypoints("trioproxy")
    for obj in extra:
        pm.register(obj)
    _check_builtin_plugins(pm)

    def collect(results: list[list[Any]]) -> list[Any]:
        return [f for group in results for f in (group or [])]

    return Registry(
        http_filters=Kind("HTTP filter", collect(pm.hook.trioproxy_http_filters())),
        network_filters=Kind("network filter", collect(pm.hook.trioproxy_network_filters())),
        access_loggers=Kind("access logger", collect(pm.hook.trioproxy_access_loggers())),
        listener_filters=Kind("listener filter", collect(pm.hook.trioproxy_listener_filters())),
        udp_listener_filters=Kind(
            "UDP listener filter", collect(pm.hook.trioproxy_udp_listener_filters())
        ),
        tracers=Kind("tracer", collect(pm.hook.trioproxy_tracers())),
        stat_sinks=Kind("stats sink", collect(pm.hook.trioproxy_stat_sinks())),
        plugin_manager=pm,
    )


def _check_builtin_plugins(pm: pluggy.PluginManager) -> None:
    """Fail loudly when the package was installed without its entry points (e.g. a plain
    ``PYTHONPATH`` checkout): the router would otherwise be missing in confusing ways."""
    try:
        eps = importlib.metadata.entry_points(group="trioproxy")
    except Exception:  # pragma: no cover - metadata backends differ
        return
    if not any(ep.name == "router" for ep in eps):
        log.warning(
            "the built-in plugins' entry points are not installed; run `pip install -e .` "
            "so envoy.filters.http.router and friends can be found"
        )
