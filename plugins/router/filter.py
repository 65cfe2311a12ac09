"""The router: route entry → cluster → host → pooled connection → response.

Per request: resolve the route (direct responses and redirects are answered here), pick the
cluster and check its request circuit breaker, pick a host with the cluster's load balancer,
take a connection from that host's pool, send the request, and hand the response back to the
connection manager with its body as an async iterator. The route timeout (default 15 s) is one
deadline covering the connect, the request and the whole response; hitting it before the
response started answers 504 ``UT``.

The upstream connection returns to the pool only when both messages completed and the upstream
kept the connection alive; otherwise it is closed.

Tunnels: an upgrade the upstream accepts (101), or a CONNECT it answers 2xx, hands the upstream
connection to the connection manager to splice (``_tunnel``). A CONNECT on a route with
``connect_config`` is answered here instead, over a TCP connection of its own
(``connect.terminate``). Neither is retried, mirrored or bounded by the route timeout (Envoy
starts that timer when the request is complete, which a tunnel's never is).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Final

import trio

from trioproxy import watchdog
from trioproxy.errors import UpstreamError
from trioproxy.http import stream_info
from trioproxy.http.filter import (
    FactoryContext,
    HttpStream,
    LocalReply,
    Response,
    TerminalFilter,
    Tunnel,
)
from trioproxy.http.headers import Headers
from trioproxy.http.local_reply import NO_HEALTHY_UPSTREAM, NO_ROUTE, OVERFLOW, UPSTREAM_TIMEOUT
from trioproxy.http.mirror import mirror_headers, send_mirror
from trioproxy.http.replay import Replay
from trioproxy.http.request_headers import strip_hop_by_hop
from trioproxy.http.retry import RetryState
from trioproxy.http.route_table import Route
from trioproxy.http.stream_info import StreamInfo
from trioproxy.upstream import client
from trioproxy.upstream.cluster_manager import Cluster
from trioproxy.upstream.pool import UpstreamConnection

from . import connect
from .config import RouterConfig

_RESET_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: "
_REASONS = {
    "UC": (
        "connection termination",
        "upstream_reset_before_response_started{connection_termination}",
    ),
    "UPE": ("protocol error", "upstream_reset_before_response_started{protocol_error}"),
}

log = logging.getLogger(__name__)
#: Read per request: Final, so that compiled code reads it without a dict lookup.
_now: Final = stream_info.now


#: How many reused connections a bodiless request may find closed before giving up.
STALE_RETRIES = 4


#: An HTTP/1.1 ``http1_client.Exchange`` or an HTTP/2 ``h2_client.H2Exchange``, whichever
#: the host's pool makes. (``Any``, not the HTTP/1.1 class: compiled by mypyc, an annotation
#: is checked at run time, and the tests caught the HTTP/2 one passing through.)
UpstreamExchange = Any


def _stale(err: UpstreamError, conn: Any, exchange: UpstreamExchange) -> bool:
    """The upstream said it never acted on the request (HTTP/2 REFUSED_STREAM, GOAWAY), or
    closed a pooled HTTP/1.1 connection before sending anything back (its keep-alive timeout
    raced our reuse). Only bodiless requests are sent again. An HTTP/2 connection that ends
    under a request without saying so is not such a race: as in Envoy, the request fails."""
    if err.unprocessed:
        return True
    return (
        isinstance(conn, UpstreamConnection)
        and err.flag == "UC"
        and conn.requests > 1
        and exchange.rx == 0
    )


#: Read (where built) and never forwarded, as Envoy's router does. They only reach the router
#: on internal requests: the connection manager strips them from the rest.
_CONSUMED = (
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-hedge-on-per-try-timeout",
)


def _consume_control_headers(headers: Headers, timeout: float | None) -> float | None:
    """``x-envoy-upstream-rq-timeout-ms`` replaces the route timeout (0: none); the rest were
    read already (``RetryState.create``, the per-try timeout) and are dropped."""
    present = [n for n in _CONSUMED if n in headers]
    if not present:
        return timeout
    value = headers.get("x-envoy-upstream-rq-timeout-ms")
    if value is not None and value.isdecimal():
        timeout = int(value) / 1000 or None
    for name in present:
        headers.remove(name)
    return timeout


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _grpc_timeout(value: str | None, route: Route, default: float | None) -> float | None:
    """The route timeout from a ``grpc-timeout`` header (``max_stream_duration``): capped by
    ``grpc_timeout_header_max`` unless it is 0, less ``grpc_timeout_header_offset``. Without
    a valid header the route's timeout stands."""
    if not value or len(value) > 9 or value[-1] not in _GRPC_UNITS or not value[:-1].isdecimal():
        return default
    seconds = int(value[:-1]) * _GRPC_UNITS[value[-1]]
    if route.grpc_timeout_max:
        seconds = min(seconds, route.grpc_timeout_max)
    if seconds > route.grpc_timeout_offset:
        seconds -= route.grpc_timeout_offset
    return seconds or None


def _per_try_timeout(route: Route, headers: Headers | None) -> float | None:
    """The policy's ``per_try_timeout``, or ``x-envoy-upstream-rq-per-try-timeout-ms``."""
    value = headers.get("x-envoy-upstream-rq-per-try-timeout-ms") if headers else None
    if value is not None and value.isdecimal() and int(value):
        return int(value) / 1000
    policy = route.retry_policy
    return policy.per_try_timeout if policy is not None else None


def _retry_host(cluster: Cluster, stream: HttpStream, retry: RetryState, tried: list[Any]) -> Any:
    """The host for a retry; with ``previous_hosts``, up to ``host_selection_retry_max_attempts``
    picks avoid the hosts tried already (the last pick stands)."""
    host = cluster.choose_host(stream)
    if retry.policy.previous_hosts:
        for _ in range(retry.policy.host_selection_max_attempts):
            if host is None or host not in tried:
                break
            host = cluster.choose_host(stream)
    return host


def _cancel_body(exchange: Any) -> None:
    """Stop an HTTP/2 exchange's request-body task, if it has one."""
    cancel = getattr(exchange, "cancel_body", None)
    if cancel is not None:
        cancel()


def _reset_reply(err: UpstreamError) -> LocalReply:
    if err.flag == "UO":
        return OVERFLOW
    if err.flag == "UT":
        return UPSTREAM_TIMEOUT
    if err.flag == "UF":
        # as Envoy 1.40 answers a connect that failed (measured: test_connect_failures)
        if err.timeout:
            reason, details = "connection timeout", "{connection_timeout}"
        else:
            transport = (err.transport or err.reason).replace(" ", "_")
            reason, details = "remote connection failure", "{remote_connection_failure|"
            details += transport + "}"
        return LocalReply(
            503,
            _RESET_BODY + reason.encode(),
            details="upstream_reset_before_response_started" + details,
            flag="UF",
        )
    reason, details = _REASONS.get(
        err.flag, ("remote reset", "upstream_reset_before_response_started{remote_reset}")
    )
    return LocalReply(
        _reset_status(err), _RESET_BODY + reason.encode(), details=details, flag=err.flag
    )


def _reset_status(err: UpstreamError) -> int:
    """502 when the upstream broke the protocol, 503 for the other resets: what Envoy 1.40
    answers, side by side."""
    return 502 if err.flag == "UPE" else 503


class _CodeStats:
    """The per-status counters of one cluster, cached by (status, internal).

    Like Envoy, each response counts under ``upstream_rq_<code>``/``_<class>xx`` and again
    under ``external.`` or ``internal.`` (``x-envoy-internal: true``)."""

    __slots__ = ("scope", "by_code")

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        self.by_code: dict[tuple[int, bool], tuple[Any, ...]] = {}

    def count(self, status: int, internal: bool) -> None:
        key = (status, internal)
        counters = self.by_code.get(key)
        if counters is None:
            scope = self.scope
            origin = "internal." if internal else "external."
            counters = self.by_code[key] = (
                scope.counter(f"upstream_rq_{status}"),
                scope.counter(f"upstream_rq_{status // 100}xx"),
                scope.counter(f"{origin}upstream_rq_{status}"),
                scope.counter(f"{origin}upstream_rq_{status // 100}xx"),
                scope.counter(f"{origin}upstream_rq_completed"),
            )
        for c in counters:
            c.value += 1

    def count_retried(self, status: int) -> None:
        """A response that was retried: ``retry.upstream_rq_<code>``, ``_<class>xx`` and
        ``retry.upstream_rq_completed`` (not on the hot path)."""
        scope = self.scope
        scope.counter(f"retry.upstream_rq_{status}").value += 1
        scope.counter(f"retry.upstream_rq_{status // 100}xx").value += 1
        scope.counter("retry.upstream_rq_completed").value += 1


class Router(TerminalFilter):
    def __init__(self, config: RouterConfig, ctx: FactoryContext) -> None:
        self.config = config
        self.cm = ctx.cluster_manager
        self.rq_total = ctx.stats.counter("rq_total")
        self.rq_direct_response = ctx.stats.counter("rq_direct_response")
        self.rq_redirect = ctx.stats.counter("rq_redirect")
        self._codes: dict[str, _CodeStats] = {}

    async def serve(
        self, stream: HttpStream, body: AsyncIterator[bytes] | None
    ) -> Response | LocalReply:
        self.rq_total.value += 1
        route: Route | None = stream.route
        if route is None:
            return NO_ROUTE
        info = stream.info
        headers = stream.request_headers
        info.route_name = route.name
        if route.direct_response is not None:
            dr = route.direct_response
            self.rq_direct_response.value += 1
            return LocalReply(dr.status, dr.body, details="direct_response")
        if route.redirect is not None:
            rd = route.redirect
            self.rq_redirect.value += 1
            return LocalReply(
                rd.response_code,
                b"",
                headers=(("location", rd.location(headers)),),
                details="direct_response",
            )
        cluster_name = route.cluster_name(headers, random.getrandbits(63))
        cluster = self.cm.get(cluster_name) if cluster_name else None
        if cluster is None:
            code = getattr(route, "cluster_not_found_response_code", 503)
            return LocalReply(code, b"", details="cluster_not_found", flag="NC")
        info.upstream_cluster = cluster.name
        info.upstream_cluster_observability = cluster.config.alt_stat_name
        route.rewrite(headers, not self.config.suppress_envoy_headers)
        if route.mutates_headers:
            route.apply_request_headers(headers, info)
        timeout = route.timeout
        if route.grpc_timeout_max is not None:
            timeout = _grpc_timeout(headers.get("grpc-timeout"), route, timeout)
        # x-envoy-* control headers only reach the router on internal requests (the connection
        # manager strips them from the rest): external ones skip looking for them
        if headers.get("x-envoy-internal") == "true":
            retry = RetryState.create(route.retry_policy, headers)
            per_try = _per_try_timeout(route, headers) if retry is not None else None
            timeout = _consume_control_headers(headers, timeout)
        elif route.retry_policy is not None:
            retry = RetryState.create(route.retry_policy, None)
            per_try = _per_try_timeout(route, None) if retry is not None else None
        else:
            retry = per_try = None
        if retry is None and route.retry_policy is not None:
            # no retries (``num_retries: 0``, or no condition): the one attempt still has the
            # policy's ``per_try_timeout``, as in Envoy
            per_try = _per_try_timeout(route, None)
        span = stream.span
        if span is not None:
            span.inject(headers)
        if timeout and not self.config.suppress_envoy_headers:
            expected = min(timeout, per_try) if per_try else timeout
            headers.set("x-envoy-expected-rq-timeout-ms", str(int(expected * 1000)))
        stats = cluster.stats
        if not cluster.try_start_request():
            stats.upstream_rq_pending_overflow.value += 1
            info.response_flags.add("UO")
            return OVERFLOW
        host = cluster.choose_host(stream)
        if host is None:
            cluster.finish_request()
            stats.upstream_cx_none_healthy.value += 1
            return NO_HEALTHY_UPSTREAM
        info.upstream_host = host.address_str
        if headers.get(":method") == "CONNECT":
            return await self._connect(stream, route, cluster, host)
        if route.auto_host_rewrite and host.hostname:
            # the first host's name (DNS clusters, or an endpoint's hostname): a retry to
            # another host keeps it
            route.rewrite_host(headers, host.hostname, not self.config.suppress_envoy_headers)
        deadline = watchdog.now() + timeout if timeout else math.inf
        vh = route.virtual_host
        if vh is not None and vh.include_request_attempt_count:
            headers.set("x-envoy-attempt-count", "1")
        replay = None
        if route.mirrors:
            replay = Replay(body, route.buffer_limit) if body is not None else None
            self._mirror(route, headers, replay, timeout)
        if retry is None:
            if replay is not None:
                body = replay.attempt()
            if per_try is not None and watchdog.now() + per_try < deadline:
                deadline = watchdog.now() + per_try
                return await self._forward(
                    stream, route, cluster, host, body, deadline, per_try=True
                )
            return await self._forward(stream, route, cluster, host, body, deadline)
        return await self._retrying(
            stream, route, cluster, host, body, deadline, retry, per_try, replay
        )

    async def _connect(
        self, stream: HttpStream, route: Route, cluster: Cluster, host: Any
    ) -> Response | LocalReply:
        """A CONNECT: terminated here (``connect_config``) or forwarded, one attempt."""
        if not stream.info.protocol.startswith("HTTP/1"):
            # HTTP/2 CONNECT, extended or not, is not supported yet (the HTTP/2 connection
            # refuses one without :path first): no tunnel where no splice could take it
            cluster.finish_request()
            return LocalReply(403, b"", details="upgrade_failed")
        if route.terminate_connect:
            return await connect.terminate(self, stream, route, cluster, host)
        config = cluster.config
        if config.http2 or (config.auto_http and config.upstream_tls is not None):
            cluster.finish_request()
            log.warning(
                "CONNECT forwarded to cluster %s: HTTP/2 upstreams are not supported yet",
                cluster.name,
            )
            return LocalReply(503, b"", details="connect_over_http2_upstream_unsupported")
        return await self._forward(stream, route, cluster, host, None, math.inf)

    def _mirror(
        self, route: Route, headers: Headers, replay: Replay | None, timeout: float | None
    ) -> None:
        """Start the copies ``request_mirror_policies`` ask for (see ``trioproxy.http.mirror``)."""
        for policy in route.mirrors:
            if not policy.draws():
                continue
            name = policy.cluster_name(headers)
            cluster = self.cm.get(name) if name else None
            if cluster is None or cluster.nursery is None:
                continue
            method, path, authority, copy = mirror_headers(headers, policy)
            cluster.nursery.start_soon(
                send_mirror,
                partial(client.request, self.cm),
                cluster.name,
                method,
                path,
                authority,
                copy,
                replay.whole if replay is not None else None,
                timeout or 15.0,
            )

    async def _retrying(
        self,
        stream: HttpStream,
        route: Route,
        cluster: Cluster,
        host: Any,
        body: AsyncIterator[bytes] | None,
        deadline: float,
        retry: RetryState,
        per_try: float | None,
        replay: Replay | None = None,
    ) -> Response | LocalReply:
        """Attempts until one's outcome is not to be retried (see ``trioproxy.http.retry``)."""
        info = stream.info
        stats = cluster.stats
        if replay is None and body is not None:
            replay = Replay(body, route.buffer_limit)
        tried = [host]
        flags = set(info.response_flags)
        breaker = cluster.breakers.retries
        retrying = False
        while True:
            attempt_deadline = deadline
            if per_try is not None:
                attempt_deadline = min(deadline, watchdog.now() + per_try)
            result = await self._forward(
                stream,
                route,
                cluster,
                host,
                replay.attempt() if replay is not None else None,
                attempt_deadline,
                retry=retry,
                per_try=attempt_deadline < deadline,
            )
            if retrying:
                breaker.dec()
                retrying = False
            if type(result) is LocalReply:
                err = retry.last_error
                want = err is not None and retry.wants_failure(err.flag, refused=err.unprocessed)
                if err is not None and err.flag == "UT" and attempt_deadline >= deadline:
                    want = False  # the route timeout is over: no time for another attempt
            else:
                assert isinstance(result, Response)
                status = int(result.headers.get(":status") or 0)
                want = retry.wants_response(status, result.headers)
            if not want:
                if info.attempt_count > 1 and (type(result) is not LocalReply):
                    stats.upstream_rq_retry_success.value += 1
                return self._with_attempt_count(result, route, info)
            if replay is not None and not replay.replayable:
                return self._with_attempt_count(result, route, info)
            backoff = retry.take()
            if backoff is None:
                stats.upstream_rq_retry_limit_exceeded.value += 1
                info.response_flags.add("URX")
                return self._with_attempt_count(result, route, info)
            if not cluster.breakers.can_retry():
                stats.upstream_rq_retry_overflow.value += 1
                return self._with_attempt_count(result, route, info)
            if type(result) is Response and result.body is not None:
                await result.body.aclose()  # type: ignore[attr-defined]
            if watchdog.now() + backoff >= deadline:
                info.response_flags.add("UT")
                stats.upstream_rq_timeout.value += 1
                return UPSTREAM_TIMEOUT
            breaker.inc()
            retrying = True
            stats.upstream_rq_retry.value += 1
            stats.upstream_rq_retry_backoff_exponential.value += 1
            try:
                await trio.sleep(backoff)
            except BaseException:
                breaker.dec()
                raise
            # a new attempt: what the last one left in the stream info does not stand
            info.response_flags.clear()
            info.response_flags.update(flags)
            info.upstream_transport_failure_reason = ""
            retry.last_error = None
            if not cluster.try_start_request():
                breaker.dec()
                stats.upstream_rq_pending_overflow.value += 1
                info.response_flags.add("UO")
                return OVERFLOW
            host = _retry_host(cluster, stream, retry, tried)
            if host is None:
                breaker.dec()
                cluster.finish_request()
                stats.upstream_cx_none_healthy.value += 1
                return NO_HEALTHY_UPSTREAM
            tried.append(host)
            info.upstream_host = host.address_str
            headers = stream.request_headers
            vh = route.virtual_host
            if vh is not None and vh.include_request_attempt_count:
                headers.set("x-envoy-attempt-count", str(info.attempt_count + 1))
            if "x-envoy-expected-rq-timeout-ms" in headers and deadline != math.inf:
                # what is left of the route timeout (and at most one try's), as Envoy sends it
                left = max(deadline - watchdog.now(), 0.001)
                left = min(left, per_try) if per_try else left
                headers.set("x-envoy-expected-rq-timeout-ms", str(int(left * 1000)))

    @staticmethod
    def _with_attempt_count(
        result: Response | LocalReply, route: Route, info: StreamInfo
    ) -> Response | LocalReply:
        vh = route.virtual_host
        if vh is not None and vh.include_attempt_count_in_response and type(result) is Response:
            result.headers.set("x-envoy-attempt-count", str(info.attempt_count))
        return result

    async def _forward(
        self,
        stream: HttpStream,
        route: Route,
        cluster: Cluster,
        host: Any,
        body: AsyncIterator[bytes] | None,
        deadline: float,
        *,
        retry: RetryState | None = None,
        per_try: bool = False,
    ) -> Response | LocalReply:
        """One attempt. ``per_try``: ``deadline`` is the attempt's own (``per_try_timeout``)."""
        info = stream.info
        stats = cluster.stats
        headers = stream.request_headers
        method = headers.get(":method") or "GET"
        internal = headers.get("x-envoy-internal") == "true"
        stats.upstream_rq_active.value += 1
        host.rq_active += 1
        started = _now()
        info.attempt_count += 1
        pool = cluster.pool(host)
        dog = watchdog.current()
        conn = None
        exchange: UpstreamExchange | None = None
        done = False
        try:
            conn = await self._acquire(pool, deadline, body is not None)
            # counted once a connection carries it, as Envoy (a connect that fails is not)
            stats.upstream_rq_total.value += 1
            host.rq_total += 1
            exchange = pool.exchange(conn, deadline)
            dog.add(exchange)
            info.first_upstream_tx = _now()
            if body is None:
                headers.remove("transfer-encoding")
                for _ in range(STALE_RETRIES):
                    try:
                        await exchange.send_request_head(method, headers, end_stream=True)
                        head, initial = await exchange.read_response_head()
                        break
                    except UpstreamError as err:
                        if not _stale(err, conn, exchange):
                            raise
                    # A reused keep-alive connection the upstream had closed before our
                    # request reached it: nothing was processed, so try another one.
                    dog.discard(exchange)
                    pool.release(conn, False)
                    conn = None
                    conn = await self._acquire(pool, deadline)
                    exchange = pool.exchange(conn, deadline)
                    dog.add(exchange)
                else:
                    raise UpstreamError("connection termination", flag="UC")
            else:
                head, initial = await self._send_body_and_read(
                    exchange, method, headers, body, stream
                )
        except UpstreamError as err:
            info.response_flags.add(err.flag)
            outlier = cluster.outlier
            if outlier is not None and err.flag != "UO":
                outlier.report_local_failure(host, timeout=err.flag == "UT")
            # an attempt that will be retried is charged no response code (as Envoy)
            final = retry is None or not retry.may_retry(err)
            if retry is not None:
                retry.last_error = err
            if err.flag == "UT":
                if per_try:
                    stats.upstream_rq_per_try_timeout.value += 1
                else:
                    stats.upstream_rq_timeout.value += 1
                host.rq_timeout += 1
                self._finish(cluster, host, started, 504 if final else None, False, internal)
            else:
                info.upstream_transport_failure_reason = err.transport
                code = _reset_status(err)
                self._finish(cluster, host, started, code if final else None, False, internal)
            done = True
            return _reset_reply(err)
        except BaseException:
            # Cancelled (client gone, stream timeout): account for the request and drop the
            # half-used connection.
            if not done:
                self._finish(cluster, host, started, None, False, internal)
                done = True
            raise
        finally:
            if done:
                if exchange is not None:
                    dog.discard(exchange)
                    _cancel_body(exchange)
                if conn is not None:
                    pool.release(conn, False)
        assert exchange is not None and conn is not None
        if cluster.outlier is not None:
            cluster.outlier.report_local_success(host)
            cluster.outlier.report_status(host, head.status)
        now = _now()
        info.first_upstream_rx = now
        info.response_code_details = "via_upstream"
        stats.upstream_rq_time.record((now - started) * 1000)
        resp_headers = Headers([(":status", str(head.status))])
        resp_headers.items().extend(head.headers)
        strip_hop_by_hop(resp_headers, keep_te_trailers=False)
        if head.status == 204:
            resp_headers.remove("content-length")  # a 204 has none (RFC 9110 §8.6), as Envoy
        tunnel = (head.status == 101 and bool(headers.get("upgrade"))) or (
            method == "CONNECT" and 200 <= head.status < 300
        )
        if not self.config.suppress_envoy_headers and not tunnel:
            # (Envoy adds it only once the request is complete, which a tunnel's never is)
            resp_headers.set("x-envoy-upstream-service-time", str(int((now - started) * 1000)))
        if route.mutates_headers:
            route.apply_response_headers(resp_headers, info)
        if tunnel:
            return self._tunnel(
                resp_headers, head, exchange, conn, pool, cluster, host, started, info
            )
        # an attempt to be retried is charged under cluster.<name>.retry.* (as Envoy)
        retried = (
            retry is not None
            and retry.remaining > 0
            and retry.wants_response(head.status, resp_headers)
        )
        if exchange.complete:
            self._finish(cluster, host, started, head.status, True, internal, retried)
            stats.upstream_cx_rx_bytes_total.value += exchange.rx
            stats.upstream_cx_tx_bytes_total.value += exchange.tx
            dog.discard(exchange)
            _cancel_body(exchange)  # HTTP/2: a request body still going will not be needed
            pool.release(conn, exchange.reusable)
            return Response(resp_headers, None, exchange.trailers, initial_body=initial)
        resp = Response(resp_headers, None, None, initial_body=initial)
        resp.body = _UpstreamBody(
            self, exchange, cluster, host, pool, started, head.status, deadline, resp, stream
        )
        resp.body.retried = retried
        return resp

    @staticmethod
    async def _acquire(pool: Any, deadline: float, checked: bool = False) -> Any:
        """A connection from the pool (``checked``: see ``Http1Pool.acquire``). With an idle
        one at hand this does not wait, so it needs no timer; otherwise (connect, or queueing
        behind the circuit breaker) the route deadline is an exact cancel scope."""
        if pool.has_idle():
            return await pool.acquire(checked)
        with trio.CancelScope(deadline=deadline) as scope:
            return await pool.acquire(checked)
        assert scope.cancelled_caught
        raise UpstreamError("upstream request timeout", flag="UT")

    async def _send_body_and_read(
        self,
        exchange: UpstreamExchange,
        method: str,
        headers: Headers,
        body: AsyncIterator[bytes],
        stream: HttpStream,
    ) -> Any:
        stream_body = getattr(exchange, "stream_body", None)
        if stream_body is not None:
            # HTTP/2: the body keeps flowing while the response streams (bidi gRPC)
            await exchange.send_request_head(method, headers)
            stream_body(body, lambda: stream.request_trailers)
            return await exchange.read_response_head()
        chunked = "content-length" not in headers
        if chunked:
            headers.set("transfer-encoding", "chunked")
        await exchange.send_request_head(method, headers)
        result: list[Any] = []
        # What failed, raised once the nursery is closed: a nursery would wrap it in an
        # exception group, which the router's and the connection manager's handlers (for
        # ``UpstreamError``, the client body's ``ProtocolError``) would not catch.
        failed: list[Exception] = []
        sent_all = False

        async def pump() -> None:
            nonlocal sent_all
            try:
                async for chunk in body:
                    await exchange.send_body(chunk, chunked)
                await exchange.end_body(stream.request_trailers, chunked)
                sent_all = True
            except UpstreamError as exc:
                failed.append(exc)  # the read sees the connection's end too (or an answer)
            except Exception as exc:  # the client's body failed: the upstream's answer is moot
                failed.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                result.extend(await exchange.read_response_head())
            except UpstreamError as exc:
                failed.insert(0, exc)
                nursery.cancel_scope.cancel()
            else:
                if not sent_all:
                    # The upstream answered before the whole request was sent: stop sending
                    # and do not reuse the connection.
                    exchange.keep_alive = False
                    nursery.cancel_scope.cancel()
        if not result:
            raise failed[0]
        return result[0], result[1]

    def _tunnel(
        self,
        resp_headers: Headers,
        head: Any,
        exchange: UpstreamExchange,
        conn: Any,
        pool: Any,
        cluster: Cluster,
        host: Any,
        started: float,
        info: StreamInfo,
    ) -> Response:
        """The upstream switched protocols (WebSocket) or opened the tunnel a CONNECT asked
        for (a 2xx): hand its byte stream to the connection manager, which splices it with
        the client's. The route timeout ends here; the connection never goes back to the
        pool, and its end counts with the request active, as in Envoy."""
        if head.status == 101:
            upgrade = next((v for k, v in head.headers if k == "upgrade"), "")
            resp_headers.set("upgrade", upgrade)
            resp_headers.set("connection", "upgrade")
        else:  # a 2xx to CONNECT has no body, whatever it says (RFC 9110 §9.3.6)
            resp_headers.remove("content-length")
            resp_headers.remove("transfer-encoding")
        self._finish(cluster, host, started, head.status, True)
        watchdog.current().discard(exchange)
        exchange.keep_alive = False
        conn.busy = True
        stats = cluster.stats
        tail = exchange.parser.trailing_data()

        def close() -> None:
            # the exchange's bytes (the tail among them) and the tunnel's after them
            stats.upstream_cx_rx_bytes_total.value += exchange.rx + info.bytes_sent - len(tail)
            stats.upstream_cx_tx_bytes_total.value += exchange.tx + info.bytes_received
            pool.release(conn, False)

        return Response(resp_headers, tunnel=Tunnel(conn.stream, tail, close))

    def _finish(
        self,
        cluster: Cluster,
        host: Any,
        started: float,
        status: int | None,
        ok: bool,
        internal: bool = False,
        retried: bool = False,
    ) -> None:
        stats = cluster.stats
        stats.upstream_rq_active.value -= 1
        host.rq_active -= 1
        if ok and status is not None and status < 500 and not retried:
            host.rq_success += 1
        else:
            host.rq_error += 1
        if status is not None:
            codes = self._codes.get(cluster.name)
            if codes is None or codes.scope is not cluster.scope:
                codes = self._codes[cluster.name] = _CodeStats(cluster.scope)
            if retried:
                codes.count_retried(status)
            else:
                stats.upstream_rq_completed.value += 1
                codes.count(status, internal)
        cluster.finish_request()


class _UpstreamBody:
    """The rest of an upstream response body, as an async iterator.

    A class rather than an async generator so that ``aclose()`` always settles the request
    (stats, circuit breaker, the connection back to the pool or closed), even when the
    connection manager never started iterating (the client went away first)."""

    __slots__ = (
        "router",
        "exchange",
        "cluster",
        "host",
        "pool",
        "started",
        "status",
        "deadline",
        "resp",
        "stream",
        "retried",
        "_it",
        "_settled",
    )

    def __init__(
        self,
        router: Router,
        exchange: UpstreamExchange,
        cluster: Cluster,
        host: Any,
        pool: Any,
        started: float,
        status: int,
        deadline: float,
        resp: Response,
        stream: HttpStream,
    ) -> None:
        self.router = router
        self.exchange = exchange
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.started = started
        self.status = status
        self.deadline = deadline
        self.resp = resp
        self.stream = stream
        self._it = exchange.iter_body()
        self._settled = False
        self.retried = False

    def __aiter__(self) -> _UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._it.__anext__()
            return chunk
        except StopAsyncIteration:
            self.resp.trailers = self.exchange.trailers
            self._settle(True)
            raise
        except UpstreamError as err:
            self.stream.info.response_flags.add(err.flag)
            if err.flag == "UT":
                self.cluster.stats.upstream_rq_timeout.value += 1
            self._settle(False)
            raise

    async def aclose(self) -> None:
        await self._it.aclose()
        self._settle(False)

    def _settle(self, ok: bool) -> None:
        if self._settled:
            return
        self._settled = True
        ex = self.exchange
        _cancel_body(ex)
        stats = self.cluster.stats
        stats.upstream_cx_rx_bytes_total.value += ex.rx
        stats.upstream_cx_tx_bytes_total.value += ex.tx
        self.stream.info.last_upstream_rx = _now()
        watchdog.current().discard(ex)
        self.router._finish(
            self.cluster,
            self.host,
            self.started,
            self.status,
            ok,
            self.stream.request_headers.get("x-envoy-internal") == "true",
            self.retried,
        )
        self.pool.release(ex.conn, ok and ex.reusable)
