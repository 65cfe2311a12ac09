"""Active health checking against real servers on 127.0.0.1: HTTP, TCP and gRPC checks take
failing hosts out of load balancing and bring them back."""

from __future__ import annotations

import sys
import textwrap
from concurrent import futures
from pathlib import Path

import grpc
import trio

from tests.support import Backend, Client, Recorded, Reply, free_ports, simple_config, start_proxy


def http_check(**fields: str) -> str:
    spec = {
        "timeout": "1s",
        "interval": "0.1s",
        "no_traffic_interval": "0.1s",
        "unhealthy_threshold": "2",
        "healthy_threshold": "2",
    }
    spec.update(fields)
    lines = "".join(f"\n      {k}: {v}" for k, v in spec.items())
    return f"""
    health_checks:
    - http_health_check: {{path: /healthz}}{lines}"""


def health_app(state: dict[str, int]) -> Backend:
    """Answers /healthz with ``state["hc"]`` and everything else with 200 and its name."""

    def handler(rec: Recorded) -> Reply:
        if rec.target == "/healthz":
            return Reply(state["hc"], body=b"")
        return Reply(body=state["name"].to_bytes(1, "big"))

    return Backend(handler=handler)


async def bodies(port: int, n: int) -> list[bytes]:
    client = await Client.connect(port)
    try:
        return [(await client.request("GET", "/"))[1] for _ in range(n)]
    finally:
        await client.aclose()


async def test_http_checks_take_a_failing_host_out_and_bring_it_back(
    nursery: trio.Nursery,
) -> None:
    a_state = {"hc": 200, "name": ord("a")}
    b_state = {"hc": 503, "name": ord("b")}
    a, b = health_app(a_state), health_app(b_state)
    ports = [await nursery.start(a.serve), await nursery.start(b.serve)]
    proxy = await start_proxy(nursery, simple_config(ports, cluster_extra=http_check()))
    # ready only after the first round: b's 503 already took it out
    assert set(await bodies(proxy.port, 6)) == {b"a"}
    assert proxy.stat("cluster.backend.health_check.healthy") == 1
    assert proxy.stat("cluster.backend.membership_healthy") == 1
    check = next(r for r in b.requests if r.target == "/healthz")
    assert check.header("user-agent") == "Envoy/HC"
    assert check.header("host") == "backend"  # the cluster's name, as Envoy sends it
    b_state["hc"] = 200
    await trio.sleep(0.5)  # healthy_threshold (2) checks 0.1 s apart, and slack
    assert set(await bodies(proxy.port, 6)) == {b"a", b"b"}
    a_state["hc"] = 500  # not expected: unhealthy at once, whatever unhealthy_threshold says
    await trio.sleep(0.3)
    assert set(await bodies(proxy.port, 6)) == {b"b"}
    assert proxy.stat("cluster.backend.health_check.failure") >= 2
    assert proxy.stat("cluster.backend.health_check.network_failure") == 0


async def test_network_failures_count_toward_the_unhealthy_threshold(
    nursery: trio.Nursery,
) -> None:
    state = {"hc": 200, "name": ord("a")}
    backend = health_app(state)
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await backend.serve(task_status=task_status)

    port = await nursery.start(run)
    (other,) = free_ports(1)  # nothing listens: fails every check (network)
    extra = http_check(unhealthy_threshold="3", interval="0.2s", no_traffic_interval="0.2s")
    proxy = await start_proxy(nursery, simple_config([port, other], cluster_extra=extra))
    assert proxy.stat("cluster.backend.health_check.healthy") == 1
    scope.cancel()  # the healthy one stops: refused connections from now on
    await trio.sleep(0.3)  # one or two failed checks: below the threshold, still in
    assert proxy.stat("cluster.backend.health_check.healthy") == 1
    await trio.sleep(0.5)
    assert proxy.stat("cluster.backend.health_check.healthy") == 0
    assert proxy.stat("cluster.backend.health_check.network_failure") >= 3
    client = await Client.connect(proxy.port)
    try:
        resp, body = await client.request("GET", "/")
    finally:
        await client.aclose()
    # every host failed: panic mode balances over all of them (Envoy's default 50%)
    assert resp.status_code == 503
    assert proxy.stat("cluster.backend.lb_healthy_panic") == 1


async def test_tcp_checks_send_and_match_payloads(nursery: trio.Nursery) -> None:
    async def answer(reply: bytes, stream: trio.SocketStream) -> None:
        async with stream:
            if await stream.receive_some(100) == b"ping":
                await stream.send_all(reply)
            await stream.receive_some(100)

    listeners = []
    for reply in (b"..pong..", b"nope"):
        ls = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, lambda s, r=reply: answer(r, s), ls)
        listeners.append(ls[0].socket.getsockname()[1])
    extra = """
    health_checks:
    - timeout: 0.3s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check:
        send: {text: "70696e67"}
        receive: [{text: "706f6e67"}]"""
    proxy = await start_proxy(nursery, simple_config(listeners, cluster_extra=extra))
    assert proxy.stat("cluster.backend.health_check.healthy") == 1
    assert proxy.stat("cluster.backend.health_check.success") >= 1
    assert proxy.stat("cluster.backend.health_check.network_failure") >= 1  # "nope" timed out


async def test_grpc_checks_call_the_health_service(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    def check(serving: bool):  # type: ignore[no-untyped-def]
        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            seen.append(request)
            return b"\x08\x01" if serving else b"\x08\x02"  # SERVING / NOT_SERVING

        return handler

    servers, ports = [], []
    for serving in (True, False):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(check(serving), bytes, bytes)},
        )
        server.add_generic_rpc_handlers((handler,))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
    try:
        extra = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {service_name: shop}"""
        proxy = await start_proxy(nursery, simple_config(ports, cluster_extra=extra))
        assert proxy.stat("cluster.backend.health_check.healthy") == 1
        assert seen and all(r == b"\x0a\x04shop" for r in seen)  # HealthCheckRequest
        assert proxy.stat("cluster.backend.health_check.network_failure") == 0
    finally:
        for server in servers:
            server.stop(0)


async def test_admin_shows_failed_active_hc(nursery: trio.Nursery) -> None:
    good = health_app({"hc": 200, "name": ord("a")})
    bad = health_app({"hc": 503, "name": ord("b")})
    ports = [await nursery.start(good.serve), await nursery.start(bad.serve)]
    proxy = await start_proxy(nursery, simple_config(ports, cluster_extra=http_check()))
    admin = await Client.connect(proxy.admin_port)
    try:
        _, text = await admin.request("GET", "/clusters")
    finally:
        await admin.aclose()
    lines = text.decode().splitlines()
    assert f"backend::127.0.0.1:{ports[0]}::health_flags::healthy" in lines
    assert f"backend::127.0.0.1:{ports[1]}::health_flags::/failed_active_hc" in lines


async def test_a_health_check_without_interval_is_refused(tmp_path: Path) -> None:
    config = simple_config(
        [1],
        cluster_extra="""
    health_checks:
    - timeout: 1s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check: {path: /healthz}""",
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(textwrap.dedent(config))
    done = await trio.run_process(
        [sys.executable, "-m", "trioproxy", "validate", str(path)],
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert "clusters[0].health_checks[0].interval: value is required" in done.stderr.decode()
