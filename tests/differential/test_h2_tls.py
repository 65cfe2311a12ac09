"""Envoy and trioproxy side by side for HTTP/2 downstream, in cleartext (h2c prior knowledge)
and over TLS (ALPN h2): what the client gets back and what the HTTP/1.1 upstream sees."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from tests.differential.harness import (
    CaseResult,
    RecordingUpstream,
    Reply,
    Response,
    compare,
    find_envoy,
    get_stat_names,
    run_proxy,
)
from tests.h2client import H2Client

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def template(tls: tuple[Path, Path] | None) -> str:
    transport = ""
    if tls is not None:
        cert, key = tls
        transport = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {TLS}
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}"""
    return f"""
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{listener_port}}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: ingress_http
          codec_type: AUTO
          normalize_path: true  # trioproxy's default (DEFAULTS.md); Envoy's is off
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{transport}
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {{upstream_port}}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
"""


REQUESTS: list[tuple[str, str, bytes, list[tuple[str, str]]]] = [
    ("GET", "/", b"", []),
    ("GET", "/path?q=1", b"", [("user-agent", "diff"), ("x-custom", "a"), ("te", "trailers")]),
    ("POST", "/upload", b"x" * 70_000, [("content-type", "application/octet-stream")]),
    ("POST", "/empty", b"", [("content-length", "0")]),
    ("GET", "/../a/./b//c", b"", []),
]


async def _run(kind: str, tmpl: str, tls: ssl.SSLContext | None) -> CaseResult:
    upstream = RecordingUpstream(
        script=(Reply(headers=(("content-type", "text/plain"), ("x-up", "1"))),)
    )
    listeners = await upstream.listen()
    try:
        async with run_proxy(kind, tmpl, upstream.port) as proxy, trio.open_nursery() as nursery:
            await nursery.start(upstream.serve, listeners)
            client = await H2Client.connect(
                proxy.listener_port, tls=tls, server_hostname="localhost"
            )
            nursery.start_soon(client.reader)
            responses = []
            for method, path, body, headers in REQUESTS:
                status, hdrs, data = await client.request(method, path, body, headers)
                responses.append(
                    Response(status, tuple((k, v) for k, v in hdrs.items() if k != ":status"), data)
                )
            stats = {
                n.replace(f"_{proxy.listener_port}.", "_<listener_port>.")
                for n in await get_stat_names(proxy.admin_port)
            }
            await client.aclose()
            nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
    return CaseResult(kind, tuple(responses), tuple(upstream.requests), frozenset(stats))


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-over-tls"])
async def test_http2_downstream_matches_envoy(tls: bool, tmp_path: Path) -> None:
    ctx = None
    paths = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        paths = (tmp_path / "cert.pem", tmp_path / "key.pem")
        cert.cert_chain_pems[0].write_to_path(str(paths[0]))
        cert.private_key_pem.write_to_path(str(paths[1]))
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.set_alpn_protocols(["h2"])
    tmpl = template(paths)
    envoy = await _run("envoy", tmpl, ctx)
    ours = await _run("trioproxy", tmpl, ctx)
    # the authority carries each proxy's own listener port
    diffs = compare(envoy, ours, ignore=("x-forwarded-for", "host"))
    assert diffs == [], "\n".join(diffs)
