"""Where a connection manager's routes come from: inline ``route_config`` or RDS.

A ``RouteHolder`` belongs to one connection manager. ``current`` is read once per request, so
a route configuration pushed by RDS applies to the next request on every existing connection,
as in Envoy; a request already routed keeps the route it got. With RDS, ``current`` is ``None``
until the first configuration arrives (a listener stays warming meanwhile; if
``initial_fetch_timeout`` passes first, requests get 404 NR).

``build`` converts a canonical ``RouteConfiguration`` dict with this connection manager's
per-filter config converters; an RDS update is built for every holder before any is changed,
so one that fails for any of them is NACKed whole.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from trioproxy.http.headers import Headers
from trioproxy.http.route_table import RouteConfiguration

_getrandbits = random.getrandbits


@attrs.define(eq=False)
class RouteHolder:
    build: Callable[[Mapping[str, Any]], RouteConfiguration]
    current: RouteConfiguration | None = None
    #: ``route_config_name`` under RDS, "" for an inline route_config.
    rds_name: str = ""

    def route(self, headers: Headers) -> Any:
        """The route for a request under the current configuration (``None`` before the
        first one arrives, or when nothing matches); the random value picks among weighted
        clusters and runtime fractions."""
        current = self.current
        return None if current is None else current.route(headers, _getrandbits(63))


class RdsSubscriber(Protocol):
    """What the connection manager's builder needs from the xDS side (``XdsManager``)."""

    def subscribe_routes(
        self, name: str, config_source: Mapping[str, Any], holder: RouteHolder
    ) -> None:
        """Fill ``holder.current`` now if ``name`` is known, and on every update; raise
        ``ConfigError`` when the config source cannot be used."""
        ...
