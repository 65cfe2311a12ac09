"""The jaeger demo, natively: a front proxy, two services with trioproxy sidecars and a
Zipkin-compatible collector, one command.

    python examples/jaeger/run.py
    curl -v localhost:8000/trace/1         # Hello from behind Envoy (service 1)!
    curl -s localhost:9411/trees           # a few seconds later: the trace, four spans

Each "container" of the seed's docker-compose file gets its own loopback address, so the
three configs run with their own ports: the front proxy on 127.0.0.1:8000, service 1 (app
on :8080, sidecar ingress :8000, egress :9000, admin :8001) on 127.0.0.2, service 2 on
127.0.0.3, the collector on 127.0.0.1:9411. The configs are the seed's, unchanged on disk;
this script only rewrites their addresses (service1, service2, jaeger and 0.0.0.0) to those.
``--ips`` and the port flags move everything (the tests use free ones).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "front-proxy": "front-envoy-jaeger.yaml",
    "service1": "service1-envoy-jaeger.yaml",
    "service2": "service2-envoy-jaeger.yaml",
}


def rewrite(config: Any, table: dict[tuple[str, int], tuple[str, int]]) -> Any:
    """Replace every ``socket_address`` found in ``table``."""
    if isinstance(config, dict):
        sa = config.get("socket_address")
        if isinstance(sa, dict):
            key = (str(sa.get("address")), int(sa.get("port_value", 0)))
            if key in table:
                sa["address"], sa["port_value"] = table[key]
        for value in config.values():
            rewrite(value, table)
    elif isinstance(config, list):
        for value in config:
            rewrite(value, table)
    return config


def configs(args: argparse.Namespace) -> dict[str, str]:
    ip1, ip2 = args.ips.split(",")
    collector = ("127.0.0.1", args.collector_port)
    tables = {
        "front-proxy": {
            ("0.0.0.0", 8000): ("127.0.0.1", args.front_port),
            ("service1", 8000): (ip1, 8000),
            ("jaeger", 9411): collector,
        },
        "service1": {
            ("0.0.0.0", 8000): (ip1, 8000),
            ("0.0.0.0", 9000): (ip1, 9000),
            ("0.0.0.0", 8001): (ip1, 8001),
            ("127.0.0.1", 8080): (ip1, 8080),
            ("service2", 8000): (ip2, 8000),
            ("jaeger", 9411): collector,
        },
        "service2": {
            ("0.0.0.0", 8000): (ip2, 8000),
            ("0.0.0.0", 8001): (ip2, 8001),
            ("127.0.0.1", 8080): (ip2, 8080),
            ("jaeger", 9411): collector,
        },
    }
    out = {}
    for service, name in CONFIGS.items():
        with open(os.path.join(HERE, name)) as f:
            out[service] = yaml.safe_dump(rewrite(yaml.safe_load(f), tables[service]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--front-port", type=int, default=8000)
    parser.add_argument("--collector-port", type=int, default=9411)
    parser.add_argument("--ips", default="127.0.0.2,127.0.0.3", help="service 1's and 2's")
    parser.add_argument(
        "--proxy",
        default=f"{sys.executable} -m trioproxy serve",
        help="the proxy command (e.g. an envoy binary, to compare)",
    )
    args = parser.parse_args()
    ip1, ip2 = args.ips.split(",")
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="jaeger-demo-")

    def start(*cmd: str) -> None:
        procs.append(subprocess.Popen(cmd))

    start(sys.executable, os.path.join(HERE, "collector.py"), "--port", str(args.collector_port))
    service = os.path.join(HERE, "service.py")
    start(sys.executable, service, "--name", "1", "--host", ip1, "--egress", f"http://{ip1}:9000")
    start(sys.executable, service, "--name", "2", "--host", ip2)
    for name, text in configs(args).items():
        path = os.path.join(tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(text)
        start(*args.proxy.split(), "-c", path, "--service-cluster", name)
    print(
        f"front proxy on http://127.0.0.1:{args.front_port}/trace/1, collector on "
        f"http://127.0.0.1:{args.collector_port}/trees",
        file=sys.stderr,
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        codes = [p.wait() for p in procs]
    finally:
        for name in CONFIGS:
            path = os.path.join(tmp, f"{name}.yaml")
            if os.path.exists(path):
                os.unlink(path)
        os.rmdir(tmp)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
