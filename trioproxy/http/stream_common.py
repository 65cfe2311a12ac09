"""Per-stream steps shared by the HTTP/1.1 and HTTP/2 connection managers.

Each is the same whatever the codec: running the request-data and request-trailer phases over
a body, the response-data phases over a response's body, counting a response's status class,
starting the stream's trace span, and the end-of-stream log (the span's tags and end,
filters' ``on_log``, then access loggers; none may fail the stream).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator

from trioproxy.http.conn_manager_config import FilterChain, HcmConfig, HcmStats, ListenerHttpStats
from trioproxy.http.filter import HttpStream, LocalReply, Response
from trioproxy.http.local_reply import REQUEST_TIMEOUT, STREAM_TIMEOUT, STREAM_TIMEOUT_GATEWAY
from trioproxy.tracing.http import HttpTracing

log = logging.getLogger("trioproxy.http.conn_manager")


async def filtered_request_body(
    chain: FilterChain, stream: HttpStream, body: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """``body`` through the request-data phases, then the request-trailer phases."""
    async for chunk in body:
        for phase in chain.request_data:
            chunk = await phase(stream, chunk, False)
        if chunk:
            yield chunk
    last = b""
    for phase in chain.request_data:
        last = await phase(stream, last, True)
    if last:
        yield last
    if stream.request_trailers is not None:
        for tphase in chain.request_trailers:
            await tphase(stream, stream.request_trailers)


async def filtered_response_body(
    chain: FilterChain, stream: HttpStream, resp: Response
) -> AsyncGenerator[bytes, None]:
    """A response's body (``initial_body``, then ``body``) through the response-data phases,
    ending with what the phases give for the end of the stream; empty chunks are skipped.
    Trailers are the caller's: each codec sends (and filters) them its own way."""
    phases = chain.response_data

    async def through(chunk: bytes) -> bytes:
        for phase in phases:
            chunk = await phase(stream, chunk, False)
        return chunk

    # (no inner generator: closing this one must leave nothing unclosed behind it)
    if resp.initial_body:
        chunk = await through(resp.initial_body)
        if chunk:
            yield chunk
    if resp.body is not None:
        async for piece in resp.body:
            chunk = await through(piece)
            if chunk:
                yield chunk
    last = b""
    for phase in phases:
        last = await phase(stream, last, True)
    if last:
        yield last


def count_status(st: HcmStats, ls: ListenerHttpStats, status: int) -> None:
    """``downstream_rq_<class>xx`` and ``downstream_rq_completed``, both scopes."""
    klass = status // 100
    if klass == 2:
        st.downstream_rq_2xx.value += 1
        ls.downstream_rq_2xx.value += 1
    elif klass == 4:
        st.downstream_rq_4xx.value += 1
        ls.downstream_rq_4xx.value += 1
    elif klass == 5:
        st.downstream_rq_5xx.value += 1
        ls.downstream_rq_5xx.value += 1
    elif klass == 3:
        st.downstream_rq_3xx.value += 1
        ls.downstream_rq_3xx.value += 1
    else:
        st.downstream_rq_1xx.value += 1
        ls.downstream_rq_1xx.value += 1
    st.downstream_rq_completed.value += 1
    ls.downstream_rq_completed.value += 1


def timeout_reply(
    st: HcmStats, stream: HttpStream, expired: str, request_whole: bool
) -> LocalReply:
    """What a stream timeout answers (``expired``: "request" or "idle"), counted, as Envoy's
    ``onRequestTimeout``/``onIdleTimeout``: the stream idle timeout is ``SI`` and 504 once
    the request was whole (the wait was the upstream's), 408 before; the request timeout 408.
    Once the response has started, the caller resets the stream instead, with these details."""
    if expired == "request":
        st.downstream_rq_timeout.value += 1
        return REQUEST_TIMEOUT
    st.downstream_rq_idle_timeout.value += 1
    stream.info.response_flags.add("SI")
    return STREAM_TIMEOUT_GATEWAY if request_whole else STREAM_TIMEOUT


def start_span(tracing: HttpTracing, stream: HttpStream) -> None:
    """Decide and start the stream's span; a failing tracer never fails the request."""
    try:
        stream.span = tracing.start(stream)
    except Exception:
        log.exception("tracer failed to start a span")


def log_stream(cfg: HcmConfig, stream: HttpStream) -> None:
    span = stream.span
    if span is not None and cfg.tracing is not None:
        try:
            cfg.tracing.finish(stream, span)
        except Exception:
            log.exception("tracer failed to finish a span")
    for phase in cfg.chain.log:
        try:
            phase(stream)
        except Exception:
            log.exception("HTTP filter log phase failed")
    for logger in cfg.access_loggers:
        try:
            logger.log(stream.info)
        except Exception:
            log.exception("access logger failed")
