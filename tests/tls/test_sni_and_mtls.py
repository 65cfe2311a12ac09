"""TLS at the listener: SNI routing with tls_inspector (terminated and passed through), and
mutual TLS with client-certificate verification, SAN matching and x-forwarded-client-cert."""

from __future__ import annotations

import hashlib
import json
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from tests.support import HCM_TYPE, Backend, Proxy, start_proxy
from tests.tls.pki import CA, Leaf

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CLIENT_URI = "spiffe://cluster.local/ns/default/sa/client"


def cluster(name: str, port: int) -> dict[str, Any]:
    ep = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "name": name,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": ep}]}],
        },
    }


def hcm(cluster_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": f"https_{cluster_name}",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER},
                }
            ],
            **extra,
        },
    }


def tls_socket(leaf: Leaf, **context: Any) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_bytes": _b64(leaf.cert_pem)},
                        "private_key": {"inline_bytes": _b64(leaf.key_pem)},
                    }
                ],
                **context.pop("common", {}),
            },
            **context,
        },
    }


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def bootstrap(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> str:
    listener = {
        "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        **listener,
    }
    return json.dumps({"static_resources": {"listeners": [listener], "clusters": clusters}})


def client_context(ca: CA, client: Leaf | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    if client is not None:
        cert, key = client.write(tmp, f"client-{id(client)}")
        ctx.load_cert_chain(cert, key)
    return ctx


async def https_get(
    port: int, sni: str, ctx: ssl.SSLContext, headers: list[tuple[str, str]] | None = None
) -> tuple[int, bytes]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=sni)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        req = h11.Request(method="GET", target="/", headers=[("host", sni), *(headers or [])])
        await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CA()
    return {
        "ca": ca,
        "a": ca.issue("a.example.com", dns=("a.example.com",)),
        "b": ca.issue("b.example.com", dns=("b.example.com",)),
        "client": ca.issue("client", dns=("client.example.com",), uris=(CLIENT_URI,)),
        "stranger": CA("other CA").issue("client", uris=(CLIENT_URI,)),
        "wrong_san": ca.issue("client", uris=("spiffe://elsewhere/ns/x/sa/y",)),
        "tmp": tmp_path,
    }


async def test_tls_listener_routes_two_sni_names_to_two_clusters(
    nursery: trio.Nursery, pki: dict[str, Any]
) -> None:
    a, b = Backend(name="a"), Backend(name="b")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    listener = {
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
        "filter_chains": [
            {
                "filter_chain_match": {"server_names": [name + ".example.com"]},
                "transport_socket": tls_socket(pki[name]),
                "filters": [hcm(name)],
            }
            for name in ("a", "b")
        ],
    }
    proxy = await start_proxy(
        nursery, bootstrap(listener, [cluster("a", a.port), cluster("b", b.port)])
    )
    ctx = client_context(pki["ca"], None, pki["tmp"])
    with trio.fail_after(10):
        assert await https_get(proxy.port, "a.example.com", ctx) == (200, b"a")
        assert await https_get(proxy.port, "b.example.com", ctx) == (200, b"b")
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await https_get(proxy.port, "c.example.com", ctx)
    assert proxy.stat("tls_inspector.sni_found") == 3
    assert proxy.stat("listener.127.0.0.1_0.no_filter_chain_match") == 1


async def test_requested_server_name_is_the_inspected_sni(
    nursery: trio.Nursery, pki: dict[str, Any]
) -> None:
    """%REQUESTED_SERVER_NAME% (access logs, headers, RBAC's requested_server_name) is the
    SNI tls_inspector read, on a listener that terminates TLS (it was empty)."""
    a = Backend(name="a")
    await nursery.start(a.serve)
    filters = [hcm("a")]
    filters[0]["typed_config"]["route_config"]["request_headers_to_add"] = [
        {"header": {"key": "x-sni", "value": "%REQUESTED_SERVER_NAME%"}}
    ]
    listener = {
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
        "filter_chains": [{"transport_socket": tls_socket(pki["a"]), "filters": filters}],
    }
    proxy = await start_proxy(nursery, bootstrap(listener, [cluster("a", a.port)]))
    ctx = client_context(pki["ca"], None, pki["tmp"])
    with trio.fail_after(10):
        assert await https_get(proxy.port, "a.example.com", ctx) == (200, b"a")
    assert a.requests[0].header("x-sni") == "a.example.com"


async def _tls_name_server(nursery: trio.Nursery, leaf: Leaf, name: bytes, tmp: Path) -> int:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*leaf.write(tmp, name.decode()))

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.send_all(name)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, handler, 0, ctx, host="127.0.0.1")
    )
    return int(listeners[0].transport_listener.socket.getsockname()[1])


async def test_sni_passthrough_routes_without_terminating(
    nursery: trio.Nursery, pki: dict[str, Any]
) -> None:
    ports = {n: await _tls_name_server(nursery, pki[n], n.encode(), pki["tmp"]) for n in "ab"}
    listener = {
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
        "filter_chains": [
            {
                "filter_chain_match": {"server_names": [f"{n}.example.com"]},
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {"@type": TCP_PROXY, "stat_prefix": n, "cluster": n},
                    }
                ],
            }
            for n in "ab"
        ],
    }
    proxy = await start_proxy(nursery, bootstrap(listener, [cluster(n, ports[n]) for n in "ab"]))
    ctx = client_context(pki["ca"], None, pki["tmp"])
    for n in "ab":
        tcp = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        # the certificate checked here is the backend's own: the proxy did not terminate TLS
        async with trio.SSLStream(tcp, ctx, server_hostname=f"{n}.example.com") as tls:
            with trio.fail_after(10):
                assert await tls.receive_some(10) == n.encode()
    assert proxy.stat("tcp.a.downstream_cx_total") == proxy.stat("tcp.b.downstream_cx_total") == 1


async def test_mtls_verifies_clients_and_sets_xfcc(
    nursery: trio.Nursery, pki: dict[str, Any]
) -> None:
    backend = Backend(name="app")
    await nursery.start(backend.serve)
    san = {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}
    listener = {
        "filter_chains": [
            {
                "transport_socket": tls_socket(
                    pki["a"],
                    require_client_certificate=True,
                    common={
                        "validation_context": {
                            "trusted_ca": {"inline_bytes": _b64(pki["ca"].pem)},
                            "match_typed_subject_alt_names": [san],
                        }
                    },
                ),
                "filters": [
                    hcm(
                        "app",
                        forward_client_cert_details="SANITIZE_SET",
                        set_current_client_cert_details={"subject": True, "uri": True, "dns": True},
                    )
                ],
            }
        ]
    }
    proxy: Proxy = await start_proxy(nursery, bootstrap(listener, [cluster("app", backend.port)]))
    tmp = pki["tmp"]

    async def refused(client: Leaf | None) -> None:
        with trio.fail_after(10), pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            status, _ = await https_get(
                proxy.port, "a.example.com", client_context(pki["ca"], client, tmp)
            )
            if status == 0:  # TLS 1.3: the refusal arrives after the client's handshake
                raise trio.BrokenResourceError("closed without a response")

    await refused(None)
    await refused(pki["stranger"])
    await refused(pki["wrong_san"])
    assert backend.requests == []
    ssl_stats = "listener.127.0.0.1_0.ssl."
    assert proxy.stat(ssl_stats + "fail_verify_no_cert") == 1
    assert proxy.stat(ssl_stats + "fail_verify_error") == 1
    assert proxy.stat(ssl_stats + "fail_verify_san") == 1

    ctx = client_context(pki["ca"], pki["client"], tmp)
    forged = [("x-forwarded-client-cert", "By=spiffe://evil;Hash=00")]
    with trio.fail_after(10):
        assert await https_get(proxy.port, "a.example.com", ctx, forged) == (200, b"app")
    from cryptography import x509

    der = x509.load_pem_x509_certificate(pki["client"].cert_pem).public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization"
        ).hazmat.primitives.serialization.Encoding.DER
    )
    expected = (
        f"Hash={hashlib.sha256(der).hexdigest()};"
        f'Subject="CN=client,O=trioproxy tests";URI={CLIENT_URI};DNS=client.example.com'
    )
    assert backend.requests[0].header("x-forwarded-client-cert") == expected


async def test_rbac_allows_by_the_client_certificate(
    nursery: trio.Nursery, pki: dict[str, Any]
) -> None:
    """RBAC's ``authenticated`` principal: the client certificate's URI SAN decides."""
    backend = Backend(name="app")
    await nursery.start(backend.serve)
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "client-only": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {"authenticated": {"principal_name": {"exact": CLIENT_URI}}}
                        ],
                    }
                },
            },
        },
    }
    manager = hcm("app")
    manager["typed_config"]["http_filters"].insert(0, rbac)
    listener = {
        "filter_chains": [
            {
                "transport_socket": tls_socket(
                    pki["a"],
                    require_client_certificate=True,
                    common={
                        "validation_context": {"trusted_ca": {"inline_bytes": _b64(pki["ca"].pem)}}
                    },
                ),
                "filters": [manager],
            }
        ]
    }
    proxy = await start_proxy(nursery, bootstrap(listener, [cluster("app", backend.port)]))
    tmp = pki["tmp"]
    with trio.fail_after(10):
        ok = await https_get(
            proxy.port, "a.example.com", client_context(pki["ca"], pki["client"], tmp)
        )
        other = await https_get(
            proxy.port, "a.example.com", client_context(pki["ca"], pki["wrong_san"], tmp)
        )
    assert ok == (200, b"app")
    assert other == (403, b"RBAC: access denied")
    assert len(backend.requests) == 1
    assert proxy.stat("http.https_app.rbac.denied") == 1
