"""The front-proxy demo, natively: three colour services and trioproxy, one command.

    python examples/front-proxy/run.py
    curl -k https://127.0.0.1:8000/service     # blue, green, red in turn
    curl 127.0.0.1:8001/stats

Ctrl-C (or SIGTERM) stops everything. ``--listen-port``, ``--admin-port`` and ``--base-port``
move the ports (the tests use free ones); the config is otherwise ``envoy.yaml`` unchanged.
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

from colour_service import serve_in_thread  # noqa: E402

COLOURS = ("blue", "green", "red")


def config_text(listen_port: int, admin_port: int, base_port: int) -> str:
    with open(os.path.join(HERE, "envoy.yaml")) as f:
        text = f.read()
    text = text.replace("port_value: 8000", f"port_value: {listen_port}")
    text = text.replace("port_value: 8001", f"port_value: {admin_port}")
    for i in range(3):
        text = text.replace(f"port_value: {3001 + i}", f"port_value: {base_port + i}")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, default=8000)
    parser.add_argument("--admin-port", type=int, default=8001)
    parser.add_argument("--base-port", type=int, default=3001, help="blue; green and red follow")
    parser.add_argument("trioproxy_args", nargs="*", help="extra flags for trioproxy serve")
    args = parser.parse_args()
    for i, colour in enumerate(COLOURS):
        serve_in_thread(colour, args.base_port + i)
        print(f"{colour} service on 127.0.0.1:{args.base_port + i}", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text(args.listen_port, args.admin_port, args.base_port))
        path = f.name
    cmd = [sys.executable, "-m", "trioproxy", "serve", "-c", path, *args.trioproxy_args]
    proxy = subprocess.Popen(cmd)
    print(
        f"trioproxy on https://127.0.0.1:{args.listen_port}/service "
        f"(admin http://127.0.0.1:{args.admin_port}/)",
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
