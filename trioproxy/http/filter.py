"""The HTTP filter API: what a filter author implements and what a filter sees.

Theory of operation
-------------------
A filter is an object built once per configuration by its factory (see ``hookspecs``). Its
methods are the phases of a stream; a filter overrides only the phases it cares about, and the
chain compiled for a connection manager calls only overridden phases, so a filter that looks
at request headers costs nothing per body chunk. Per-stream state belongs in
``stream.filter_state`` (the filter object is shared by every stream of its listener).

Request phases run in configuration order, response phases in reverse order. A phase pauses the
stream simply by awaiting (``await trio.sleep(delay)`` is a fault delay). To answer locally, a
request phase returns a ``LocalReply``; returning ``None`` continues the chain. Data phases
return the bytes to pass on (possibly changed); framing is the codec's job, never a filter's.

The last filter of a chain is *terminal* (the router): instead of phases it implements
``TerminalFilter.serve``, which gets the filtered request and returns a ``Response`` whose body
the connection manager streams back through the response phases.

A filter that raises fails only its own stream: the client gets a 500 (or a reset if the
response had started), the error is logged and counted, and the connection lives on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from trioproxy.http.headers import Headers
from trioproxy.http.stream_info import StreamInfo

if TYPE_CHECKING:
    import trio

    from trioproxy.stats import Scope, Store
    from trioproxy.upstream.cluster_manager import ClusterManager


@attrs.frozen
class LocalReply:
    """An answer made by the proxy itself (Envoy's ``sendLocalReply``).

    ``details`` is the response-code-details string; ``flag`` an Envoy response flag (``NR``,
    ``UF`` …) recorded in the access log.
    """

    status: int
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    details: str = ""
    flag: str = ""
    #: The ``grpc-status`` a gRPC request gets (its reply is made trailers-only: status 200,
    #: the body as ``grpc-message``); None: mapped from ``status`` as Envoy maps it.
    grpc_status: int | None = None


@attrs.define(eq=False)
class Response:
    """A response produced by a terminal filter.

    ``headers`` holds ``:status`` first. ``body`` yields chunks (``None`` when there is none,
    e.g. a HEAD request); ``trailers`` may be filled in by the producer before its body iterator
    finishes. The connection manager closes ``body`` when the stream ends early.
    """

    headers: Headers
    body: AsyncIterator[bytes] | None = None
    trailers: Headers | None = None
    #: Body bytes already in hand with the headers (sent in the same write); ``body`` yields
    #: the rest. A small response read in one go has ``initial_body`` and ``body is None``.
    initial_body: bytes = b""
    #: A ``101 Switching Protocols`` answer carries the upstream byte stream to splice with the
    #: downstream one (WebSocket): see ``Tunnel``.
    tunnel: Tunnel | None = None

    @property
    def status(self) -> int:
        return int(self.headers.get(":status") or 0)


@attrs.define(eq=False)
class Tunnel:
    """The upstream side of an upgraded connection: its stream, the bytes that came after the
    101 head, and ``close`` to call once the splice is over (returns nothing to the pool)."""

    stream: trio.abc.Stream
    initial: bytes
    close: Callable[[], None]


@attrs.frozen
class ConnectionInfo:
    """The downstream connection a stream arrived on."""

    remote_address: tuple[str, int]
    local_address: tuple[str, int]
    tls: bool = False
    sni: str = ""
    alpn: str = ""
    connection_id: int = 0
    peer_certificate: Mapping[str, Any] | None = None
    #: ``local_address`` is the original destination recovered by a listener filter
    #: (``original_dst``), not the address the connection was accepted on.
    local_address_restored: bool = False


class Cancellable(Protocol):
    """What ends a stream: a ``trio.CancelScope`` (HTTP/1.1), or an HTTP/2 stream's own
    handle (its worker's scope is shared by the streams it serves one after another)."""

    def cancel(self) -> None: ...

    @property
    def cancel_called(self) -> bool: ...


@attrs.define(eq=False)
class HttpStream:
    """One request/response exchange, as filters see it.

    ``route`` is the route entry chosen for the current request headers (``None`` until routed,
    or when nothing matched); a filter that changes headers the route depended on calls
    ``clear_route_cache()`` and the next reader re-routes.
    """

    request_headers: Headers
    info: StreamInfo
    connection: ConnectionInfo
    request_trailers: Headers | None = None
    response_headers: Headers | None = None
    response_trailers: Headers | None = None
    filter_state: dict[str, Any] = attrs.field(factory=dict)
    _route: Any = None
    _routed: bool = False
    _router: Callable[[Headers], Any] | None = None
    #: Cancelling it ends the stream (on HTTP/1.1, its connection too), as stream timeouts
    #: do; once the stream is over it does nothing.
    cancel_scope: Cancellable | None = None
    end_stream: bool = False  # the request has no body
    #: The stream's trace span (``trioproxy.tracing.Span``) when the connection manager traces.
    span: Any = None

    @property
    def route(self) -> Any:
        if not self._routed:
            self._routed = True
            self._route = self._router(self.request_headers) if self._router else None
        return self._route

    def clear_route_cache(self) -> None:
        self._routed = False
        self._route = None

    def lb_hash(self) -> int | None:
        """The route's ``hash_policy`` applied to this request (RING_HASH, MAGLEV)."""
        fn = getattr(self.route, "hash_fn", None)
        return fn(self) if fn is not None else None

    def per_filter_config(self, name: str) -> Any:
        """The most specific ``typed_per_filter_config`` for filter ``name`` (route, then
        virtual host, then route configuration), already converted by the filter's factory."""
        route = self.route
        if route is None:
            return None
        getter = getattr(route, "per_filter_config", None)
        return getter(name) if getter is not None else None


class HttpFilter:
    """Base class of HTTP filters. Override the phases you need; see the module docstring."""

    #: A filter with ``on_response_data`` that keeps ``Content-Length`` true on its own sets
    #: this: it never changes the body's length (it only looks, or paces), or it removes the
    #: header itself from the responses it changes (as Envoy's filters do). Otherwise the
    #: connection manager drops it whenever the filter is in the chain and frames the body
    #: itself (chunked, or DATA frames).
    keeps_response_length: bool = False

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        return None

    async def on_request_data(self, stream: HttpStream, data: bytes, end_stream: bool) -> bytes:
        return data

    async def on_request_trailers(self, stream: HttpStream, trailers: Headers) -> LocalReply | None:
        return None

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        return None

    async def on_response_data(self, stream: HttpStream, data: bytes, end_stream: bool) -> bytes:
        return data

    async def on_response_trailers(self, stream: HttpStream, trailers: Headers) -> None:
        return None

    def on_log(self, stream: HttpStream) -> None:
        """Called once when the stream is over, whatever happened (no awaiting here)."""
        return None


class TerminalFilter:
    """The last filter of a chain: turns the filtered request into a response."""

    async def serve(
        self, stream: HttpStream, body: AsyncIterator[bytes] | None
    ) -> Response | LocalReply:
        raise NotImplementedError


PHASES = (
    "on_request_headers",
    "on_request_data",
    "on_request_trailers",
    "on_response_headers",
    "on_response_data",
    "on_response_trailers",
    "on_log",
)


def implemented_phases(filt: object) -> frozenset[str]:
    """The phases ``filt`` overrides, i.e. the ones the compiled chain will call."""
    cls = type(filt)
    return frozenset(
        p for p in PHASES if getattr(cls, p, None) is not getattr(HttpFilter, p) and hasattr(cls, p)
    )


@attrs.frozen
class FactoryContext:
    """What a factory may use when it builds a filter from config."""

    stats: Scope  # the connection manager's scope, e.g. ``http.ingress_http.``
    cluster_manager: ClusterManager
    nursery: trio.Nursery | None = None  # for a filter's long-lived helpers (server lifetime)
    node: Mapping[str, Any] = attrs.field(factory=dict)
    #: The root of the stats, for a filter whose stats Envoy names outside the connection
    #: manager's scope (``<stat_prefix>.http_local_rate_limit.*``).
    store: Store | None = None
