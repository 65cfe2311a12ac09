"""A small HTTP/1.1 client over the cluster manager's pools, for the proxy's own calls
(span reports to a collector, ext_authz checks over HTTP and gRPC). Envoy's "async client".

``request`` picks a host of the cluster, takes a pooled connection, sends one request with a
``content-length`` body and reads the whole response, all under ``timeout``. It counts the
cluster's request stats as routed traffic does (``upstream_rq_total``, ``upstream_rq_<code>``,
``upstream_rq_<class>xx``, ``upstream_rq_completed``) and raises ``UpstreamError`` on failure
(``UH`` no host, ``UO`` overflow, ``UF``/``UC``/``UPE`` from the connection, ``UT`` timeout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from trioproxy.errors import UpstreamError
from trioproxy.http.headers import Headers
from trioproxy.upstream.cluster_manager import ClusterManager


@attrs.frozen
class ClientResponse:
    status: int
    headers: Headers
    body: bytes
    trailers: Headers | None = None  # (HTTP/2: gRPC's status)


async def request(
    cluster_manager: ClusterManager,
    cluster_name: str,
    method: str,
    path: str,
    *,
    authority: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = b"",
    deadline_s: float = 5.0,
) -> ClientResponse:
    """One request; ``body=None``: none, and no ``content-length`` of ours (the codec's rule
    applies, as for a routed request). A request carrying ``x-envoy-internal: true`` counts
    under ``internal.`` too, as routed ones do."""
    cluster = cluster_manager.get(cluster_name)
    if cluster is None:
        raise UpstreamError(f"unknown cluster {cluster_name}", flag="NC")
    stats = cluster.stats
    if not cluster.try_start_request():
        stats.upstream_rq_pending_overflow.value += 1
        raise UpstreamError("too many requests", flag="UO")
    try:
        host = cluster.choose_host(None)
        if host is None:
            stats.upstream_cx_none_healthy.value += 1
            raise UpstreamError("no healthy upstream", flag="UH")
        pool = cluster.pool(host)
        stats.upstream_rq_active.value += 1
        host.rq_active += 1
        status = 0
        try:
            with trio.fail_after(deadline_s):
                conn: Any = await pool.acquire()
                stats.upstream_rq_total.value += 1  # (once connected, as Envoy counts it)
                host.rq_total += 1
                exchange: Any = pool.exchange(conn, math.inf)
                reusable = False
                try:
                    hdrs = Headers([(":authority", authority), (":path", path)])
                    for k, v in headers:
                        hdrs.add(k, v)
                    if body is not None:
                        hdrs.set("content-length", str(len(body)))
                    await exchange.send_request_head(method, hdrs, body or b"", end_stream=True)
                    head, first = await exchange.read_response_head()
                    parts = [first]
                    async for chunk in exchange.iter_body():
                        parts.append(chunk)
                    reusable = exchange.reusable
                    status = head.status
                    trailers = exchange.trailers
                finally:
                    stats.upstream_cx_rx_bytes_total.value += exchange.rx
                    stats.upstream_cx_tx_bytes_total.value += exchange.tx
                    pool.release(conn, reusable)
        except trio.TooSlowError:
            stats.upstream_rq_timeout.value += 1
            host.rq_timeout += 1
            raise UpstreamError("upstream request timeout", flag="UT") from None
        finally:
            stats.upstream_rq_active.value -= 1
            host.rq_active -= 1
            if status:
                stats.upstream_rq_completed.value += 1
                scope = cluster.scope
                scope.counter(f"upstream_rq_{status}").value += 1
                scope.counter(f"upstream_rq_{status // 100}xx").value += 1
                if any(k == "x-envoy-internal" and v == "true" for k, v in headers):
                    scope.counter(f"internal.upstream_rq_{status}").value += 1
                    scope.counter(f"internal.upstream_rq_{status // 100}xx").value += 1
                    scope.counter("internal.upstream_rq_completed").value += 1
                if status < 500:
                    host.rq_success += 1
                else:
                    host.rq_error += 1
            else:
                host.rq_error += 1
        return ClientResponse(status, Headers(list(head.headers)), b"".join(parts), trailers)
    finally:
        cluster.finish_request()
