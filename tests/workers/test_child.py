"""A worker's side of the control channel (``trioproxy.workers.child``), over a real socket
pair, and the pieces of the start message."""

from __future__ import annotations

import sys
import textwrap

import pytest
import trio

from tests.support import simple_config
from trioproxy.cli import main
from trioproxy.config import load_bootstrap
from trioproxy.errors import ConfigError
from trioproxy.registry import build_registry, extra_plugin_modules
from trioproxy.server import Options, Server
from trioproxy.workers.admin import AdminChanges
from trioproxy.workers.child import _control, options_from_message, options_message
from trioproxy.workers.ipc import Channel


async def test_a_failing_request_is_answered_with_an_error_and_the_worker_serves_on() -> None:
    loaded = load_bootstrap(yaml_text=textwrap.dedent(simple_config([1])))
    server = Server(loaded, Options())
    mine, theirs = trio.socket.socketpair()
    main = Channel(trio.SocketStream(mine))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_control, server, Channel(trio.SocketStream(theirs)))
        reply = await main.request({"op": "admin"})  # no method, no target: the handler raises
        assert "KeyError" in reply["error"]
        assert await main.request({"op": "state"}) == {"state": "PRE_INITIALIZING"}
        await main.aclose()  # the main is gone: the worker asks its server to drain
    assert server._shutdown.is_set()


def test_options_cross_the_channel_unchanged() -> None:
    options = Options(
        service_cluster="c",
        concurrency=3,
        drain_time=2.5,
        park_after=0.5,
        h1_codec="h11",
        command_line=("serve", "-c", "x.yaml"),
        worker_index=2,
        reuse_port=True,
        serve_admin=False,
        static_ports=(0, 8080),
    )
    assert options_from_message(options_message(options)) == options


def test_admin_changes_keep_only_the_last_value_of_each() -> None:
    changes = AdminChanges()
    for i in range(1000):
        changes.record(f"/runtime_modify?a={i}&b=x")
        changes.record("/healthcheck/fail" if i % 2 else "/healthcheck/ok")
        changes.record("/logging?level=debug")
    changes.record("/runtime_modify?b=")  # removed
    changes.record("/logging?level=warning")
    assert changes.targets() == [
        "/healthcheck/fail",
        "/logging?level=warning",
        "/runtime_modify?a=999",
    ]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_concurrency_below_one_is_refused_with_exit_status_2(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "-c", "envoy.yaml", "--concurrency", value])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_plugins_beyond_the_entry_points_reach_the_workers_by_module_name() -> None:
    assert extra_plugin_modules(build_registry()) == ()
    this_module = sys.modules[__name__]
    assert extra_plugin_modules(build_registry(extra=[this_module])) == (__name__,)

    class NotAModule:
        pass

    with pytest.raises(ConfigError, match="not a module"):
        extra_plugin_modules(build_registry(extra=[NotAModule()]))
