"""Active health checking: a task per host probes it over its own connection (HTTP, TCP or
gRPC), and a host that fails leaves load balancing until it passes again.

Theory of operation (Envoy's ``HealthCheckerImplBase``): a host added to a cluster with a
health check starts out failed (``/failed_active_hc``) until its first check; the first
success makes it healthy at once, later recoveries need ``healthy_threshold`` successes in a
row. A check fails in one of two ways: *actively* (an HTTP status outside
``expected_statuses``, a gRPC health status other than SERVING, ``x-envoy-immediate-health-
check-fail``), which marks the host unhealthy at once, or *by the network* (no connection, a
timeout, a ``retriable_statuses`` status, a TCP answer that did not match), which does after
``unhealthy_threshold`` in a row. The cluster is ready (the server starts listening) once
every host had its first check.

Checks are ``interval`` apart (from the end of one to the start of the next) — until the
cluster has carried traffic, ``no_traffic_interval`` (default 60 s) — with
``unhealthy_interval``, the ``*_edge_interval``s while a change is pending, and the jitters,
as in Envoy. Stats: ``cluster.<name>.health_check.{attempt,success,failure,network_failure,
healthy}``.

HTTP checks speak HTTP/1.1 (``Host`` is ``host`` or the cluster's name, ``User-Agent:
Envoy/HC``), reusing the connection unless ``reuse_connection: false`` or the host closes it;
TCP checks send ``send`` and expect each ``receive`` payload in order; gRPC checks call
``grpc.health.v1.Health/Check`` over HTTP/2. The cluster's upstream TLS applies to all three.
Refused by name: ``codec_client_type: HTTP2``, custom and Redis checks, several checks on one
cluster, ``tls_options``, ``transport_socket_match_criteria``, event logs.
"""

from __future__ import annotations

import base64
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError
from trioproxy.http.h1.serialize import proper_case
from trioproxy.stats import Scope
from trioproxy.stats.store import NEVER_IMPORT
from trioproxy.upstream.connect import set_keepalive
from trioproxy.upstream.host import Host

USER_AGENT = "Envoy/HC"
_REFUSED = (
    "custom_health_check",
    "tls_options",
    "transport_socket_match_criteria",
    "event_log_path",
    "event_logger",
)


class CheckFailed(Exception):
    """A failed check; ``network`` failures count toward ``unhealthy_threshold``."""

    def __init__(self, reason: str, *, network: bool) -> None:
        super().__init__(reason)
        self.network = network


@attrs.frozen
class HealthCheckConfig:
    kind: str  # "http", "tcp" or "grpc"
    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    initial_jitter: float = 0.0
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    unhealthy_interval: float | None = None
    unhealthy_edge_interval: float | None = None
    healthy_edge_interval: float | None = None
    no_traffic_interval: float = 60.0
    no_traffic_healthy_interval: float | None = None
    reuse_connection: bool = True
    # http
    path: str = "/"
    host: str = ""
    method: str = "GET"
    expected: tuple[tuple[int, int], ...] = ((200, 201),)
    retriable: tuple[tuple[int, int], ...] = ()
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    # tcp
    send: bytes = b""
    receive: tuple[bytes, ...] = ()
    # grpc
    service_name: str = ""
    authority: str = ""

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> HealthCheckConfig:
        for name in _REFUSED:
            if name in d:
                raise ConfigError("not supported yet", path=name)
        all_kinds = ("http_health_check", "tcp_health_check", "grpc_health_check")
        kinds = [k for k in all_kinds if k in d]
        if len(kinds) != 1:
            raise ConfigError(
                "one of http_health_check, tcp_health_check, grpc_health_check is required"
            )
        kind = kinds[0]
        kw: dict[str, Any] = {"kind": kind.split("_")[0]}
        for name in ("timeout", "interval", "unhealthy_threshold", "healthy_threshold"):
            if d.get(name) is None:
                raise ConfigError("is required", path=name)
        for name in (
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
        ):
            if d.get(name) is not None:
                try:
                    kw[name] = duration(d[name], None)
                except ConfigError as exc:
                    raise exc.at(name) from None
        for name in ("unhealthy_threshold", "healthy_threshold", "interval_jitter_percent"):
            if d.get(name) is not None:
                kw[name] = int(d[name])
        if d.get("reuse_connection") is not None:
            kw["reuse_connection"] = bool(d["reuse_connection"])
        for name in ("timeout", "interval"):
            if kw[name] <= 0:
                raise ConfigError("must be greater than 0", path=name)
        spec = d[kind] or {}
        if kind == "http_health_check":
            kw.update(_http(spec))
        elif kind == "tcp_health_check":
            try:
                if spec.get("send"):
                    kw["send"] = _payload(spec["send"])
                kw["receive"] = tuple(_payload(p) for p in spec.get("receive", ()))
            except ConfigError as exc:
                raise exc.at(kind) from None
        else:
            if "initial_metadata" in spec:
                raise ConfigError("not supported yet", path=f"{kind}.initial_metadata")
            kw["service_name"] = str(spec.get("service_name", ""))
            kw["authority"] = str(spec.get("authority", ""))
        return cls(**kw)


def _ranges(items: Sequence[Mapping[str, Any]], path: str) -> tuple[tuple[int, int], ...]:
    out = []
    for i, r in enumerate(items):
        start, end = int(r.get("start", 0)), int(r.get("end", 0))
        if not 100 <= start < end <= 600:
            raise ConfigError(f"invalid range [{start}, {end})", path=f"{path}[{i}]")
        out.append((start, end))
    return tuple(out)


def _http(spec: Mapping[str, Any]) -> dict[str, Any]:
    p = "http_health_check"
    for name in ("receive", "response_buffer_size", "service_name_matcher"):
        if name in spec:
            raise ConfigError("not supported yet", path=f"{p}.{name}")
    if spec.get("codec_client_type", "HTTP1") != "HTTP1":
        raise ConfigError("only HTTP1 is supported yet", path=f"{p}.codec_client_type")
    path = spec.get("path")
    if not path:
        raise ConfigError("is required", path=f"{p}.path")
    kw: dict[str, Any] = {"path": str(path), "host": str(spec.get("host", ""))}
    if spec.get("method"):
        kw["method"] = str(spec["method"])
    if spec.get("expected_statuses"):
        kw["expected"] = _ranges(spec["expected_statuses"], f"{p}.expected_statuses")
    if spec.get("retriable_statuses"):
        kw["retriable"] = _ranges(spec["retriable_statuses"], f"{p}.retriable_statuses")
    adds = []
    for opt in spec.get("request_headers_to_add", ()):
        header = opt.get("header") or {}
        adds.append((str(header.get("key", "")).lower(), str(header.get("value", ""))))
    kw["headers_to_add"] = tuple(adds)
    kw["headers_to_remove"] = tuple(
        str(h).lower() for h in spec.get("request_headers_to_remove", ())
    )
    return kw


def _payload(d: Mapping[str, Any]) -> bytes:
    if "text" in d:  # hex, as Envoy's Payload.text
        try:
            return bytes.fromhex(str(d["text"]))
        except ValueError:
            raise ConfigError("text must be hex", path="text") from None
    if "binary" in d:
        return base64.b64decode(str(d["binary"]))
    raise ConfigError("a payload needs text or binary")


# -- one host's session ----------------------------------------------------------------------


class _Session:
    """The checks of one host: its connection (kept when ``reuse_connection``), its counts."""

    def __init__(self, checker: HealthChecker, host: Host) -> None:
        self.checker = checker
        self.host = host
        self.stream: trio.abc.Stream | None = None
        self.http: h11.Connection | None = None
        self.first = True
        self.healthy_run = 0
        self.unhealthy_run = 0
        self.pending = False  # a change of state is under way (edge intervals)

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def check_once(self) -> None:
        c = self.checker.config
        st = self.checker.stats
        st["attempt"].value += 1
        try:
            with trio.fail_after(c.timeout):
                if c.kind == "http":
                    await self._http()
                elif c.kind == "tcp":
                    await self._tcp()
                else:
                    await self._grpc()
        except trio.TooSlowError:
            await self.close()
            self._failed(network=True)
        except CheckFailed as exc:
            await self.close()
            self._failed(network=exc.network)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            await self.close()
            self._failed(network=True)
        except (h11.ProtocolError, h2.exceptions.ProtocolError):
            await self.close()
            self._failed(network=False)
        else:
            if not c.reuse_connection or c.kind != "http":
                await self.close()
            self._succeeded()

    def _succeeded(self) -> None:
        host, checker = self.host, self.checker
        checker.stats["success"].value += 1
        self.unhealthy_run = 0
        self.pending = False
        if host.hc_failed:
            self.healthy_run += 1
            if self.first or self.healthy_run >= checker.config.healthy_threshold:
                host.hc_failed = False
                self.healthy_run = 0
                checker.changed()
            else:
                self.pending = True
        self.first = False

    def _failed(self, *, network: bool) -> None:
        host, checker = self.host, self.checker
        checker.stats["failure"].value += 1
        if network:
            checker.stats["network_failure"].value += 1
        self.healthy_run = 0
        self.pending = False
        if not host.hc_failed:
            self.unhealthy_run += 1
            if not network or self.unhealthy_run >= checker.config.unhealthy_threshold:
                host.hc_failed = True
                self.unhealthy_run = 0
                checker.changed()
            else:
                self.pending = True
        self.first = False

    def next_interval(self) -> float:
        c = self.checker.config
        if self.checker.has_traffic():
            if self.host.hc_failed:
                base = c.unhealthy_interval or c.interval
                if self.pending:
                    base = c.unhealthy_edge_interval or base
            else:
                base = (c.healthy_edge_interval or c.interval) if self.pending else c.interval
        elif not self.host.hc_failed and c.no_traffic_healthy_interval:
            base = c.no_traffic_healthy_interval
        else:
            base = c.no_traffic_interval
        rng = self.checker.rng
        jitter = c.interval_jitter * rng() + base * c.interval_jitter_percent / 100 * rng()
        return base + jitter

    # -- the three kinds ---------------------------------------------------------------------
    async def _connect(self) -> trio.abc.Stream:
        if self.stream is None:
            self.stream = await self.checker.connect(self.host)
        return self.stream

    async def _http(self) -> None:
        c = self.checker.config
        stream = await self._connect()
        if self.http is None or self.http.our_state is not h11.IDLE:
            self.http = h11.Connection(h11.CLIENT)
        conn = self.http
        headers = [
            ("host", c.host or self.checker.cluster_name),
            ("user-agent", USER_AGENT),
            *c.headers_to_add,
        ]
        headers = [(k, v) for k, v in headers if k not in c.headers_to_remove]
        if not c.reuse_connection:
            headers.append(("connection", "close"))
        if self.checker.proper_case_headers:  # (h11 writes names as given)
            headers = [(proper_case(k), v) for k, v in headers]
        await stream.send_all(
            conn.send(h11.Request(method=c.method, target=c.path, headers=headers))
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        response: h11.Response | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    raise CheckFailed("connection closed", network=True)
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise CheckFailed("connection closed", network=True)
        assert response is not None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.close()  # the host closes (or asked to): a new connection next time
            self.http = None
        status = response.status_code
        if any(k.lower() == b"x-envoy-immediate-health-check-fail" for k, _ in response.headers):
            raise CheckFailed("immediate health check fail", network=False)
        if any(a <= status < b for a, b in c.expected):
            return
        retriable = any(a <= status < b for a, b in c.retriable)
        raise CheckFailed(f"status {status}", network=retriable)

    async def _tcp(self) -> None:
        c = self.checker.config
        stream = await self._connect()
        if c.send:
            await stream.send_all(c.send)
        buf = b""
        wanted = list(c.receive)
        while wanted:
            # each payload in turn, anywhere after the previous one (Envoy's fuzzy match)
            at = buf.find(wanted[0])
            if at >= 0:
                buf = buf[at + len(wanted[0]) :]
                wanted.pop(0)
                continue
            data = await stream.receive_some(65536)
            if not data:
                raise CheckFailed("connection closed before the expected answer", network=True)
            buf += data

    async def _grpc(self) -> None:
        c = self.checker.config
        stream = await self._connect()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        name = c.service_name.encode()
        message = (b"\x0a" + _varint(len(name)) + name) if name else b""
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https" if self.checker.tls is not None else "http"),
                (":path", "/grpc.health.v1.Health/Check"),
                (":authority", c.authority or self.checker.cluster_name),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", USER_AGENT),
            ],
        )
        conn.send_data(sid, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        await stream.send_all(conn.data_to_send())
        body = b""
        grpc_status: bytes | None = None
        http_status: bytes | None = None
        done = False
        while not done:
            data = await stream.receive_some(65536)
            if not data:
                raise CheckFailed("connection closed", network=True)
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for k, v in ev.headers:
                        if k == b":status":
                            http_status = v
                        elif k == b"grpc-status":
                            grpc_status = v
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise CheckFailed("GOAWAY", network=True)
            await stream.send_all(conn.data_to_send())
        if http_status != b"200" or grpc_status != b"0":
            raise CheckFailed(f"grpc-status {grpc_status!r}", network=False)
        # HealthCheckResponse { ServingStatus status = 1; }  SERVING is 1
        if body[5:] != b"\x08\x01":
            raise CheckFailed("not SERVING", network=False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- the checker of one cluster --------------------------------------------------------------


class HealthChecker:
    """Runs a ``_Session`` per host of a cluster; ``changed`` is called on each transition."""

    def __init__(
        self,
        config: HealthCheckConfig,
        cluster_name: str,
        scope: Scope,
        hosts: Callable[[], Sequence[Host]],
        changed: Callable[[], None],
        has_traffic: Callable[[], bool],
        *,
        connect_timeout: float,
        tls: Any = None,
        keepalive: tuple[int | None, int | None, int | None] | None = None,
        proper_case_headers: bool = False,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.cluster_name = cluster_name
        hc = scope.scope("health_check.")
        self.stats = {
            n: hc.counter(n) for n in ("attempt", "success", "failure", "network_failure")
        }
        self.healthy_gauge = hc.gauge("healthy", NEVER_IMPORT)  # each worker checks every host
        hc.counter("passive_failure")
        hc.counter("verify_cluster")
        hc.gauge("degraded", NEVER_IMPORT)
        self._hosts = hosts
        self._changed = changed
        self.has_traffic = has_traffic
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.keepalive = keepalive  # the cluster's upstream_connection_options.tcp_keepalive
        #: the cluster's ``header_key_format.proper_case_words``: check requests say so too
        self.proper_case_headers = proper_case_headers
        self.rng = rng
        self._sessions: dict[Host, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._cancel = trio.CancelScope()

    def changed(self) -> None:
        self.healthy_gauge.value = sum(1 for h in self._hosts() if not h.hc_failed)
        self._changed()

    async def connect(self, host: Host) -> trio.abc.Stream:
        with trio.fail_after(self.connect_timeout):
            plain = await trio.open_tcp_stream(*host.address)
            if self.keepalive is not None:
                set_keepalive(plain.socket, self.keepalive)
            stream: trio.abc.Stream = plain
            if self.tls is not None:
                tls_stream = trio.SSLStream(
                    stream, self.tls.context, server_hostname=self.tls.sni or None
                )
                await tls_stream.do_handshake()
                stream = tls_stream
        return stream

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check every host once (the cluster is ready then), and keep checking until
        ``stop``; hosts that join later get a session through ``hosts_changed``."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with trio.open_nursery() as first:
                    for host in list(self._hosts()):
                        first.start_soon(self._start, nursery, host)
                self.changed()
                task_status.started()
        self._nursery = None

    async def _start(self, nursery: trio.Nursery, host: Host) -> None:
        await nursery.start(self._session, host)

    def hosts_changed(self) -> None:
        """Sessions for new hosts (they start failed until checked); gone hosts' end."""
        current = set(self._hosts())
        for host, scope in list(self._sessions.items()):
            if host not in current:
                scope.cancel()
                del self._sessions[host]
        if self._nursery is not None:
            for host in current:
                if host not in self._sessions:
                    self._nursery.start_soon(self._session, host)
        self.changed()

    async def _session(
        self, host: Host, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        session = _Session(self, host)
        with trio.CancelScope() as scope:
            self._sessions[host] = scope
            try:
                c = self.config
                if c.initial_jitter:
                    await trio.sleep(c.initial_jitter * self.rng())
                await session.check_once()
                task_status.started()
                while True:
                    await trio.sleep(session.next_interval())
                    await session.check_once()
            finally:
                await session.close()
                if self._sessions.get(host) is scope:
                    del self._sessions[host]

    def stop(self) -> None:
        self._cancel.cancel()


def parse_health_checks(items: Sequence[Mapping[str, Any]]) -> HealthCheckConfig | None:
    """A cluster's ``health_checks``: one is built; more are refused."""
    if not items:
        return None
    if len(items) > 1:
        raise ConfigError("more than one health check is not supported yet", path="health_checks")
    try:
        return HealthCheckConfig.from_proto(items[0])
    except ConfigError as exc:
        raise exc.at("health_checks[0]") from None


__all__ = ["HealthCheckConfig", "HealthChecker", "parse_health_checks"]
