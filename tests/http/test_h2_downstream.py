"""HTTP/2 from the client to the proxy: prior knowledge, TLS with ALPN, bodies, GOAWAY on a
drain (a listener removed, a shutdown)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable

import hyperframe.frame as hf
import pytest
import trio
import trustme

from tests.h2client import H2Client, H2Error
from tests.h2spec.raw import Raw
from tests.support import Backend, Proxy, file_access_log, free_ports, simple_config, start_proxy
from tests.xds.resources import CDS, LDS, RDS, bootstrap, cluster, listener, route
from tests.xds.test_ads import served
from trioproxy.testing.xds_server import AdsServer

CURL = shutil.which("curl")


async def test_h2c_prior_knowledge_requests_and_bodies(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await H2Client.connect(proxy.port)
    nursery.start_soon(client.reader)
    status, headers, body = await client.request("GET", "/hello?x=1")
    assert status == 200 and body == b"backend"
    assert headers["server"] == "envoy"
    big = bytes(range(256)) * 8192  # 2 MiB: many windows' worth, so flow control is used
    async with trio.open_nursery() as many:
        for i in range(5):
            many.start_soon(client.request, "POST", f"/upload/{i}", big)
    status, _, _ = await client.request("POST", "/upload/last", big)
    assert status == 200
    uploads = [r for r in backend.requests if r.target.startswith("/upload")]
    assert len(uploads) == 6 and all(r.body == big for r in uploads)
    first = backend.requests[0]
    hdrs = dict(first.headers)
    assert first.target == "/hello?x=1" and hdrs["host"].startswith("localhost")
    assert hdrs["x-forwarded-proto"] == "http"
    assert proxy.stat("http.ingress_http.downstream_rq_http2_total") == 7
    assert proxy.stat("http.ingress_http.downstream_cx_http2_total") == 1
    await client.aclose()


async def test_h1_still_served_on_an_auto_listener(nursery: trio.Nursery) -> None:
    from tests.support import Client

    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Client.connect(proxy.port)
    resp, body = await client.request("GET", "/")
    assert resp.status_code == 200 and body == b"backend"
    await client.aclose()
    assert proxy.stat("http.ingress_http.downstream_rq_http1_total") == 1


async def test_goaway_on_drain_lets_the_stream_in_flight_finish(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(rec: object) -> object:
        from tests.support import Reply

        await release.wait()
        return Reply(body=b"late")

    backend = Backend(handler=slow)  # type: ignore[arg-type]
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]), drain_time=5.0)
    client = await H2Client.connect(proxy.port)
    nursery.start_soon(client.reader)
    result: list[object] = []

    async def one() -> None:
        result.append(await client.request("GET", "/slow"))

    async with trio.open_nursery() as inner:
        inner.start_soon(one)
        with trio.fail_after(5):
            while not backend.requests:  # noqa: ASYNC110 - the backend records it
                await trio.sleep(0.01)
        proxy.server.request_shutdown()
        with trio.fail_after(5):
            while not client.closed:  # noqa: ASYNC110 - GOAWAY arrives on the reader
                await trio.sleep(0.01)
        release.set()
    assert result[0][0] == 200 and result[0][2] == b"late"  # type: ignore[index]
    await client.aclose()


async def _goaways_until_closed(
    client: Raw, after: Callable[[], object] | None = None
) -> list[tuple[float, int | None]]:
    """Each GOAWAY NO_ERROR the proxy sends until it closes, as (seconds since the call, last
    stream id), and (seconds, ``None``) for the close; ``after``: called 0.4 s after the
    first GOAWAY."""
    t0 = trio.current_time()
    got: list[tuple[float, int | None]] = []
    with trio.fail_after(8):
        while not got or got[-1][1] is not None:
            f = await client.next_frame(timeout=8)
            if f is None:
                got.append((trio.current_time() - t0, None))
            elif isinstance(f, hf.GoAwayFrame):
                assert f.error_code == 0
                got.append((trio.current_time() - t0, f.last_stream_id))
                if after is not None and len(got) == 1:
                    await trio.sleep(0.4)
                    after()
    return got


@contextlib.asynccontextmanager
async def _xds_listener(
    nursery: trio.Nursery, hcm: dict[str, object], drain_time: float
) -> AsyncIterator[tuple[Proxy, AdsServer, Raw]]:
    """A proxy whose listener (with ``hcm`` set on its connection manager) comes from an ADS
    server, and an HTTP/2 client that has had one response on it; closed on leaving."""
    backend = Backend()
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    ads = AdsServer()
    ads.start()
    try:
        proxy = await start_proxy(nursery, bootstrap(ads.port), drain_time=drain_time)
        lds = listener("l", lport)
        lds["filter_chains"][0]["filters"][0]["typed_config"].update(hcm)
        ads.set(CDS, "1", [cluster("c", bport)])
        ads.set(LDS, "1", [lds])
        ads.set(RDS, "1", [route("local_route", "c")])
        await served(lport, b"backend")
        client = await Raw.connect(lport)
        try:
            await client.send(client.request_headers(1))
            assert await client.response_status(1) == 200
            yield proxy, ads, client
        finally:
            await client.aclose()
    finally:
        ads.stop()


async def test_a_removed_listener_closes_its_http2_connections_in_two_goaways(
    nursery: trio.Nursery,
) -> None:
    """A listener update or removal starts Envoy's graceful close at once: GOAWAY 2^31-1,
    the final GOAWAY ``drain_timeout`` later, the close 1 s after it."""
    hcm: dict[str, object] = {"drain_timeout": "0.5s"}
    async with _xds_listener(nursery, hcm, drain_time=5.0) as (proxy, ads, client):
        ads.set(LDS, "2", [])
        got = await _goaways_until_closed(client)
    (t1, first), (t2, final), (t3, end) = got
    assert first == 2**31 - 1 and final == 1 and end is None
    assert t1 < 1 and 0.4 <= t2 - t1 < 1 and 0.9 <= t3 - t2 < 1.5
    assert proxy.stat("http.http.downstream_cx_drain_close") == 1
    assert proxy.stat("http.http.http2.goaway_sent") == 1


async def test_shutdown_sends_an_idle_connection_the_final_goaway_at_once(
    nursery: trio.Nursery,
) -> None:
    """A shutdown does not announce: idle connections close at once, as HTTP/1.1 ones do."""
    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]), drain_time=5.0)
    client = await Raw.connect(proxy.port)
    try:
        await client.send(client.request_headers(1))
        assert await client.response_status(1) == 200
        proxy.server.request_shutdown()
        got = await _goaways_until_closed(client)  # the client does not close first
    finally:
        await client.aclose()
    (t1, final), (t2, end) = got
    assert final == 1 and end is None
    assert t2 - t1 < 0.5  # closed once the GOAWAY is out, without the delayed close
    assert proxy.stat("http.ingress_http.downstream_cx_drain_close") == 1
    assert proxy.stat("http.ingress_http.http2.goaway_sent") == 1
    assert proxy.stat("http.ingress_http.downstream_cx_delayed_close_timeout") == 0


async def test_a_listener_removed_after_the_idle_timeout_announced_keeps_that_schedule(
    nursery: trio.Nursery,
) -> None:
    """The idle timeout has already announced the close: the listener's removal does not
    announce it again nor push the final GOAWAY back (Envoy starts its drain sequence only
    once). Found by review."""
    hcm: dict[str, object] = {
        "drain_timeout": "1s",
        "common_http_protocol_options": {"idle_timeout": "0.2s"},
    }
    async with _xds_listener(nursery, hcm, drain_time=10.0) as (_, ads, client):
        got = await _goaways_until_closed(client, after=lambda: ads.set(LDS, "2", []))
    (t1, first), (t2, final), (_, end) = got
    assert first == 2**31 - 1 and final == 1 and end is None
    assert 0.8 <= t2 - t1 < 1.3  # drain_timeout after the first, not after the removal


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_http2_over_tls_with_alpn(nursery: trio.Nursery, tmp_path: object) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    backend = Backend()
    port = await nursery.start(backend.serve)
    key = cert.private_key_pem.bytes().decode()
    certs = "".join(b.bytes().decode() for b in cert.cert_chain_pems)
    tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2, http/1.1]
          tls_certificates:
          - certificate_chain: {{inline_string: {json.dumps(certs)}}}
            private_key: {{inline_string: {json.dumps(key)}}}
"""
    text = simple_config([port]).replace(
        "    filter_chains:\n    - filters:",
        "    filter_chains:\n    -"
        + tls.replace("\n    ", "\n      ").rstrip()
        + "\n      filters:",
    )
    proxy = await start_proxy(nursery, text)
    ca_path = f"{tmp_path}/ca.pem"
    ca.cert_pem.write_to_path(ca_path)
    assert CURL is not None
    done = await trio.run_process(
        [
            CURL,
            "-sS",
            "--http2",
            "--cacert",
            ca_path,
            "-o",
            "-",
            "-w",
            "%{http_version}",
            f"https://localhost:{proxy.port}/tls",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"backend2"  # the body, then curl's "2" for HTTP/2
    assert proxy.stat("http.ingress_http.downstream_rq_http2_total") == 1


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_http2_prior_knowledge(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    assert CURL is not None
    done = await trio.run_process(
        [
            CURL,
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "-",
            "-w",
            " %{http_version}",
            f"http://127.0.0.1:{proxy.port}/pk",
        ],
        capture_stdout=True,
    )
    assert done.stdout == b"backend 2"
    assert backend.requests[0].target == "/pk"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
async def test_h2load_through_the_proxy(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    done = await trio.run_process(
        ["h2load", "-n", "200", "-c", "4", "-m", "5", f"http://127.0.0.1:{proxy.port}/load"],
        capture_stdout=True,
    )
    out = done.stdout.decode()
    assert "200 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 200 2xx" in out, out


@pytest.mark.parametrize("bad", ["a\x00b", "a\rb", "a\nb", " leading", "trailing "])
async def test_h2_header_values_never_smuggle_into_http1(nursery: trio.Nursery, bad: str) -> None:
    """CR, LF, NUL (and surrounding whitespace) in an HTTP/2 header value: the stream is
    refused and nothing reaches the HTTP/1.1 upstream."""
    from tests.h2spec.raw import PROTOCOL_ERROR, Raw, frame_bytes

    backend = Backend()
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Raw.connect(proxy.port)
    try:
        block = client.headers_block([("x-smuggle", bad)])
        await client.send(frame_bytes(0x1, 0x5, 1, block))
        with trio.fail_after(5):
            assert await client.stream_error(PROTOCOL_ERROR)
    finally:
        await client.aclose()
    assert backend.requests == []


async def test_client_goaway_lets_open_streams_finish(nursery: trio.Nursery) -> None:
    """RFC 9113 §6.8: after the client's GOAWAY its open streams still get their responses
    (h2 alone would drop them), then the connection closes."""
    from tests.h2spec.raw import Raw, frame_bytes
    from tests.support import Reply

    backend = Backend(handler=lambda rec: Reply(delay=0.3))
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await Raw.connect(proxy.port)
    try:
        await client.send(client.request_headers(1))
        await client.send(frame_bytes(0x7, 0, 0, (0).to_bytes(4, "big") * 2))  # GOAWAY
        with trio.fail_after(5):
            assert await client.response_status(1) == 200
            while await client.next_frame() is not None:
                pass
        assert client.closed
    finally:
        await client.aclose()
    assert proxy.stat("http.ingress_http.downstream_rq_filter_error") == 0


async def test_a_client_that_reads_late_gets_the_whole_large_response(
    nursery: trio.Nursery,
) -> None:
    """A client with windows that never stop the proxy, reading only after a while: the
    proxy's writer is stuck on a full socket meanwhile and the response stream waits for it
    (back-pressure) instead of queuing the body; once the client reads, every byte arrives."""
    import h2.settings

    from tests.support import Reply

    chunk = bytes(range(256)) * 256  # 64 KiB
    backend = Backend(handler=lambda rec: Reply(body=[chunk] * 64, chunked=True))  # 4 MiB
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(nursery, simple_config([port]))
    client = await H2Client.connect(proxy.port)
    big = 2**31 - 1
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big})
    client.conn.increment_flow_control_window(big - 65535)
    await client._flush()
    result: list[tuple[int, bytes]] = []

    async def get(done: trio.CancelScope) -> None:
        status, _, body = await client.request("GET", "/large")
        result.append((status, body))
        done.cancel()  # (the reader too)

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            inner.start_soon(get, inner.cancel_scope)
            await trio.sleep(0.5)  # not reading: the proxy's socket buffer fills
            inner.start_soon(client.reader)
    assert result == [(200, chunk * 64)]
    await client.aclose()


async def test_streams_cut_off_by_the_client_closing_are_logged_dc(
    nursery: trio.Nursery, tmp_path: object
) -> None:
    from pathlib import Path

    from tests.support import Reply

    log = Path(str(tmp_path)) / "access.log"
    backend = Backend(handler=lambda rec: Reply(delay=2.0))
    port = await nursery.start(backend.serve)
    access_log = file_access_log(log, "%RESPONSE_FLAGS%")
    proxy = await start_proxy(nursery, simple_config([port], hcm_extra=access_log))
    client = await H2Client.connect(proxy.port)

    async def request() -> None:
        with contextlib.suppress(H2Error):  # (the connection is gone before the answer)
            await client.request("GET", "/slow")

    async with trio.open_nursery() as inner:
        inner.start_soon(client.reader)
        for _ in range(2):
            inner.start_soon(request)
        await trio.sleep(0.3)
        await client.aclose()  # both streams are in flight
    with trio.fail_after(5):
        while not log.exists() or log.read_text().count("\n") < 2:  # noqa: ASYNC110 (a file)
            await trio.sleep(0.02)
    assert log.read_text().split() == ["DC", "DC"]


async def test_a_response_sent_before_the_request_ends_resets_the_stream_no_error(
    nursery: trio.Nursery,
) -> None:
    """RFC 9113 §8.1, as Envoy: the whole response goes out, then RST_STREAM NO_ERROR tells
    the client to stop sending the body; the stream no longer counts against its limit."""
    import hyperframe.frame as hf

    from tests.h2spec.raw import NO_ERROR, Raw, frame_bytes

    routes = """
              - match: {prefix: "/"}
                direct_response: {status: 413, body: {inline_string: "too much"}}"""
    proxy = await start_proxy(nursery, simple_config([1], routes=routes))
    client = await Raw.connect(proxy.port)
    try:
        await client.send(client.request_headers(1, end_stream=False, method="POST"))
        frames: list[hf.Frame] = []
        with trio.fail_after(5):
            while not any(isinstance(f, hf.RstStreamFrame) for f in frames):
                f = await client.next_frame()
                assert f is not None, frames
                if f.stream_id == 1:
                    frames.append(f)
        kinds = [type(f).__name__ for f in frames]
        assert kinds[0] == "HeadersFrame" and frames[0].decoded[":status"] == "413"  # type: ignore[attr-defined]
        assert "END_STREAM" in frames[-2].flags and kinds[-1] == "RstStreamFrame"
        assert frames[-1].error_code == NO_ERROR
        # the body the client had in flight is taken and ignored; the connection goes on
        await client.send(frame_bytes(0x0, 0x1, 1, b"late body"))  # DATA, END_STREAM
        assert await client.ping_answered()
    finally:
        await client.aclose()
