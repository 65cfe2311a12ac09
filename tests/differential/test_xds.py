"""Envoy and trioproxy pointed at the same xDS server: the same ACKs and the same dynamic
sections of ``/config_dump`` (timestamps aside), for an accepted and a rejected update."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.differential.harness import command_for, find_envoy, free_port
from tests.support import Backend
from tests.xds.resources import CDS, LDS, RDS, bootstrap, cluster, listener, route
from trioproxy.testing.xds_server import AdsServer

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]


def _strip(value: Any) -> Any:
    """The dump without what legitimately differs: timestamps, and the ``error_state`` entry
    trioproxy adds for a rejected cluster (Envoy 1.40 logs the rejection and counts it, but
    leaves ``/config_dump`` unchanged; ../shared/XDS.md rule 12 asks to show it)."""
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "error_state" in v)]
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in ("last_updated", "last_update_attempt")
        }
    return value


async def _admin(port: int, path: str) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return body.decode()


async def _until(pred: Any, limit: float = 20.0) -> None:
    with trio.fail_after(limit):
        while not pred():  # noqa: ASYNC110 - the xDS server runs in threads
            await trio.sleep(0.05)


async def _dynamic_sections(
    kind: str, backend_port: int, listen: int
) -> tuple[dict[str, Any], list[Any]]:
    """Run ``kind`` against a fresh xDS server; its dump and the requests the server saw."""
    ads = AdsServer()
    ads.start()
    admin = free_port()
    ads.set(CDS, "1", [cluster("example_proxy_cluster", backend_port)])
    ads.set(LDS, "1", [listener("listener_0", listen)])
    ads.set(RDS, "1", [route("local_route", "example_proxy_cluster")])
    text = bootstrap(ads.port).replace("port_value: 0}", f"port_value: {admin}}}")
    tmp = Path(tempfile.mkdtemp(prefix=f"xds-{kind}-"))
    config = tmp / "envoy.yaml"
    config.write_text(text)
    proc = await trio.lowlevel.open_process(
        command_for(kind, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _until(lambda: any(r.get("version_info") == "1" for r in ads.requests_of(RDS)))
        # version 2 is rejected by both: a cluster with a zero connect timeout
        ads.set(CDS, "2", [cluster("example_proxy_cluster", backend_port, connect_timeout="0s")])
        await _until(lambda: any("error_detail" in r for r in ads.requests_of(CDS)))
        await trio.sleep(0.2)
        dump = json.loads(await _admin(admin, "/config_dump"))
        acks = [
            {k: r.get(k) for k in ("type_url", "version_info", "resource_names")}
            | {"nack": "error_detail" in r}
            for _, r in ads.requests
        ]
        return dump, acks
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()
        ads.stop()


async def test_same_dynamic_config_dump_and_acks(nursery: trio.Nursery) -> None:
    backend = Backend(name="service1")
    port = await nursery.start(backend.serve)
    listen = free_port()  # the same listener address for both (they run one after the other)
    envoy_dump, envoy_acks = await _dynamic_sections("envoy", port, listen)
    ours_dump, ours_acks = await _dynamic_sections("trioproxy", port, listen)
    assert ours_acks == envoy_acks
    for i, keys in (
        (1, ("version_info", "dynamic_active_clusters", "dynamic_warming_clusters")),
        (2, ("version_info", "dynamic_listeners")),
        (4, ("dynamic_route_configs",)),
    ):
        mine, theirs = ours_dump["configs"][i], envoy_dump["configs"][i]
        assert mine["@type"] == theirs["@type"]
        for key in keys:
            assert _strip(mine.get(key)) == _strip(theirs.get(key)), (i, key)
