"""A small state-of-the-world xDS server on grpcio, for tests and demos.

grpcio's HTTP/2 is its own C core, not ``h2``: a client bug cannot hide behind a server that
shares it. Needs ``grpcio`` (in the ``test`` extra); imported only when used.

Serves ADS and the per-type services from one snapshot per type URL; records every request;
``set`` pushes a new version to every open stream. Switches reproduce go-control-plane's
quirks: ``drop_stale_nonce`` ignores requests whose nonce is not the latest sent for that type,
``resend_after_nack`` answers a NACK with the same snapshot again.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc

from trioproxy.xds import resources as R

__all__ = ["AdsServer", "encode"]

_REQ = "envoy.service.discovery.v3.DiscoveryRequest"
_RESP = "envoy.service.discovery.v3.DiscoveryResponse"
SERVICES = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": "StreamAggregatedResources",
    "envoy.service.cluster.v3.ClusterDiscoveryService": "StreamClusters",
    "envoy.service.listener.v3.ListenerDiscoveryService": "StreamListeners",
    "envoy.service.route.v3.RouteDiscoveryService": "StreamRoutes",
    "envoy.service.endpoint.v3.EndpointDiscoveryService": "StreamEndpoints",
}


def encode(type_url: str, d: Mapping[str, Any]) -> tuple[str, bytes]:
    return type_url, R.from_dict(R.type_name(type_url), d).SerializeToString()


class AdsServer:
    def __init__(self, *, drop_stale_nonce: bool = False, resend_after_nack: bool = False) -> None:
        self.snapshot: dict[str, tuple[str, list[tuple[str, Any]]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (method, request)
        self.drop_stale_nonce = drop_stale_nonce
        self.resend_after_nack = resend_after_nack
        self._queues: list[queue.Queue[Any]] = []
        self._lock = threading.Lock()
        self._nonces = itertools.count(1)
        self._server: grpc.Server | None = None
        self.port = 0
        self.streams_opened = 0

    # ---------------------------------------------------------------- control

    def set(self, type_url: str, version: str, resources: Sequence[Mapping[str, Any]]) -> None:
        items = [(R.resource_name(type_url, d), encode(type_url, d)) for d in resources]
        with self._lock:
            self.snapshot[type_url] = (version, items)
            for q in self._queues:
                q.put(("push", None))

    def start(self, port: int = 0, *, credentials: Any = None) -> int:
        """Serve on 127.0.0.1:``port`` (0: any); ``credentials`` (``grpc.ssl_server_credentials``)
        makes it TLS."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)]
        )
        handlers = {}
        for service, method in SERVICES.items():
            handlers[service] = grpc.method_handlers_generic_handler(
                service,
                {
                    method: grpc.stream_stream_rpc_method_handler(
                        lambda it, ctx, m=f"{service}/{method}": self._stream(m, it, ctx),
                        request_deserializer=lambda b: b,
                        response_serializer=lambda b: b,
                    )
                },
            )
        server.add_generic_rpc_handlers(tuple(handlers.values()))
        if credentials is not None:
            self.port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
        else:
            self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        self._server = server
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        with self._lock:
            for q in self._queues:
                q.put(("end", None))

    def requests_of(self, type_url: str) -> list[dict[str, Any]]:
        return [r for _, r in self.requests if r.get("type_url") == type_url]

    # ---------------------------------------------------------------- one stream

    def _stream(self, method: str, it: Iterator[bytes], ctx: Any) -> Iterator[bytes]:
        q: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._queues.append(q)
            self.streams_opened += 1

        def reader() -> None:
            try:
                for raw in it:
                    msg = R.message_class(_REQ)()
                    msg.ParseFromString(raw)
                    q.put(("req", R.to_dict(msg)))
            except Exception:
                pass
            q.put(("end", None))

        threading.Thread(target=reader, daemon=True).start()
        names: dict[str, set[str] | None] = {}
        sent: dict[str, tuple[str, str]] = {}  # type → (version, nonce)
        try:
            while True:
                kind, req = q.get()
                if kind == "end":
                    return
                if kind == "req":
                    self.requests.append((method, req))
                    type_url = req.get("type_url") or _only_type(method)
                    last_nonce = sent.get(type_url, ("", ""))[1]
                    if (
                        self.drop_stale_nonce
                        and req.get("response_nonce", "")
                        and req.get("response_nonce") != last_nonce
                    ):
                        continue
                    rn = req.get("resource_names")
                    new_names = set(rn) if rn else None
                    changed = type_url not in names or names[type_url] != new_names
                    names[type_url] = new_names
                    if "error_detail" in req:
                        if not self.resend_after_nack:
                            continue
                        sent.pop(type_url, None)
                    elif changed or not req.get("response_nonce"):
                        sent.pop(type_url, None)  # a new subscription: answer it
                for type_url in list(names):
                    with self._lock:
                        snap = self.snapshot.get(type_url)
                    if snap is None:
                        continue
                    version, items = snap
                    if sent.get(type_url, ("",))[0] == version:
                        continue
                    wanted = names[type_url]
                    chosen = [a for n, a in items if wanted is None or n in wanted]
                    nonce = str(next(self._nonces))
                    resp = R.message_class(_RESP)(
                        version_info=version, type_url=type_url, nonce=nonce
                    )
                    for url, value in chosen:
                        resp.resources.add(type_url=url, value=value)
                    sent[type_url] = (version, nonce)
                    yield resp.SerializeToString()
        finally:
            with self._lock:
                self._queues.remove(q)


def _only_type(method: str) -> str:
    for type_url, m in R.METHODS.items():
        if m.endswith(method.split("/")[-1]):
            return type_url
    return ""
