"""``local_reply_config`` against Envoy 1.40: which replies its mappers rewrite (status, body,
headers), the body formats (text and JSON, ``%LOCAL_REPLY_BODY%``), gRPC requests, requests
that do not parse, and what the access log records of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.support import file_access_log

from .harness import (
    CaseResult,
    build_request,
    compare,
    find_envoy,
    free_port,
    http_config,
    run_case,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

ROUTES = """
- match: {prefix: "/api"}
  route: {cluster: backend}
- match: {prefix: "/dead"}
  route: {cluster: dead}
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: "hi"}}
- match: {prefix: "/teapot"}
  direct_response: {status: 418}
- match: {prefix: "/old"}
  redirect: {path_redirect: /new}
- match: {prefix: "/odd"}
  direct_response: {status: 429, body: {inline_string: "a~b é 100% {x}"}}
- match: {prefix: "/nocluster"}
  route: {cluster_header: x-cluster}
"""
FAULT = """
- name: envoy.filters.http.fault
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    abort: {header_abort: {}, percentage: {numerator: 100}}
"""

LOCAL_REPLY = """
local_reply_config:
  mappers:
  - filter: {response_flag_filter: {flags: [NC]}}
    status_code: 502
    body: {inline_string: "no such cluster"}
  - filter:
      status_code_filter:
        comparison: {op: EQ, value: {default_value: 503, runtime_key: lr.a}}
    status_code: 401
    body: {inline_string: "not allowed"}
    headers_to_add:
    - header: {key: x-mapped, value: "yes"}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
  - filter:
      status_code_filter:
        comparison: {op: EQ, value: {default_value: 404, runtime_key: lr.b}}
    body_format_override:
      json_format: {status: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%", path: "%REQ(:path)%"}
  - filter:
      status_code_filter:
        comparison: {op: EQ, value: {default_value: 418, runtime_key: lr.c}}
    body: {inline_string: "short and stout"}
    body_format_override:
      text_format: "<%LOCAL_REPLY_BODY%>"
      content_type: "text/html; charset=UTF-8"
  body_format:
    text_format: "%LOCAL_REPLY_BODY%:%RESPONSE_CODE%:%REQ(:path)%:%RESPONSE_CODE_DETAILS%\\n"
"""

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
REQUESTS = [
    build_request("GET", "/api/ok"),  # from upstream: never rewritten
    build_request("GET", "/nowhere"),  # 404: the JSON override
    build_request("GET", "/dead"),  # 503 UF: mapped to 401 with a body and a header
    build_request("GET", "/direct"),  # 200 direct response: the default body format
    build_request("GET", "/teapot"),  # 418 without a body: given one, and a content type
    build_request("GET", "/old"),  # a redirect: its empty body formatted too
    build_request("POST", "/nowhere", headers=GRPC, body=b"\0\0\0\0\0"),  # gRPC: 404 as 200
    build_request("POST", "/dead", headers=GRPC, body=b"\0\0\0\0\0"),
    build_request("POST", "/odd", headers=GRPC, body=b"\0\0\0\0\0"),  # grpc-message escapes
    build_request("POST", "/direct", headers=GRPC, body=b"\0\0\0\0\0"),  # gRPC and a 200
    build_request("GET", "/nocluster", headers=[("x-cluster", "nope")]),  # NC: by its flag
    # a fault filter's gRPC abort (a grpc-status of its own), to gRPC and to plain HTTP
    build_request(
        "POST",
        "/api/f",
        headers=[*GRPC, ("x-envoy-fault-abort-grpc-request", "5")],
        body=b"\0\0\0\0\0",
    ),
    build_request("GET", "/api/f", headers=[("x-envoy-fault-abort-grpc-request", "5")]),
    build_request(  # both abort headers: the HTTP status wins
        "POST",
        "/api/f",
        headers=[
            *GRPC,
            ("x-envoy-fault-abort-request", "503"),
            ("x-envoy-fault-abort-grpc-request", "5"),
        ],
        body=b"\0\0\0\0\0",
    ),
    b"GET / HTTP/1.1\r\nHost: example.com\r\nBad Name: x\r\n\r\n",  # does not parse
    build_request("HEAD", "/nowhere"),
]


async def run(kind: str, tmp: Path, dead_port: int, mapped: bool = True) -> tuple[CaseResult, str]:
    await trio.Path(tmp).mkdir()
    log = tmp / "access.log"
    dead = f"""
- name: dead
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: dead
    endpoints:
    - lb_endpoints:
      - endpoint:
          address: {{socket_address: {{address: 127.0.0.1, port_value: {dead_port}}}}}
"""
    log_config = file_access_log(
        log, "%REQ(:path)% %RESPONSE_CODE% %RESPONSE_FLAGS% [%LOCAL_REPLY_BODY%]"
    )
    hcm = (LOCAL_REPLY if mapped else "") + log_config
    config = http_config(ROUTES, hcm_extra=hcm, clusters=dead, http_filters=FAULT)
    result = await run_case(kind, config, REQUESTS)
    return result, await trio.Path(log).read_text()


async def test_local_replies_are_mapped_as_envoy_maps_them(tmp_path: Path) -> None:
    dead_port = free_port()
    envoy, envoy_log = await run("envoy", tmp_path / "envoy", dead_port)
    statuses = [r.status for r in envoy.responses]
    assert statuses == [
        200,
        404,
        401,
        200,
        418,
        301,
        200,
        200,
        200,
        200,
        502,
        200,
        200,
        200,
        400,
        404,
    ]
    ours, our_log = await run("trioproxy", tmp_path / "trioproxy", dead_port)
    for i, (e, t) in enumerate(zip(envoy.responses, ours.responses, strict=True)):
        assert (t.status, t.body) == (e.status, e.body), i
    diffs = compare(envoy, ours)
    assert diffs == [], "\n".join(diffs)
    assert our_log.splitlines() == envoy_log.splitlines()


async def test_local_reply_body_is_empty_in_access_logs_without_a_mapper(tmp_path: Path) -> None:
    dead_port = free_port()
    envoy, envoy_log = await run("envoy", tmp_path / "envoy", dead_port, mapped=False)
    ours, our_log = await run("trioproxy", tmp_path / "trioproxy", dead_port, mapped=False)
    diffs = compare(envoy, ours)
    assert diffs == [], "\n".join(diffs)
    assert our_log.splitlines() == envoy_log.splitlines()
