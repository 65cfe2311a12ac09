"""A harness for HTTP filter authors: run filters on a request in memory, no sockets.

``FilterHarness`` builds the filters from the same YAML an Envoy config would hold (through the
plugin registry, so a plugin's factory, config conversion and per-route config are exercised),
compiles them into the connection manager's chain, and puts a scripted upstream at its end in
place of the router. ``request()`` drives one request through the phases in the connection
manager's order — request headers, request body and trailers, the upstream, response headers,
body and trailers, then ``on_log`` — and returns what the client would get, with what reached
the upstream and the stats::

    from trioproxy.testing import FilterHarness

    async def test_blocks_without_a_key() -> None:
        h = FilterHarness('''
          - name: example.api_key
            typed_config: {...}
        ''')
        result = await h.request("GET", "/orders")
        assert result.status == 401
        assert h.upstream.requests == []
        assert h.stat("http.test.api_key.denied") == 1

Time: filters sleep and read ``trio.current_time()`` as usual; under pytest-trio, asking for
the ``autojump_clock`` fixture makes delays pass instantly (``mock_clock`` to move it by hand
with ``mock_clock.jump(seconds)``), so a 30 s fault delay is testable in no time.

What the harness leaves out, on purpose: HTTP/1.1 and HTTP/2 framing, header normalisation and
the limits of DEFAULTS.md (the connection manager's job; test them with a real client), and
the router (routes are matched so ``stream.route`` and per-route configs work, but the request
goes to the scripted upstream).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import trio
import yaml

from trioproxy.http.conn_manager_config import compile_chain
from trioproxy.http.filter import (
    ConnectionInfo,
    FactoryContext,
    HttpFilter,
    HttpStream,
    LocalReply,
    Response,
    TerminalFilter,
)
from trioproxy.http.headers import Headers
from trioproxy.http.local_reply import for_request, reply_headers
from trioproxy.http.route_table import RouteConfiguration
from trioproxy.http.stream_common import filtered_request_body, filtered_response_body
from trioproxy.http.stream_info import StreamInfo
from trioproxy.netutil import address_string
from trioproxy.registry import build_registry
from trioproxy.stats import Store
from trioproxy.upstream.cluster_manager import ClusterManager

DEFAULT_ROUTES = """
virtual_hosts:
- name: test
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: upstream}
"""


@attrs.define
class UpstreamRequest:
    """What reached the upstream."""

    method: str
    path: str
    headers: Headers
    body: bytes
    trailers: Headers | None


@attrs.define
class Scripted:
    """The upstream's answer: a status, headers, body chunks, trailers."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: Sequence[bytes] = (b"ok",)
    trailers: Sequence[tuple[str, str]] | None = None


class ScriptedUpstream(TerminalFilter):
    """Stands in for the router: records requests, answers from ``replies`` in turn (the last
    one repeats) or from ``handler(request)``."""

    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []
        self.replies: list[Scripted] = [Scripted()]
        self.handler: Callable[[UpstreamRequest], Scripted] | None = None

    def respond(
        self,
        status: int = 200,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | Sequence[bytes] = b"ok",
        trailers: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Answer every following request this way."""
        chunks = [body] if isinstance(body, bytes) else list(body)
        self.replies = [Scripted(status, headers, chunks, trailers)]

    async def serve(self, stream: HttpStream, body: AsyncIterator[bytes] | None) -> Response:
        data = b""
        if body is not None:
            async for chunk in body:
                data += chunk
        h = stream.request_headers
        request = UpstreamRequest(
            h.get(":method") or "", h.get(":path") or "", h, data, stream.request_trailers
        )
        self.requests.append(request)
        if self.handler is not None:
            reply = self.handler(request)
        else:
            reply = self.replies[0]
            if len(self.replies) > 1:
                self.replies.pop(0)
        headers = Headers([(":status", str(reply.status)), *reply.headers])
        if "content-length" not in headers and reply.trailers is None:
            headers.set("content-length", str(sum(len(c) for c in reply.body)))

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in reply.body:
                await trio.lowlevel.checkpoint()
                yield chunk

        trailers = Headers(list(reply.trailers)) if reply.trailers is not None else None
        return Response(headers, chunks(), trailers)


@attrs.define
class Result:
    """What the client got."""

    status: int
    headers: Headers
    body: bytes
    trailers: Headers | None
    #: The filter's local reply, when one answered (``None`` when the upstream did).
    local_reply: LocalReply | None
    info: StreamInfo
    stream: HttpStream

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class FilterHarness:
    """HTTP filters from YAML (a list of ``http_filters`` entries), without the router.

    ``routes``: a ``RouteConfiguration`` in YAML (default: everything to cluster
    ``upstream``), for per-route configs. ``plugins``: extra plugin modules or objects, for a
    plugin not installed through the entry-point group. ``stat_prefix``: the connection
    manager's, so stats read ``http.<stat_prefix>.<filter's names>``.
    """

    def __init__(
        self,
        filters_yaml: str,
        *,
        routes: str = DEFAULT_ROUTES,
        plugins: Sequence[object] = (),
        stat_prefix: str = "test",
        remote_address: tuple[str, int] = ("10.0.0.1", 40000),
        local_address: tuple[str, int] = ("10.0.0.2", 10000),
    ) -> None:
        entries = yaml.safe_load(textwrap.dedent(filters_yaml)) or []
        if not isinstance(entries, list):
            raise TypeError("filters_yaml must be a YAML list of http_filters entries")
        self.store = Store()
        self.registry = build_registry(extra=plugins)
        self.cluster_manager = ClusterManager((), self.store)
        ctx = FactoryContext(
            stats=self.store.scope(f"http.{stat_prefix}."),
            cluster_manager=self.cluster_manager,
            store=self.store,
        )
        built: list[tuple[str, object]] = []
        per_route: dict[str, Callable[[Any], Any]] = {}
        for entry in entries:
            factory, raw = self.registry.http_filters.lookup(entry)
            filt = factory.create(factory.config_type(raw), ctx)
            name = entry.get("name", factory.name)
            built.append((name, filt))
            if factory.per_route_config_type is not None:
                per_route[name] = factory.per_route_config_type
        self.upstream = ScriptedUpstream()
        built.append(("upstream", self.upstream))
        self.chain = compile_chain(built)
        self.filters: list[HttpFilter] = [f for _, f in built[:-1]]  # type: ignore[misc]

        def convert(name: str, raw: Any) -> Any:
            conv = per_route.get(name)
            return conv({k: v for k, v in raw.items() if k != "@type"}) if conv else raw

        self.routes = RouteConfiguration.from_proto(
            yaml.safe_load(textwrap.dedent(routes)), per_filter_config=convert
        )
        self.remote_address = remote_address
        self.local_address = local_address

    def stat(self, name: str) -> int:
        """A counter's or gauge's value (0 when it was never created)."""
        for c in self.store.counters():
            if c.name == name:
                return c.value
        for g in self.store.gauges():
            if g.name == name:
                return g.value
        return 0

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | Sequence[bytes] | None = None,
        trailers: Sequence[tuple[str, str]] | None = None,
        *,
        authority: str = "example.com",
        peer_certificate: dict[str, Any] | None = None,
    ) -> Result:
        """One request through the chain; ``body`` may be given in chunks."""
        h = Headers([(":method", method), (":path", path), (":authority", authority)])
        h.items().append((":scheme", "http"))
        for k, v in headers:
            h.add(k.lower(), v)
        remote = address_string(self.remote_address)
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=trio.current_time(),
            downstream_remote_address=remote,
            downstream_direct_remote_address=remote,
            downstream_local_address=address_string(self.local_address),
        )
        info.request_headers = h
        conn = ConnectionInfo(
            remote_address=self.remote_address,
            local_address=self.local_address,
            tls=peer_certificate is not None,
            peer_certificate=peer_certificate,
        )
        stream = HttpStream(request_headers=h, info=info, connection=conn)
        routes = self.routes
        stream._router = lambda hs: routes.route(hs, 0)
        chunks = [body] if isinstance(body, bytes) else list(body or ())
        stream.end_stream = not chunks and trailers is None
        try:
            return await self._run(stream, chunks, trailers)
        finally:
            info.end_monotonic = trio.current_time()
            for log in self.chain.log:
                log(stream)

    async def _run(
        self, stream: HttpStream, chunks: list[bytes], trailers: Sequence[tuple[str, str]] | None
    ) -> Result:
        chain = self.chain
        for phase in chain.request_headers:
            reply = await phase(stream, stream.request_headers)
            if reply is not None:
                return await self._local(stream, reply)
        body: AsyncIterator[bytes] | None = None
        if not stream.end_stream:

            async def raw() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    stream.info.bytes_received += len(chunk)
                    yield chunk
                if trailers is not None:
                    stream.request_trailers = Headers(list(trailers))

            body = raw()
            if chain.request_data or chain.request_trailers:
                body = filtered_request_body(chain, stream, body)
        resp = await chain.terminal.serve(stream, body)
        if isinstance(resp, LocalReply):
            return await self._local(stream, resp)
        headers = resp.headers
        stream.response_headers = headers
        for hphase in chain.response_headers:
            await hphase(stream, headers)
        if chain.response_length_changes:
            headers.remove("content-length")
        out = b"".join([c async for c in filtered_response_body(self.chain, stream, resp)])
        if resp.trailers is not None:
            stream.response_trailers = resp.trailers
            for tphase in chain.response_trailers:
                await tphase(stream, resp.trailers)
        status = int(headers.get(":status") or 0)
        stream.info.response_code = status
        stream.info.response_code_details = stream.info.response_code_details or "via_upstream"
        stream.info.bytes_sent = len(out)
        return Result(status, headers, out, resp.trailers, None, stream.info, stream)

    async def _local(self, stream: HttpStream, reply: LocalReply) -> Result:
        """A local reply, as the connection manager sends one (response-header phases run)."""
        sent = for_request(reply, stream.request_headers)
        headers = reply_headers(sent, "envoy", stream.info.start_time)
        if sent.flag:
            stream.info.response_flags.add(sent.flag)
        stream.info.response_code_details = sent.details or "via_local_reply"
        stream.response_headers = headers
        for phase in self.chain.response_headers:
            await phase(stream, headers)
        stream.info.response_code = sent.status
        return Result(sent.status, headers, sent.body, None, reply, stream.info, stream)


__all__ = ["FilterHarness", "Result", "Scripted", "ScriptedUpstream", "UpstreamRequest"]
