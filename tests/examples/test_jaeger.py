"""The jaeger demo as a user runs it: `examples/jaeger/run.py`, one curl, one trace of four
spans in the collector, valid Zipkin v2 JSON."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support import free_ports, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
SCHEMA = json.loads((ROOT / "tests" / "tracing" / "zipkin-v2-span.schema.json").read_text())


def start_demo(proxy: str | None = None) -> tuple[subprocess.Popen[str], int, int]:
    front, collector = free_ports(2)
    net = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "jaeger" / "run.py"),
        "--front-port",
        str(front),
        "--collector-port",
        str(collector),
        "--ips",
        f"{net}.2,{net}.3",
    ]
    if proxy:
        cmd += ["--proxy", proxy]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(collector, 30)
    for host, port in [(f"{net}.{i}", p) for i in (2, 3) for p in (8080, 8000)] + [
        (f"{net}.2", 9000),
        ("127.0.0.1", front),
    ]:
        wait_port(port, 30, host=host)
    return proc, front, collector


def stop_demo(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def one_trace(collector: int, deadline: float = 20.0) -> list[dict[str, Any]]:
    """The collected trace once all four spans are in (each proxy flushes within 5 s)."""
    end = time.monotonic() + deadline
    while True:
        traces = json.loads(get(f"http://127.0.0.1:{collector}/api/v2/traces")[2])
        if (traces and len(traces[0]) >= 4) or time.monotonic() > end:
            return traces[0] if traces else []
        time.sleep(0.2)


def structure(spans: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    """(service, name, kind, parent's service/name) per span, ids aside."""
    by_id = {s["id"]: s for s in spans}

    def parent(s: dict[str, Any]) -> str | None:
        p = by_id.get(s.get("parentId", ""))
        return f"{p['localEndpoint']['serviceName']}/{p['name']}" if p else None

    return sorted(
        (s["localEndpoint"]["serviceName"], s["name"], s["kind"], parent(s)) for s in spans
    )


EXPECTED = [
    ("front-proxy", "checkAvailability", "CLIENT", None),
    ("service1", "checkAvailability", "SERVER", "front-proxy/checkAvailability"),
    ("service1", "checkStock", "CLIENT", "service1/checkAvailability"),
    ("service2", "checkStock", "SERVER", "service1/checkStock"),
]


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[int, int]]:
    proc, front, collector = start_demo()
    try:
        yield front, collector
    finally:
        out = stop_demo(proc)
        assert proc.returncode == 0, out


def test_one_request_one_trace_of_four_spans(demo: tuple[int, int]) -> None:
    front, collector = demo
    status, headers, body = get(f"http://127.0.0.1:{front}/trace/1")
    assert status == 200
    assert body.startswith(b"Hello from behind Envoy (service 1)!")
    assert headers["server"] == "envoy"
    assert "x-envoy-upstream-service-time" in headers
    spans = one_trace(collector)
    jsonschema.validate(spans, SCHEMA)
    assert len({s["traceId"] for s in spans}) == 1
    assert structure(spans) == EXPECTED
    for s in spans:
        assert s["tags"]["http.status_code"] == "200"
        assert s["tags"]["guid:x-request-id"] == spans[0]["tags"]["guid:x-request-id"]
        assert s["duration"] > 0
    # the collector prints the trace as a tree
    tree = get(f"http://127.0.0.1:{collector}/trees")[2].decode()
    assert "front-proxy: checkAvailability [CLIENT]" in tree
    assert "      - service2: checkStock [SERVER]" in tree
