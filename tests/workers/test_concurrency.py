"""``trioproxy serve --concurrency 2``, run as a user runs it: a main process and two workers,
real sockets on 127.0.0.1, a real backend."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import h11
import pytest
import trio

from tests.support import Backend, Client, Reply, free_ports, simple_config

pytestmark = pytest.mark.slow

START_DEADLINE = 30.0


@attrs.define
class Running:
    process: trio.Process
    admin_port: int
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """Worker index → pid of its latest start, from the main process's log."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log_text())
        return {int(i): int(pid) for i, pid in found}


async def admin(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    client = await Client.connect(port)
    try:
        resp, body = await client.request(method, path)
    finally:
        await client.aclose()
    return resp.status_code, body.decode()


async def stats(port: int) -> dict[str, int]:
    _, text = await admin(port, "/stats?format=json")
    return {s["name"]: s["value"] for s in json.loads(text)["stats"] if "value" in s}


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, config: str, *args: str) -> AsyncIterator[Running]:
    """Start ``trioproxy serve`` on ``config`` (its admin, the last port 0 in it, moved to a
    free port) and wait until ``/ready`` answers 200."""
    admin_port = free_ports(1)[0]
    head, sep, tail = config.rpartition("port_value: 0}")
    config = f"{head}port_value: {admin_port}}}{tail}"
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    log_path = tmp_path / "proxy.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - creating a file is instant
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioproxy", "serve", "-c", str(path), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    running = Running(process, admin_port, log_path)
    try:
        with trio.move_on_after(START_DEADLINE):
            while process.poll() is None:
                with contextlib.suppress(OSError, h11.RemoteProtocolError):
                    if (await admin(admin_port, "/ready"))[0] == 200:
                        break
                await trio.sleep(0.1)
        if process.poll() is not None or (await admin(admin_port, "/ready"))[0] != 200:
            raise RuntimeError(f"trioproxy did not become ready:\n{running.log_text()}")
        yield running
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
                await process.wait()
            for pid in running.worker_pids().values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def listener_port(running: Running) -> int:
    _, text = await admin(running.admin_port, "/listeners")
    return int(text.strip().rsplit(":", 1)[1])


async def get(port: int, *, close: bool = False) -> int:
    client = await Client.connect(port)
    try:
        resp, _ = await client.request("GET", "/", [("connection", "close")] if close else [])
    finally:
        await client.aclose()
    return resp.status_code


async def test_two_workers_share_the_port_and_admin_shows_their_sum(tmp_path: Path) -> None:
    backend = Backend()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        async with serve(tmp_path, simple_config([backend.port]), "--concurrency", "2") as p:
            port = await listener_port(p)  # configured as 0: one port chosen for both
            assert len(p.worker_pids()) == 2
            statuses = [await get(port, close=True) for _ in range(40)]
            assert statuses == [200] * 40
            assert len(backend.requests) == 40

            s = await stats(p.admin_port)
            assert s["http.ingress_http.downstream_rq_total"] == 40
            assert s["http.ingress_http.downstream_rq_2xx"] == 40
            assert s["cluster.backend.upstream_rq_total"] == 40
            total = "listener.127.0.0.1_0.worker_{}.downstream_cx_total"
            per_worker = [s[total.format(i)] for i in (0, 1)]
            assert sum(per_worker) == 40
            assert all(n > 0 for n in per_worker), per_worker  # both served (2^-39 otherwise)
            assert s["server.concurrency"] == 2
            assert s["server.live"] == 1  # the main's, not summed
            assert s["cluster_manager.active_clusters"] == 1  # a copy in each: not summed

            _, prom = await admin(p.admin_port, "/stats/prometheus")
            assert (
                'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 40'
                in prom
            )
            _, clusters = await admin(p.admin_port, "/clusters")
            assert f"backend::127.0.0.1:{backend.port}::rq_total::40" in clusters
            assert f"backend::127.0.0.1:{backend.port}::health_flags::healthy" in clusters
            _, info = await admin(p.admin_port, "/server_info")
            assert json.loads(info)["command_line_options"]["concurrency"] == 2
            _, dump = await admin(p.admin_port, "/config_dump")  # answered by a worker
            assert "static_listeners" in dump

            # A mutation reaches every worker.
            assert (await admin(p.admin_port, "/reset_counters", "POST"))[0] == 200
            s = await stats(p.admin_port)
            assert s["http.ingress_http.downstream_rq_total"] == 0

            assert (await admin(p.admin_port, "/quitquitquit", "POST"))[0] == 200
            with trio.fail_after(15):
                assert await p.process.wait() == 0
            assert not any(_alive(pid) for pid in p.worker_pids().values())
        nursery.cancel_scope.cancel()


def _alive(pid: int) -> bool:
    """Running, or exited and not yet reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_killed_worker_loses_only_its_own_connections(tmp_path: Path) -> None:
    backend = Backend()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        async with serve(tmp_path, simple_config([backend.port]), "--concurrency", "2") as p:
            port = await listener_port(p)
            active = "listener.127.0.0.1_0.worker_{}.downstream_cx_active"
            clients: list[Client] = []
            # Keep-alive clients until each worker holds at least three of them.
            while len(clients) < 60:
                client = await Client.connect(port)
                assert (await client.request("GET", "/"))[0].status_code == 200
                clients.append(client)
                s = await stats(p.admin_port)
                if min(s[active.format(0)], s[active.format(1)]) >= 3:
                    break
            held = s[active.format(0)]  # the connections worker 0 holds
            assert 3 <= held < len(clients)
            cx_before = s["listener.127.0.0.1_0.worker_0.downstream_cx_total"]

            failures = [0] * len(clients)
            successes = [0] * len(clients)
            killed = trio.Event()

            async def load(i: int, client: Client) -> None:
                # Requests in turn on one connection until three have passed after the kill.
                after = 0
                while after < 3:
                    try:
                        resp, _ = await client.request("GET", "/")
                    except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError):
                        failures[i] += 1
                        return
                    assert resp.status_code == 200
                    successes[i] += 1
                    if killed.is_set():
                        after += 1
                    await trio.sleep(0.01)

            async with trio.open_nursery() as loaders:
                for i, client in enumerate(clients):
                    loaders.start_soon(load, i, client)
                await trio.sleep(0.3)
                os.kill(p.worker_pids()[0], signal.SIGKILL)
                killed.set()
            for client in clients:
                await client.aclose()

            # Exactly the clients on worker 0 failed, once each; the others never did.
            assert sum(failures) == held, (failures, held)
            assert all(n > 0 for n in successes)

            # The main process restarts worker 0, and new connections reach it.
            with trio.fail_after(20):
                while True:
                    s = await stats(p.admin_port)
                    if s["server.worker_restarts"] == 1 and s["server.workers_serving"] == 2:
                        break
                    await trio.sleep(0.1)
            assert "worker 0 exited (killed by SIGKILL)" in p.log_text()
            statuses = [await get(port, close=True) for _ in range(30)]
            assert statuses == [200] * 30
            s = await stats(p.admin_port)
            # Counters of the dead worker were kept (as of its last snapshot) and the new
            # worker 0 took some of the new connections.
            assert s["listener.127.0.0.1_0.worker_0.downstream_cx_total"] > cx_before
        nursery.cancel_scope.cancel()


async def test_sigterm_drains_every_worker_and_exits_zero(tmp_path: Path) -> None:
    arrived = trio.Event()

    def slow(_: object) -> Reply:
        if len(backend.requests) == 16:
            arrived.set()
        return Reply(body=b"slow", delay=2.0)

    backend = Backend(handler=slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        config = simple_config([backend.port])
        async with serve(tmp_path, config, "--concurrency", "2", "--drain-time-s", "10") as p:
            port = await listener_port(p)
            results: list[tuple[int, str | None]] = []

            async def slow_request() -> None:
                client = await Client.connect(port)
                resp, body = await client.request("GET", "/slow")
                assert body == b"slow"
                connection = dict(resp.headers).get(b"connection")
                results.append((resp.status_code, connection.decode() if connection else None))
                await client.aclose()

            async with trio.open_nursery() as clients:
                for _ in range(16):
                    clients.start_soon(slow_request)
                with trio.fail_after(5):
                    await arrived.wait()
                s = await stats(p.admin_port)
                active = "listener.127.0.0.1_0.worker_{}.downstream_cx_active"
                per_worker = [s[active.format(i)] for i in (0, 1)]
                p.process.send_signal(signal.SIGTERM)
                with trio.fail_after(1.5):  # well before the requests in flight finish
                    while True:  # until no worker accepts any more
                        try:
                            await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        except OSError:
                            break
                        await trio.sleep(0.05)
            assert results == [(200, "close")] * 16
            assert per_worker[0] > 0 and per_worker[1] > 0, per_worker
            with trio.fail_after(15):
                assert await p.process.wait() == 0
            assert "received SIGTERM" in p.log_text()
        nursery.cancel_scope.cancel()


UDP_CONFIG = """
static_resources:
  listeners:
  - name: udp
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: 0}}
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
                cluster: echo
  clusters:
  - name: echo
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: ECHO_PORT}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
"""


def _udp_ports_of(pid: int) -> set[int]:
    """Local ports of the IPv4 UDP sockets process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


async def test_udp_flows_spread_over_the_workers(tmp_path: Path) -> None:
    senders: list[int] = []
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as echo, contextlib.ExitStack() as stack:
        await echo.bind(("127.0.0.1", 0))

        async def serve_echo() -> None:
            while True:
                data, addr = await echo.recvfrom(2048)
                senders.append(addr[1])
                await echo.sendto(data, addr)

        # Sixteen client sockets open at once: sixteen client addresses, so sixteen
        # sessions (a socket closed before the next opens may hand its port on, and two
        # datagrams from one address are one session).
        clients = [
            stack.enter_context(trio.socket.socket(type=trio.socket.SOCK_DGRAM)) for _ in range(16)
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo)
            config = UDP_CONFIG.replace("ECHO_PORT", str(echo.getsockname()[1]))
            async with serve(tmp_path, config, "--concurrency", "2") as p:
                port = await listener_port(p)  # port 0: probed by the main, bound by both
                for i, client in enumerate(clients):
                    await client.sendto(b"ping %d" % i, ("127.0.0.1", port))
                    with trio.fail_after(5):
                        assert await client.recv(2048) == b"ping %d" % i
                s = await stats(p.admin_port)
                assert s["udp.service.downstream_sess_total"] == 16
                assert s["udp.service.downstream_sess_rx_datagrams"] == 16
                assert s["cluster.echo.udp.sess_tx_datagrams"] == 16
                # Each session's upstream socket belongs to the worker that got its flow.
                by_worker = [
                    len(set(senders) & _udp_ports_of(pid)) for pid in p.worker_pids().values()
                ]
                assert sum(by_worker) == 16
                assert all(n > 0 for n in by_worker), by_worker
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "SO_REUSEPORT"])
async def test_a_port_taken_by_another_process_fails_the_start(
    tmp_path: Path, reuse_port: bool
) -> None:
    # Taken with SO_REUSEPORT by a process of the same user, the workers' SO_REUSEPORT
    # sockets could join it and share its connections: the main probes without it first.
    taken = trio.socket.socket()
    if reuse_port:
        taken.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = simple_config([1]).replace("port_value: 0}", f"port_value: {port}}}", 1)
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "trioproxy", "serve", "-c", str(path), "--concurrency", "2"],
            capture_stderr=True,
            check=False,
        )
    taken.close()
    assert done.returncode == 1
    assert f"error: listener main: cannot bind '127.0.0.1:{port}'" in done.stderr.decode()
    assert b"Traceback" not in done.stderr
