"""CONNECT terminated at the router (a route with ``upgrade_configs: [{upgrade_type: CONNECT,
connect_config: {}}]``), as Envoy's TCP upstream does it.

The router opens a plain TCP connection (TLS if the cluster has a transport socket) to the
host it picked, without sending any request, and answers the client ``200`` itself once the
connection is up; the connection manager then splices the two byte streams
(``Response.tunnel``). What Envoy 1.40 shows, measured side by side
(``tests/differential/test_connect.py``):

- the request is pending on the cluster while it connects (``upstream_rq_pending_total``); a
  connection that fails fails it (``upstream_rq_pending_failure_eject``, ``UF``) with a 503
  whose body says ``remote connection failure`` and whose details carry the transport
  failure reason;
- once connected, the response counts as the upstream's ``200`` (``upstream_rq_200``,
  details ``via_upstream``), and the connection ends, whichever side closes, as a local close
  with the request active (``upstream_cx_destroy_local_with_active_rq``); the tunnel's bytes
  count in ``upstream_cx_{rx,tx}_bytes_total``.

The pool is not involved: the connection is never reused. A cluster over its
``max_connections`` answers 503 ``UO`` at once (Envoy would queue the request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trioproxy.errors import UpstreamError
from trioproxy.http.filter import HttpStream, LocalReply, Response, Tunnel
from trioproxy.http.headers import Headers
from trioproxy.http.local_reply import OVERFLOW
from trioproxy.http.stream_info import now as _now
from trioproxy.netutil import address_string
from trioproxy.upstream.connect import close_connection, open_connection
from trioproxy.upstream.host import Host

if TYPE_CHECKING:
    from trioproxy.http.route_table import Route
    from trioproxy.upstream.cluster_manager import Cluster

_FAILURE_BODY = (
    b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"remote connection failure"
)


def _failure_details(reason: str) -> str:
    """Envoy's response code details for a TCP upstream that did not connect:
    ``upstream_reset_before_response_started{remote_connection_failure|<transport failure
    reason, spaces as underscores>}``."""
    return (
        "upstream_reset_before_response_started{remote_connection_failure|"
        + reason.replace(" ", "_")
        + "}"
    )


def transport_failure_reason(err: UpstreamError) -> str:
    """The transport failure reason Envoy reports for a connect that failed: ``delayed
    connect error: <strerror>`` for a refused (or unreachable) connect, ``connect timeout``
    after ``connect_timeout``, else our own reason."""
    if err.timeout:
        return "connect timeout"
    return err.transport or err.reason


async def terminate(
    router: Any, stream: HttpStream, route: Route, cluster: Cluster, host: Host
) -> Response | LocalReply:
    """Connect to ``host`` and answer 200 with the connection as the tunnel (see the module
    docstring). ``router`` settles the request's stats (``Router._finish``)."""
    info = stream.info
    stats = cluster.stats
    breakers = cluster.breakers
    internal = stream.request_headers.get("x-envoy-internal") == "true"
    stats.upstream_rq_active.value += 1
    host.rq_active += 1
    info.attempt_count += 1
    started = _now()
    if not breakers.connections.can_create() or not breakers.pending.can_create():
        stats.upstream_cx_overflow.value += 1
        info.response_flags.add("UO")
        router._finish(cluster, host, started, 503, False, internal)
        return OVERFLOW
    breakers.pending.inc()
    stats.upstream_rq_pending_total.value += 1
    stats.upstream_rq_pending_active.value += 1
    info.first_upstream_tx = started
    try:
        up, created = await open_connection(host, stats, breakers, cluster.config)
    except UpstreamError as err:
        stats.upstream_rq_pending_failure_eject.value += 1
        info.response_flags.add("UF")
        if cluster.outlier is not None:
            cluster.outlier.report_local_failure(host, timeout=False)
        reason = transport_failure_reason(err)
        info.upstream_transport_failure_reason = reason
        router._finish(cluster, host, started, 503, False, internal)
        return LocalReply(503, _FAILURE_BODY, details=_failure_details(reason), flag="UF")
    except BaseException:  # cancelled: the client went away, or a stream timeout
        router._finish(cluster, host, started, None, False, internal)
        raise
    finally:
        breakers.pending.dec()
        stats.upstream_rq_pending_active.value -= 1
    stats.upstream_rq_total.value += 1  # (once connected, as Envoy counts it)
    host.rq_total += 1
    now = _now()
    if cluster.outlier is not None:
        cluster.outlier.report_local_success(host)
    try:
        info.upstream_local_address = address_string(up.socket.getsockname())
    except OSError:
        pass
    info.first_upstream_rx = now
    info.response_code_details = "via_upstream"
    stats.upstream_rq_time.record((now - started) * 1000)
    router._finish(cluster, host, started, 200, True, internal)
    headers = Headers([(":status", "200")])
    if route.mutates_headers:
        route.apply_response_headers(headers, info)

    def close() -> None:
        close_connection(up, created, host, stats, breakers, remote=False, active_rq=True)
        stats.upstream_cx_rx_bytes_total.value += info.bytes_sent
        stats.upstream_cx_tx_bytes_total.value += info.bytes_received

    return Response(headers, tunnel=Tunnel(up, b"", close))
