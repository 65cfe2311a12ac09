"""``--concurrency 2`` when workers fail: hung, killed by odd signals, orphaned. Real
processes and sockets, as ``test_concurrency``; deadlines only bound the waits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support import Backend, free_ports, simple_config
from tests.workers.test_concurrency import _alive, admin, get, listener_port, serve, stats
from tests.xds.resources import bootstrap

pytestmark = pytest.mark.slow

RQ_TOTAL = "http.ingress_http.downstream_rq_total"


async def _until_ready_is(port: int, status: int, deadline: float) -> None:
    with trio.fail_after(deadline):
        while True:
            if (await admin(port, "/ready"))[0] == status:
                return
            await trio.sleep(0.2)


async def _until_restarted(port: int, restarts: int, deadline: float) -> dict[str, int]:
    with trio.fail_after(deadline):
        while True:
            s = await stats(port)
            if s["server.worker_restarts"] == restarts and s["server.workers_serving"] == 2:
                return s
            await trio.sleep(0.2)


async def test_a_hung_worker_is_killed_and_restarted(tmp_path: Path) -> None:
    backend = Backend()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        async with serve(tmp_path, simple_config([backend.port]), "--concurrency", "2") as p:
            port = await listener_port(p)
            assert [await get(port, close=True) for _ in range(20)] == [200] * 20
            assert (await stats(p.admin_port))[RQ_TOTAL] == 20
            pids = p.worker_pids()
            os.kill(pids[0], signal.SIGSTOP)
            try:
                # Not ready while a worker does not answer, and the merged counters keep
                # the silent worker's share.
                await _until_ready_is(p.admin_port, 503, 30)
                assert (await stats(p.admin_port))[RQ_TOTAL] == 20
                s = await _until_restarted(p.admin_port, 1, 60)
                assert s[RQ_TOTAL] == 20
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[0], signal.SIGKILL)
            log = p.log_text()
            assert "worker 0 did not answer" in log
            assert "worker 0 exited (killed by SIGKILL)" in log
            assert p.worker_pids()[1] == pids[1]  # the other one lived on (past 10 s)
            await _until_ready_is(p.admin_port, 200, 30)
            with trio.fail_after(30):  # no connection waits on the hung worker's socket
                assert [await get(port, close=True) for _ in range(30)] == [200] * 30
        nursery.cancel_scope.cancel()


RUNTIME = """
layered_runtime:
  layers:
  - name: admin
    admin_layer: {}
"""


async def test_a_restarted_worker_keeps_resets_and_admin_changes(tmp_path: Path) -> None:
    backend = Backend()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        config = simple_config([backend.port]) + RUNTIME
        async with serve(tmp_path, config, "--concurrency", "2") as p:
            port = await listener_port(p)
            assert [await get(port, close=True) for _ in range(20)] == [200] * 20
            s = await stats(p.admin_port)  # every worker's counters, as now snapshotted
            assert s[RQ_TOTAL] == 20
            assert s["listener.127.0.0.1_0.worker_0.downstream_cx_total"] > 0
            for value in ("first", "last"):
                target = f"/runtime_modify?trioproxy.test={value}"
                assert (await admin(p.admin_port, target, "POST"))[0] == 200
            assert (await admin(p.admin_port, "/reset_counters", "POST"))[0] == 200

            # Worker 0 dies before any new snapshot; a real-time signal has no name.
            rt_signal = signal.SIGRTMIN + 2
            os.kill(p.worker_pids()[0], rt_signal)
            s = await _until_restarted(p.admin_port, 1, 30)
            assert s[RQ_TOTAL] == 0  # its pre-reset counters did not come back
            assert f"worker 0 exited (killed by signal {int(rt_signal)})" in p.log_text()

            # The new worker 0 (the first serving one answers /runtime) was given the change.
            _, text = await admin(p.admin_port, "/runtime")
            assert json.loads(text)["entries"]["trioproxy.test"]["final_value"] == "last"
        nursery.cancel_scope.cancel()


async def test_workers_still_initialising_do_not_outlive_a_killed_main(tmp_path: Path) -> None:
    dead = free_ports(1)[0]  # a control plane that never answers
    config = bootstrap(dead).replace(
        "resource_api_version: V3}", "resource_api_version: V3, initial_fetch_timeout: 0s}"
    )
    config = config.replace("port_value: 0}", f"port_value: {free_ports(1)[0]}}}")
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    log_path = tmp_path / "proxy.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - creating a file is instant
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioproxy", "serve", "-c", str(path), "--concurrency", "2"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    pids: list[int] = []
    try:
        with trio.fail_after(30):
            while len(pids) < 2:
                found = re.findall(r"worker \d+ started \(pid (\d+)\)", log_path.read_text())
                pids = [int(pid) for pid in found]
                await trio.sleep(0.1)
        process.kill()  # no drain, no goodbye: the workers find out by themselves
        await process.wait()
        with trio.fail_after(30):
            while True:
                if not any(_alive(pid) for pid in pids):
                    break
                await trio.sleep(0.1)
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
                await process.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
