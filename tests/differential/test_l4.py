"""Envoy and trioproxy side by side at L4: the UDP demo, tcp_proxy and filter-chain matching.

Each case runs the same config through both, sends the same traffic, and compares what the
clients and upstreams saw and the non-zero stats of the families the feature owns.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.differential.harness import (
    command_for,
    find_envoy,
    free_port,
    nonzero_stats,
    wait_accepting,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]
KINDS = ("envoy", "trioproxy")


@contextlib.asynccontextmanager
async def proxy(kind: str, config: str, admin_port: int) -> AsyncIterator[None]:
    tmp = Path(tempfile.mkdtemp(prefix=f"diff-l4-{kind}-"))
    path = tmp / "envoy.yaml"
    path.write_text(config)
    with open(tmp / "log", "wb") as log:  # noqa: ASYNC230 - creating a file is instant
        process = await trio.lowlevel.open_process(
            command_for(kind, path), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        assert await wait_accepting(admin_port, process, 20), (tmp / "log").read_text()
        await trio.sleep(0.3)  # listeners start after admin in Envoy
        yield
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def admin(port: int) -> str:
    return f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"


def static_cluster(name: str, port: int) -> str:
    return f"""
  - name: {name}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"""


async def test_udp_demo_same_sessions_and_stats() -> None:
    results = {}
    for kind in KINDS:
        up = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await up.bind(("127.0.0.1", 0))
        listen, admin_port = free_port(), free_port()
        config = f"""
static_resources:
  listeners:
  - name: listener_0
    address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: {listen}}}}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: service
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: service_udp
  clusters:{static_cluster("service_udp", up.getsockname()[1])}
{admin(admin_port)}
"""
        received = []
        async with proxy(kind, config, admin_port):
            for payload in (b"HELO", b"OLEH"):
                with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    await c.sendto(payload, ("127.0.0.1", listen))
            with trio.fail_after(5):
                while len(received) < 2:
                    received.append((await up.recvfrom(100))[0])
            await trio.sleep(0.2)
            stats = await nonzero_stats(admin_port, "udp.", "cluster.service_udp.udp.")
            stats |= {
                k: v
                for k, v in (await nonzero_stats(admin_port, "cluster.service_udp.")).items()
                if "bytes" in k or "total_match" in k
            }
        up.close()
        results[kind] = (sorted(received), stats)
    assert results["trioproxy"] == results["envoy"]


async def _echo(stream: trio.SocketStream) -> None:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.send_all(data[::-1])
    await stream.aclose()


async def _named(name: bytes, stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass
    await stream.send_all(name)
    await stream.aclose()


async def _exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    async with stream:
        try:
            if data:
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass  # the upstream answered and closed first
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


def _tcp_proxy(prefix: str, cluster: str) -> str:
    return f"""
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {prefix}
          cluster: {cluster}"""


async def test_tcp_proxy_and_filter_chain_match_agree(nursery: trio.Nursery) -> None:
    echo = (await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")))[0]
    other = (
        await nursery.start(partial(trio.serve_tcp, partial(_named, b"other"), 0, host="127.0.0.1"))
    )[0]
    clusters = static_cluster("echo", echo.socket.getsockname()[1]) + static_cluster(
        "other", other.socket.getsockname()[1]
    )
    results = {}
    for kind in KINDS:
        listen, admin_port = free_port(), free_port()
        config = f"""
static_resources:
  listeners:
  - name: l4
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filter_chain_match:
        source_prefix_ranges: [{{address_prefix: 127.0.0.2, prefix_len: 32}}]
      filters:{_tcp_proxy("to_other", "other")}
    - filter_chain_match:
        source_prefix_ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]
        source_ports: [1]
      filters:{_tcp_proxy("never", "other")}
    - filter_chain_match:
        source_prefix_ranges: [{{address_prefix: 127.0.0.0, prefix_len: 24}}]
      filters:{_tcp_proxy("to_echo", "echo")}
  clusters:{clusters}
{admin(admin_port)}
"""
        async with proxy(kind, config, admin_port):
            answers = [
                await _exchange(listen, b"abcdef" * 1000),
                await _exchange(listen, b"x", source="127.0.0.2"),
                await _exchange(listen, b"y", source="127.0.0.3"),
            ]
            await trio.sleep(0.3)
            stats = await nonzero_stats(admin_port, "tcp.", "listener.127.0.0.1_")
            stats |= {
                k: v
                for k, v in (await nonzero_stats(admin_port, "cluster.")).items()
                if k.split(".")[-1]
                in ("upstream_cx_total", "upstream_cx_tx_bytes_total", "upstream_cx_rx_bytes_total")
            }
        stats = {
            k.replace(f"_{listen}.", "_<port>."): v
            for k, v in stats.items()
            if ".worker_" not in k and "length_ms" not in k
        }
        results[kind] = (answers, stats)
    assert results["trioproxy"][0] == [b"fedcba" * 1000, b"other", b"y"]
    assert results["trioproxy"][0] == results["envoy"][0]
    ours, envoys = results["trioproxy"][1].items(), results["envoy"][1].items()
    assert ours == envoys, (sorted(ours - envoys), sorted(envoys - ours))


async def _filtered_echo(
    nursery: trio.Nursery, network_filter: str, sends: list[tuple[bytes, str]], *families: str
) -> dict[str, tuple[list[bytes], dict[str, str]]]:
    """Envoy, then trioproxy, with ``network_filter`` (YAML at the filters' indentation;
    ``{listen}`` is the listener's port) ahead of tcp_proxy to an echo server: per send
    (data, source address) what came back (``<reset>`` for a reset), and the non-zero stats
    of ``families``."""
    echo = (await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")))[0]
    clusters = static_cluster("echo", echo.socket.getsockname()[1])
    results = {}
    for kind in KINDS:
        listen, admin_port = free_port(), free_port()
        config = f"""
static_resources:
  listeners:
  - name: l4
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
{network_filter.replace("{listen}", str(listen)).strip(chr(10))}
{_tcp_proxy("to_echo", "echo")[1:]}
  clusters:{clusters}
{admin(admin_port)}
"""
        async with proxy(kind, config, admin_port):
            answers = []
            for data, source in sends:
                try:
                    answers.append(await _exchange(listen, data, source=source))
                except trio.BrokenResourceError:
                    answers.append(b"<reset>")
            await trio.sleep(0.3)
            stats = await nonzero_stats(admin_port, *families)
        results[kind] = (answers, {k: v for k, v in stats.items() if "length_ms" not in k})
    return results


NETWORK_RBAC = """
      - name: envoy.filters.network.rbac
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: l4_
          rules:
            action: DENY
            policies:
              no-127-0-0-2:
                permissions: [{destination_port: {listen}}]
                principals: [{direct_remote_ip: {address_prefix: 127.0.0.2, prefix_len: 32}}]
          shadow_rules:
            action: ALLOW
            policies:
              only-3:
                permissions: [{any: true}]
                principals: [{remote_ip: {address_prefix: 127.0.0.3, prefix_len: 32}}]"""


async def test_network_rbac_agrees(nursery: trio.Nursery) -> None:
    """Network RBAC in front of tcp_proxy: connections from 127.0.0.2 are closed, others pass;
    shadow rules only count."""
    sends = [(b"abc", "127.0.0.1"), (b"x", "127.0.0.2"), (b"yz", "127.0.0.3")]
    results = await _filtered_echo(nursery, NETWORK_RBAC, sends, "l4_", "tcp.")
    assert results["envoy"][0] == [b"cba", b"", b"zy"]  # the refused one: closed, no reset
    assert results["trioproxy"][0] == results["envoy"][0]
    # Envoy decides at the first byte, when tcp_proxy has already taken (and counted) the
    # connection; trioproxy decides before tcp_proxy sees it: compare the rbac stats only
    rbac = {kind: {k: v for k, v in r[1].items() if ".rbac." in k} for kind, r in results.items()}
    assert rbac["trioproxy"] == rbac["envoy"]


NETWORK_LRL = """
      - name: envoy.filters.network.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: conns
          token_bucket: {max_tokens: 2, fill_interval: 60s}"""  # noqa: E501


async def test_network_local_rate_limit_agrees(nursery: trio.Nursery) -> None:
    """Two connections a minute: the third is closed, and counted."""
    sends = [(b"ab", "127.0.0.1"), (b"cd", "127.0.0.1"), (b"ef", "127.0.0.1")]
    results = await _filtered_echo(nursery, NETWORK_LRL, sends, "local_rate_limit.")
    (envoy, envoy_stats), (ours, our_stats) = results["envoy"], results["trioproxy"]
    assert envoy[:2] == [b"ba", b"dc"]
    # Envoy closes the third with a FIN, or with a reset when the client's bytes arrive
    # just before its close (seen once in CI); trioproxy always drains them and
    # closes with a FIN (listener/tcp.py _refuse).
    assert envoy[2] in (b"", b"<reset>")
    assert ours == [b"ba", b"dc", b""]
    assert our_stats == envoy_stats
