"""Listener certificates by SDS: static secrets, a watched file that rotates without a
restart, and a secret pushed over ADS that a listener waits for."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import trio
import trustme

from tests.support import Backend, free_ports, raw_exchange, start_proxy, until
from tests.xds.resources import CDS, LDS, bootstrap, cluster, listener, route
from trioproxy.testing.xds_server import AdsServer

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def _secret(name: str, cert: trustme.LeafCert) -> dict:  # type: ignore[type-arg]
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {
                "inline_string": "".join(b.bytes().decode() for b in cert.cert_chain_pems)
            },
            "private_key": {"inline_string": cert.private_key_pem.bytes().decode()},
        },
    }


async def _served_cert(port: int, ca: trustme.CA) -> bytes:
    """The DER certificate the listener presents, after a full request over TLS."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="localhost"
    )
    async with stream:
        await stream.do_handshake()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data
        der = stream._ssl_object.getpeercert(binary_form=True)
    assert der is not None
    return der


def _tls_listener(port: int, backend_cluster: str, sds_config: dict | None) -> dict:  # type: ignore[type-arg]
    lst = listener("tls", port)
    chain = lst["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = route("r", backend_cluster)
    sds: dict = {"name": "server_cert"}  # type: ignore[type-arg]
    if sds_config is not None:
        sds["sds_config"] = sds_config
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS,
            "common_tls_context": {"tls_certificate_sds_secret_configs": [sds]},
        },
    }
    return lst


def _static_yaml(listener_d: dict, cluster_d: dict, secrets: list[dict]) -> str:  # type: ignore[type-arg]
    return json.dumps(
        {
            "static_resources": {
                "listeners": [listener_d],
                "clusters": [cluster_d],
                "secrets": secrets,
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        }
    )


def _write(path: Path, version: str, secret: dict) -> None:  # type: ignore[type-arg]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"version_info": version, "resources": [{"@type": SECRET, **secret}]})
    )
    os.replace(tmp, path)


async def test_static_secret_and_redacted_dump(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    backend = Backend()
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(
        nursery,
        _static_yaml(
            _tls_listener(lport, "b", None), cluster("b", bport), [_secret("server_cert", cert)]
        ),
    )
    der = await _served_cert(lport, ca)
    assert der == ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    raw = await raw_exchange(
        proxy.admin_port, b"GET /config_dump HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    dump = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    (secret,) = dump["configs"][-1]["static_secrets"]
    key = secret["secret"]["tls_certificate"]["private_key"]
    assert key == {"inline_string": "[redacted]"}
    assert b"PRIVATE KEY" not in raw


async def test_file_sds_rotates_without_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    backend = Backend()
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    path = tmp_path / "cert.json"
    _write(path, "1", _secret("server_cert", first))
    sds = {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"}
    await start_proxy(
        nursery, _static_yaml(_tls_listener(lport, "b", sds), cluster("b", bport), [])
    )
    der1 = ssl.PEM_cert_to_DER_cert(first.cert_chain_pems[0].bytes().decode())
    der2 = ssl.PEM_cert_to_DER_cert(second.cert_chain_pems[0].bytes().decode())

    async def current() -> bytes:
        return await _served_cert(lport, ca)

    with trio.fail_after(10):
        while await current() != der1:  # noqa: ASYNC110 - the file is polled
            await trio.sleep(0.05)
    _write(path, "2", _secret("server_cert", second))
    with trio.fail_after(10):
        while await current() != der2:  # noqa: ASYNC110 - the file is polled
            await trio.sleep(0.05)


async def test_ads_secret_warms_the_listener(nursery: trio.Nursery, ads: AdsServer) -> None:
    from trioproxy.xds import resources as R

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    backend = Backend()
    bport = await nursery.start(backend.serve)
    (lport,) = free_ports(1)
    proxy = await start_proxy(nursery, bootstrap(ads.port))
    ads.set(CDS, "1", [cluster("b", bport)])
    ads.set(LDS, "1", [_tls_listener(lport, "b", {"ads": {}, "resource_api_version": "V3"})])
    await until(lambda: ads.requests_of(R.SECRET))
    assert ads.requests_of(R.SECRET)[0]["resource_names"] == ["server_cert"]
    assert proxy.server.built.xds.warming_listeners  # waiting for its certificate
    ads.set(R.SECRET, "1", [_secret("server_cert", cert)])
    await until(lambda: not proxy.server.built.xds.warming_listeners)
    assert await _served_cert(lport, ca)
