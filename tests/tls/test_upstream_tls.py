"""TLS to upstreams from the HTTP pools and tcp_proxy: verification, SNI, client
certificates, ALPN h2 (gRPC over TLS)."""

from __future__ import annotations

import base64
import ssl
from concurrent import futures
from functools import partial
from pathlib import Path

import grpc
import h11
import pytest
import trio

from tests.support import Client, file_access_log, simple_config, start_proxy
from tests.tls.pki import CA, Leaf

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_socket(ca: CA | None, sni: str = "", client: Leaf | None = None) -> str:
    indent = " " * 10
    common = []
    if ca is not None:
        common.append(
            f"{indent}validation_context: {{trusted_ca: {{inline_bytes: {_b64(ca.pem)}}}}}"
        )
    if client is not None:
        common.append(
            f"{indent}tls_certificates:\n"
            f"{indent}- certificate_chain: {{inline_bytes: {_b64(client.cert_pem)}}}\n"
            f"{indent}  private_key: {{inline_bytes: {_b64(client.key_pem)}}}"
        )
    body = "\n".join(common) or f"{indent}{{}}"
    return f"""
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": {UPSTREAM_TLS}
    sni: {sni or "backend.example.com"}
    common_tls_context:
{body}
"""


async def https_backend(
    nursery: trio.Nursery, server: Leaf, tmp: Path, *, require_client: CA | None = None
) -> tuple[int, list[dict[str, object]]]:
    """An HTTPS server answering 'tls-backend'; records SNI, ALPN and the client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*server.write(tmp, "backend"))
    ctx.set_alpn_protocols(["http/1.1"])
    if require_client is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=require_client.pem.decode())
    seen: list[dict[str, object]] = []
    sni_seen: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _: sni_seen.append(name)  # type: ignore[assignment]

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    seen.append(
                        {
                            "sni": sni_seen[-1] if sni_seen else None,
                            "alpn": stream.selected_alpn_protocol(),
                            "client": stream.getpeercert(),
                        }
                    )
                elif isinstance(event, h11.EndOfMessage):
                    body = b"tls-backend"
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=200, headers=[("content-length", str(len(body)))]
                            )
                        )
                        + conn.send(h11.Data(data=body))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return

    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, handler, 0, ctx, host="127.0.0.1")
    )
    return int(listeners[0].transport_listener.socket.getsockname()[1]), seen


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = CA()
    return {
        "ca": ca,
        "server": ca.issue("backend.example.com", dns=("backend.example.com",)),
        "client": ca.issue("proxy", uris=("spiffe://cluster.local/ns/edge/sa/proxy",)),
        "tmp": tmp_path,
    }


async def _get(port: int) -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        resp, body = await client.request("GET", "/")
        return int(resp.status_code), body
    finally:
        await client.aclose()


async def test_https_upstream_verified_with_sni_and_reused(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    port, seen = await https_backend(nursery, pki["server"], pki["tmp"])  # type: ignore[arg-type]
    proxy = await start_proxy(
        nursery,
        simple_config([port], cluster_extra=tls_socket(pki["ca"])),  # type: ignore[arg-type]
    )
    client = await Client.connect(proxy.port)
    try:
        for _ in range(3):
            resp, body = await client.request("GET", "/")
            assert (resp.status_code, body) == (200, b"tls-backend")
    finally:
        await client.aclose()
    assert [s["sni"] for s in seen] == ["backend.example.com"] * 3
    assert seen[0]["alpn"] == "http/1.1"
    assert proxy.stat("cluster.backend.ssl.handshake") == 1  # one pooled TLS connection
    assert proxy.stat("cluster.backend.upstream_cx_total") == 1


async def test_untrusted_upstream_certificate_is_refused(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    port, seen = await https_backend(nursery, pki["server"], pki["tmp"])  # type: ignore[arg-type]
    log = Path(str(pki["tmp"])) / "access.log"
    proxy = await start_proxy(
        nursery,
        simple_config(
            [port],
            cluster_extra=tls_socket(CA("another CA")),
            hcm_extra=file_access_log(log, "%RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%"),
        ),
    )
    status, body = await _get(proxy.port)
    # Envoy's answer; the reason is in the access log
    assert (status, body) == (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: "
        b"remote connection failure",
    )
    assert seen == []
    # counted as Envoy 1.40 counts it (measured): a verification failure, and a connection
    # that ended, remotely
    assert proxy.stat("cluster.backend.ssl.fail_verify_error") == 1
    assert proxy.stat("cluster.backend.upstream_cx_destroy") == 1
    assert proxy.stat("cluster.backend.upstream_cx_destroy_remote") == 1
    await trio.sleep(1.2)  # access log files are flushed every second, as Envoy's
    assert log.read_text() == "UF TLS_error:_CERTIFICATE_VERIFY_FAILED\n"


async def test_client_certificate_for_mtls_upstreams(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    ca: CA = pki["ca"]  # type: ignore[assignment]
    port, seen = await https_backend(nursery, pki["server"], pki["tmp"], require_client=ca)  # type: ignore[arg-type]
    proxy = await start_proxy(
        nursery,
        simple_config([port], cluster_extra=tls_socket(ca, client=pki["client"])),  # type: ignore[arg-type]
    )
    assert await _get(proxy.port) == (200, b"tls-backend")
    client_cert = seen[0]["client"]
    assert ("URI", "spiffe://cluster.local/ns/edge/sa/proxy") in client_cert["subjectAltName"]  # type: ignore[index]


def _identity(b: bytes) -> bytes:
    return b


async def test_grpc_over_tls_upstream_negotiates_h2(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    server_leaf: Leaf = pki["server"]  # type: ignore[assignment]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(
                        lambda r, c: b"secure:" + r, _identity, _identity
                    )
                },
            ),
        )
    )
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(server_leaf.key_pem, server_leaf.cert_pem)])
    )
    server.start()
    try:
        h2 = """
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
"""
        proxy = await start_proxy(
            nursery,
            simple_config([port], cluster_extra=h2 + tls_socket(pki["ca"])),  # type: ignore[arg-type]
        )

        def call() -> bytes:
            channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
            try:
                return channel.unary_unary("/test.Echo/Unary", _identity, _identity)(
                    b"hi", timeout=10
                )  # type: ignore[no-any-return]
            finally:
                channel.close()

        assert await trio.to_thread.run_sync(call) == b"secure:hi"
        assert proxy.stat("cluster.backend.ssl.handshake") == 1
    finally:
        server.stop(0)


AUTO = """
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    auto_config: {}
"""


async def test_auto_config_uses_http1_when_alpn_says_so(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    port, seen = await https_backend(nursery, pki["server"], pki["tmp"])  # type: ignore[arg-type]
    proxy = await start_proxy(
        nursery,
        simple_config([port], cluster_extra=AUTO + tls_socket(pki["ca"])),  # type: ignore[arg-type]
    )
    client = await Client.connect(proxy.port)
    try:
        for _ in range(3):
            resp, body = await client.request("GET", "/")
            assert (resp.status_code, body) == (200, b"tls-backend")
    finally:
        await client.aclose()
    assert seen[0]["alpn"] == "http/1.1"
    assert proxy.stat("cluster.backend.upstream_cx_http1_total") == 1
    assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 0


async def test_auto_config_uses_h2_when_alpn_offers_it(
    nursery: trio.Nursery, pki: dict[str, object]
) -> None:
    server_leaf: Leaf = pki["server"]  # type: ignore[assignment]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: b"auto:" + r, _identity, _identity)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Unary": handler}),)
    )
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(server_leaf.key_pem, server_leaf.cert_pem)])
    )
    server.start()
    try:
        proxy = await start_proxy(
            nursery,
            simple_config([port], cluster_extra=AUTO + tls_socket(pki["ca"])),  # type: ignore[arg-type]
        )

        def call() -> bytes:
            channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
            try:
                unary = channel.unary_unary("/test.Echo/Unary", _identity, _identity)
                return unary(b"x", timeout=10) + unary(b"y", timeout=10)  # type: ignore[no-any-return]
            finally:
                channel.close()

        assert await trio.to_thread.run_sync(call) == b"auto:xauto:y"
        assert proxy.stat("cluster.backend.upstream_cx_http2_total") == 1
    finally:
        server.stop(0)
