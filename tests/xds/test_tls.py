"""TLS to the control plane, and clusters whose TLS the HTTP pool cannot speak yet."""

from __future__ import annotations

import json

import grpc
import pytest
import trio
import trustme

from tests.support import Backend, free_ports, raw_exchange, simple_config, start_proxy
from tests.xds.resources import CDS, LDS, RDS, bootstrap, cluster, listener, route
from tests.xds.test_ads import served
from trioproxy.errors import ConfigError
from trioproxy.testing.xds_server import AdsServer


def _tls_socket(ca_pem: str, sni: str = "localhost") -> str:
    return f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          validation_context:
            trusted_ca: {{inline_string: {json.dumps(ca_pem)}}}
"""


async def test_ads_over_tls(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), b"".join(b.bytes() for b in cert.cert_chain_pems))]
    )
    ads = AdsServer()
    ads.start(credentials=creds)
    try:
        backend = Backend(name="over-tls")
        bport = await nursery.start(backend.serve)
        (lport,) = free_ports(1)
        text = bootstrap(ads.port).replace(
            "    load_assignment:\n      cluster_name: xds_cluster",
            _tls_socket(ca.cert_pem.bytes().decode()).rstrip("\n")
            + "\n    load_assignment:\n      cluster_name: xds_cluster",
        )
        proxy = await start_proxy(nursery, text)
        ads.set(CDS, "1", [cluster("c", bport)])
        ads.set(LDS, "1", [listener("l", lport)])
        ads.set(RDS, "1", [route("local_route", "c")])
        await served(lport, b"over-tls")
        assert proxy.stat("control_plane.connected_state") == 1
    finally:
        ads.stop()


async def test_untrusted_control_plane_is_not_used(nursery: trio.Nursery) -> None:
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("localhost")
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), b"".join(b.bytes() for b in cert.cert_chain_pems))]
    )
    ads = AdsServer()
    ads.start(credentials=creds)
    try:
        (lport,) = free_ports(1)
        text = bootstrap(ads.port).replace(
            "    load_assignment:\n      cluster_name: xds_cluster",
            _tls_socket(other.cert_pem.bytes().decode()).rstrip("\n")
            + "\n    load_assignment:\n      cluster_name: xds_cluster",
        )
        proxy = await start_proxy(nursery, text)
        ads.set(LDS, "1", [listener("l", lport)])
        await trio.sleep(1.0)
        assert ads.requests == []  # the handshake failed: nothing was ever asked
        assert proxy.stat("control_plane.connected_state") == 0
    finally:
        ads.stop()


async def test_a_tls_cluster_never_falls_back_to_plaintext(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    backend = Backend()  # speaks plaintext HTTP/1.1 only
    port = await nursery.start(backend.serve)
    proxy = await start_proxy(
        nursery, simple_config([port], cluster_extra=_tls_socket(ca.cert_pem.bytes().decode()))
    )
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 503") and raw.endswith(
        b"reset reason: remote connection failure"
    )
    assert backend.requests == []  # nothing went out in plaintext
    assert proxy.stat("cluster.backend.upstream_cx_connect_fail") == 1


async def test_bad_trusted_ca_is_a_config_error(nursery: trio.Nursery) -> None:
    with pytest.raises(ConfigError) as info:
        await start_proxy(nursery, simple_config([1], cluster_extra=_tls_socket("not a cert")))
    assert "trusted_ca" in str(info.value)
