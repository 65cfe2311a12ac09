"""The plugin API of trioproxy.

Every extension — built-in ones in ``plugins/`` included — is a module or object registered
with pluggy through the ``trioproxy`` entry-point group::

    [project.entry-points.trioproxy]
    my_filter = "my_package.filter"

pluggy is used at start-up only: the hooks below are called once, when the registry is built,
and each returns *factories*. No hook is ever called per connection or per request.

A factory names the Envoy extension it serves (``name``, e.g. ``envoy.filters.http.fault``) and
the type URLs of the configs it accepts (``type_urls``). A config entry in Envoy's YAML picks
its factory by the ``@type`` of its ``typed_config`` (for ``xds.type.v3.TypedStruct`` and
``udpa.type.v1.TypedStruct``, by the ``type_url`` inside), or by its ``name`` when it has no
``typed_config``. ``config_type`` converts the canonical proto-JSON dict of the config into an
immutable object and raises ``trioproxy.errors.ConfigError`` on bad input.

Every hook collects a list of lists: all implementations are called (no ``firstresult``).
Two factories claiming the same name or type URL is a start-up error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from trioproxy.registry import (
        AccessLoggerFactory,
        HttpFilterFactory,
        ListenerFilterFactory,
        NetworkFilterFactory,
        StatSinkFactory,
        TracerFactory,
        UdpListenerFilterFactory,
    )

hookspec = pluggy.HookspecMarker("trioproxy")
hookimpl = pluggy.HookimplMarker("trioproxy")


# -------------------------------------------------------------------------------------------
# HTTP filters
# -------------------------------------------------------------------------------------------


@hookspec
def trioproxy_http_filters() -> list[HttpFilterFactory]:
    """Return the HTTP filter factories this plugin provides.

    Called once at start-up. Each ``HttpFilterFactory.create(config, context)`` is called once
    per connection manager that lists the filter (and again when its config changes), never per
    request; the object it returns is an ``trioproxy.http.filter.HttpFilter`` (or a
    ``TerminalFilter`` when ``terminal=True``).
    """


# -------------------------------------------------------------------------------------------
# Network (L4) filters
# -------------------------------------------------------------------------------------------


@hookspec
def trioproxy_network_filters() -> list[NetworkFilterFactory]:
    """Return the network filter factories this plugin provides.

    A non-terminal network filter sees each new connection before the terminal one and may
    refuse it; the terminal filter (``http_connection_manager``, ``tcp_proxy``) owns the
    connection's byte stream until it closes.
    """


# -------------------------------------------------------------------------------------------
# Listener filters
# -------------------------------------------------------------------------------------------


@hookspec
def trioproxy_listener_filters() -> list[ListenerFilterFactory]:
    """Return TCP listener filter factories (``envoy.filters.listener.original_dst`` …).

    ``create(config, context)`` is called once per listener that lists the filter; the
    ``trioproxy.listener.filter.ListenerFilter`` it returns sees every accepted connection
    before the filter chain is chosen, and may amend what the match looks at.
    """


@hookspec
def trioproxy_udp_listener_filters() -> list[UdpListenerFilterFactory]:
    """Return UDP listener filter factories (``envoy.filters.udp_listener.udp_proxy``).

    The ``trioproxy.listener.filter.UdpListenerFilter`` it returns owns the listener's socket
    for the listener's life.
    """


# -------------------------------------------------------------------------------------------
# Tracers
# -------------------------------------------------------------------------------------------


@hookspec
def trioproxy_tracers() -> list[TracerFactory]:
    """Return tracing providers (``envoy.tracers.zipkin``, ``envoy.tracers.opentelemetry`` …).

    ``create(config, context)`` gets a ``trioproxy.tracing.TracerContext`` and returns a
    ``trioproxy.tracing.Tracer``; it is called for every connection manager whose
    ``tracing.provider`` names it, so a provider should share one tracer (and one reporter)
    between equal configs, as Envoy does.
    """


@hookspec
def trioproxy_stat_sinks() -> list[StatSinkFactory]:
    """Return stats sinks (``envoy.stat_sinks.statsd``, ``envoy.stat_sinks.dog_statsd`` …).

    ``create(config, context)`` is called once per bootstrap ``stats_sinks`` entry; the
    ``trioproxy.stats.flush.StatsSink`` it returns gets a snapshot every
    ``stats_flush_interval``.
    """


# -------------------------------------------------------------------------------------------
# Access loggers
# -------------------------------------------------------------------------------------------


@hookspec
def trioproxy_access_loggers() -> list[AccessLoggerFactory]:
    """Return access logger factories (``envoy.access_loggers.stdout``, ``file`` …).

    The logger's ``log(info)`` is called once per stream or TCP session, after it ends, with a
    ``trioproxy.http.stream_info.StreamInfo``; it must not block (buffer and flush instead).
    """
