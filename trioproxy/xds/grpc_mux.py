"""An xDS stream over gRPC: ADS (every type on one stream) or one type's own service.

Theory of operation
-------------------
``GrpcMux.run`` keeps one bidirectional stream open to the control plane's cluster,
reconnecting with jittered exponential back-off (0.5 s doubling to 30 s, reset once a response
arrives). On every (re)connection it subscribes to each type in make-before-break order
(CDS, EDS, LDS, RDS) with the last accepted version and no nonce; then it answers every
response with an ACK or a NACK (``sotw.TypeState``) after ``XdsManager.apply`` has accepted or
rejected it, and sends a new request whenever the names a type needs change
(``interest_changed``). After a NACK it sends nothing more for that type until the next
response: some servers answer every request with the same snapshot, and a NACK loop burns CPU.

The stream itself comes from ``opener(cluster_name, method)``, an async context manager
yielding a ``MessageStream`` (``trioproxy.xds.grpc_stream`` on h2).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol

import trio

from trioproxy.errors import ConfigError
from trioproxy.stats import Counter, Gauge, StatBlock, Store
from trioproxy.stats.store import NEVER_IMPORT, ImportMode
from trioproxy.xds import resources as R
from trioproxy.xds.manager import XdsManager
from trioproxy.xds.sotw import Rejection, TypeState, with_node

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
_REQUEST = "envoy.service.discovery.v3.DiscoveryRequest"
_RESPONSE = "envoy.service.discovery.v3.DiscoveryResponse"


class MessageStream(Protocol):
    async def send_message(self, data: bytes) -> None: ...

    async def receive_message(self) -> bytes | None:
        """The next message; ``None`` when the server ended the stream with status OK."""
        ...


Opener = Callable[[str, str], AbstractAsyncContextManager[MessageStream]]


class ControlPlaneStats(StatBlock):
    """``control_plane.*``."""

    import_modes: ClassVar[dict[str, ImportMode]] = {"connected_state": NEVER_IMPORT}

    connected_state: Gauge
    pending_requests: Gauge
    rate_limit_enforced: Counter


class GrpcMux:
    def __init__(
        self,
        manager: XdsManager,
        decoder: R.Decoder,
        node: Mapping[str, Any],
        cluster_name: str,
        *,
        opener: Opener,
        store: Store,
        type_url: str | None = None,
        node_on_first_only: bool = False,
    ) -> None:
        """``type_url=None`` makes an ADS stream; otherwise the stream of that type's service."""
        self.manager = manager
        self.decoder = decoder
        self.node = node
        self.cluster_name = cluster_name
        self.method = R.ADS_METHOD if type_url is None else R.METHODS[type_url]
        self.only_type = type_url
        self.opener = opener
        self.node_on_first_only = node_on_first_only
        self.stats = ControlPlaneStats(store.scope("control_plane."))
        self.states: dict[str, TypeState] = {}
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._first = True
        self.connected = False

    def __repr__(self) -> str:
        return f"<GrpcMux {self.method} via {self.cluster_name}>"

    # ------------------------------------------------------------------ the Mux protocol

    def state(self, type_url: str) -> TypeState:
        st = self.states.get(type_url)
        if st is None:
            if self.only_type is not None and type_url != self.only_type:
                raise ConfigError(f"{self.method} cannot carry {type_url}")
            wildcard = type_url in (R.CLUSTER, R.LISTENER)
            st = self.states[type_url] = TypeState(type_url, wildcard)
        return st

    def interest_changed(self, type_url: str) -> None:
        self.state(type_url)
        self._dirty.add(type_url)
        self._wake.set()

    def rejection(self, type_url: str) -> Rejection | None:
        st = self.states.get(type_url)
        return st.rejection if st is not None else None

    def received(self, type_url: str) -> bool:
        st = self.states.get(type_url)
        return st is not None and st.received

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        if self.only_type == R.LISTENER:  # (an LDS stream of its own starts after CDS's)
            await self.manager.wait_clusters_initialized()
        backoff = BACKOFF_BASE
        while True:
            received = False
            try:
                async with self.opener(self.cluster_name, self.method) as stream:
                    self.connected = True
                    self.stats.connected_state.value = 1
                    log.info("xDS stream %s open", self.method)
                    received = await self._session(stream)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("xDS stream to %s failed: %s", self.cluster_name, exc)
            except Exception as exc:  # a gRPC status, a protocol error: retry all the same
                log.warning("xDS stream to %s ended: %s", self.cluster_name, exc)
            self.connected = False
            self.stats.connected_state.value = 0
            if received:
                backoff = BACKOFF_BASE
            delay = random.uniform(0, backoff)  # full jitter
            backoff = min(backoff * 2, BACKOFF_MAX)
            await trio.sleep(delay)

    async def _send(self, stream: MessageStream, request: Mapping[str, Any]) -> None:
        if self._first or not self.node_on_first_only:
            request = with_node(request, self.node)
        self._first = False
        data = R.from_dict(_REQUEST, request).SerializeToString()
        async with self._lock:
            await stream.send_message(data)

    def _subscribable(self, type_url: str) -> bool:
        st = self.states[type_url]
        if st.wildcard:
            return True
        st.names = frozenset(self.manager.wanted(type_url, self))
        return bool(st.names)

    async def _session(self, stream: MessageStream) -> bool:
        """Subscribe, then ACK/NACK responses until the stream ends. True if any arrived."""
        self._first = True
        self._dirty.clear()
        for type_url in R.ORDER:
            if type_url in self.states and self._subscribable(type_url):
                await self._send(stream, self.states[type_url].on_connect())
        received = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_interest, stream)
            while True:
                data = await stream.receive_message()
                if data is None:
                    break
                received = True
                await self._on_response(stream, data)
            nursery.cancel_scope.cancel()
        return received

    async def _send_interest(self, stream: MessageStream) -> None:
        while True:
            await self._wake.wait()
            await self._flush_interest(stream)

    async def _flush_interest(self, stream: MessageStream) -> None:
        """Send a request for each type whose wanted names changed."""
        self._wake = trio.Event()
        for type_url in [t for t in R.ORDER if t in self._dirty]:
            self._dirty.discard(type_url)
            st = self.states[type_url]
            if st.wildcard:
                continue
            request = st.set_names(self.manager.wanted(type_url, self))
            if request is not None and (st.names or st.received):
                await self._send(stream, request)

    async def _on_response(self, stream: MessageStream, data: bytes) -> None:
        msg: Any = R.message_class(_RESPONSE)()
        msg.ParseFromString(data)
        type_url: str = msg.type_url
        st = self.states.get(type_url)
        if st is None:
            log.warning("xDS: ignoring a response of unrequested type %s", type_url)
            return
        version: str = msg.version_info
        nonce: str = msg.nonce
        items = []
        failed: list[tuple[str, Mapping[str, Any], str]] = []
        for res in msg.resources:
            try:
                if res.type_url != type_url:
                    raise ConfigError(f"resource of type {res.type_url} in a {type_url} response")
                items.append(self.decoder.decode(type_url, res.value))
            except ConfigError as exc:
                raw = _undecoded(res)
                failed.append((R.resource_name(type_url, raw), raw, str(exc)))
        try:
            if failed:
                self.manager.reject(type_url, version, failed)
                raise ConfigError(
                    "; ".join(f"{name or '<unnamed>'}: {why}" for name, _, why in failed)
                )
            await self.manager.apply(type_url, version, items, self)
        except ConfigError as exc:
            log.warning("xDS: rejected %s version %s: %s", type_url, version, exc)
            await self._send(stream, st.nack(version, nonce, str(exc)))
            return
        # New interest first (a listener's routes, a cluster's endpoints), then the ACK: the
        # order Envoy uses, so a server sees the subscription before the update is confirmed.
        await self._flush_interest(stream)
        await self._send(stream, st.ack(version, nonce))


def _undecoded(res: Any) -> dict[str, Any]:
    """A resource that failed validation, as far as it parses (for ``error_state``)."""
    try:
        msg = R.message_class(R.type_name(res.type_url))()
        msg.ParseFromString(res.value)
        return R.to_dict(msg)
    except Exception:
        return {}
