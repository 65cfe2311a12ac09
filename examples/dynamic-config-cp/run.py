"""The dynamic-config-cp demo, natively: two echo services and trioproxy with only a bootstrap.

    python examples/dynamic-config-cp/run.py           # service1 :8081, service2 :8082, proxy
    curl 127.0.0.1:10000                                # refused: no listener yet
    python examples/dynamic-config-cp/control_plane.py  # in another terminal
    curl 127.0.0.1:10000                                # Request served by service1

Ctrl-C (or SIGTERM) stops everything. ``--admin-port`` and ``--xds-port`` move the ports (the
tests use free ones); the bootstrap is otherwise ``envoy.yaml`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from echo_service import serve_in_thread  # noqa: E402

SERVICES = {"service1": 8081, "service2": 8082}


def config_text(admin_port: int, xds_port: int) -> str:
    with open(os.path.join(HERE, "envoy.yaml")) as f:
        text = f.read()
    text = text.replace("port_value: 19000", f"port_value: {admin_port}")
    return text.replace("port_value: 18000", f"port_value: {xds_port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-port", type=int, default=19000)
    parser.add_argument("--xds-port", type=int, default=18000)
    parser.add_argument("--service1-port", type=int, default=SERVICES["service1"])
    parser.add_argument("--service2-port", type=int, default=SERVICES["service2"])
    parser.add_argument("trioproxy_args", nargs="*", help="extra flags for trioproxy serve")
    args = parser.parse_args()
    for name, port in (("service1", args.service1_port), ("service2", args.service2_port)):
        serve_in_thread(name, port)
        print(f"{name} on 127.0.0.1:{port}", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text(args.admin_port, args.xds_port))
        path = f.name
    cmd = [sys.executable, "-m", "trioproxy", "serve", "-c", path, *args.trioproxy_args]
    proxy = subprocess.Popen(cmd)
    print(
        f"trioproxy: admin http://127.0.0.1:{args.admin_port}/, "
        f"control plane expected on 127.0.0.1:{args.xds_port}",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        proxy.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return proxy.wait()
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
