"""The external filter example as its README runs it: the package installed with pip, found
by `trioproxy serve` through the entry-point group, configured from YAML, in front of the
echo service; and its own tests, which use trioproxy.testing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_ports, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "external-filter"


def test_the_example_package_is_installed() -> None:
    """The test session installs it from its own pyproject (noxfile), as a user would."""
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="trioproxy")}
    assert eps.get("api_key") == "trioproxy_api_key", (
        "pip install -e examples/external-filter (the nox tests session does)"
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    listen, admin, echo = free_ports(3)
    config = (EXAMPLE / "envoy.yaml").read_text()
    config = (
        config.replace("port_value: 10000", f"port_value: {listen}")
        .replace("port_value: 9901", f"port_value: {admin}")
        .replace("port_value: 8080", f"port_value: {echo}")
    )
    path = tmp_path_factory.mktemp("external") / "envoy.yaml"
    path.write_text(config)
    service = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "echo_service.py"), "echo", str(echo)]
    )
    log = path.with_name("proxy.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "trioproxy", "serve", "-c", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(echo)
        wait_port(listen)
        yield listen
    finally:
        for proc in (server, service):
            proc.terminate()
            proc.wait(10)
        log.close()


def _get(port: int, key: str | None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/orders")
    if key is not None:
        req.add_header("x-api-key", key)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_filter_guards_the_echo_service(proxy: int) -> None:
    assert _get(proxy, None) == (401, "an API key is required\n")
    assert _get(proxy, "nope") == (403, "unknown API key\n")
    status, body = _get(proxy, "s3cret-billing")
    assert status == 200
    assert "Request served by echo" in body
    assert "x-api-client: billing" in body.lower()
    assert "s3cret" not in body


def test_the_examples_own_tests_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
