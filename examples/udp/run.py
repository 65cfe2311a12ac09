"""The udp demo, natively: the UDP service and trioproxy, one command.

    python examples/udp/run.py
    echo -n HELO | nc -4u -w1 127.0.0.1 10000      # the service prints HELO
    echo -n OLEH | nc -4u -w1 127.0.0.1 10000      # ... and OLEH
    curl -s http://127.0.0.1:10001/stats | grep udp | grep -v "\\: 0"

Ctrl-C (or SIGTERM) stops both. ``--listen-port``, ``--admin-port`` and ``--service-port``
move the ports (the tests use free ones); the config is otherwise ``envoy.yaml``: the seed's,
with the service's DNS name ``service-udp`` spelled ``localhost`` and the admin endpoint on
loopback.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def config_text(listen_port: int, admin_port: int, service_port: int) -> str:
    with open(os.path.join(HERE, "envoy.yaml")) as f:
        text = f.read()
    text = text.replace("port_value: 10000", f"port_value: {listen_port}")
    text = text.replace("port_value: 10001", f"port_value: {admin_port}")
    return text.replace("port_value: 5005", f"port_value: {service_port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, default=10000)
    parser.add_argument("--admin-port", type=int, default=10001)
    parser.add_argument("--service-port", type=int, default=5005)
    parser.add_argument("trioproxy_args", nargs="*", help="extra flags for trioproxy serve")
    args = parser.parse_args()
    service = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "udp_service.py"), "--port", str(args.service_port)]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text(args.listen_port, args.admin_port, args.service_port))
        path = f.name
    cmd = [sys.executable, "-m", "trioproxy", "serve", "-c", path, *args.trioproxy_args]
    proxy = subprocess.Popen(cmd)
    print(
        f"trioproxy on udp 0.0.0.0:{args.listen_port} (admin http://127.0.0.1:{args.admin_port}/)",
        file=sys.stderr,
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        proxy.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return proxy.wait()
    finally:
        service.terminate()
        service.wait()
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
