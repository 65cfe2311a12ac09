"""stdout/stderr/file access loggers: buffering, flushing, config forms and filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioproxy.accesslog import loggers
from trioproxy.accesslog.loggers import (
    FLUSH_BYTES,
    build_access_log,
    build_filter,
    close_all,
    flush_all,
    run_flusher,
    trioproxy_access_loggers,
)
from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.stream_info import StreamInfo
from trioproxy.registry import Kind

FILE_URL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_URL = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_URL = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


@pytest.fixture(autouse=True)
def _fresh_sinks() -> Iterator[None]:
    close_all()
    yield
    close_all()


@pytest.fixture
def kinds() -> Kind[Any]:
    return Kind("access logger", trioproxy_access_loggers())


def info(code: int = 200, path: str = "/a", duration: float = 0.010, **kw: Any) -> StreamInfo:
    i = StreamInfo(start_time=1795518434.279, start_monotonic=10.0, **kw)
    i.request_headers = Headers([(":method", "GET"), (":path", path), (":authority", "h")])
    i.response_code = code
    i.end_monotonic = 10.0 + duration
    return i


def file_entry(
    path: Path, fmt: str = "%RESPONSE_CODE% %REQ(:PATH)%\n", **extra: Any
) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_URL,
            "path": str(path),
            "log_format": {"text_format_source": {"inline_string": fmt}},
        },
        **extra,
    }


def test_file_logger_buffers_until_flushed(tmp_path: Path, kinds: Kind[Any]) -> None:
    out = tmp_path / "access.log"
    logger = build_access_log(file_entry(out), kinds, None)
    logger.log(info(200, "/one"))
    logger.log(info(503, "/two"))
    assert out.read_text() == ""
    flush_all()
    assert out.read_text() == "200 /one\n503 /two\n"


def test_file_logger_flushes_by_itself_past_64k(tmp_path: Path, kinds: Kind[Any]) -> None:
    out = tmp_path / "access.log"
    logger = build_access_log(file_entry(out, "%REQ(:PATH)%\n"), kinds, None)
    path = "/" + "x" * 1023
    for _ in range(FLUSH_BYTES // 1024 + 1):
        logger.log(info(path=path))
    assert out.stat().st_size >= FLUSH_BYTES


def test_loggers_on_one_path_share_a_file_and_keep_line_order(
    tmp_path: Path, kinds: Kind[Any]
) -> None:
    out = tmp_path / "access.log"
    a = build_access_log(file_entry(out, "a %REQ(:PATH)%\n"), kinds, None)
    b = build_access_log(file_entry(out, "b %REQ(:PATH)%\n"), kinds, None)
    a.log(info(path="/1"))
    b.log(info(path="/2"))
    a.log(info(path="/3"))
    flush_all()
    assert out.read_text() == "a /1\nb /2\na /3\n"


def test_file_logger_appends_to_an_existing_file(tmp_path: Path, kinds: Kind[Any]) -> None:
    out = tmp_path / "access.log"
    out.write_text("old\n")
    build_access_log(file_entry(out), kinds, None).log(info())
    flush_all()
    assert out.read_text() == "old\n200 /a\n"


def test_default_format_when_no_log_format(tmp_path: Path, kinds: Kind[Any]) -> None:
    out = tmp_path / "access.log"
    entry = {"name": "x", "typed_config": {"@type": FILE_URL, "path": str(out)}}
    build_access_log(entry, kinds, None).log(info())
    flush_all()
    assert (
        out.read_text()
        == '[2026-11-24T11:07:14.279Z] "GET /a HTTP/1.1" 200 - 0 0 10 - "-" "-" "-" "h" "-"\n'
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("format", "%RESPONSE_CODE%!\n", "200!\n"),
        ("json_format", {"code": "%RESPONSE_CODE%"}, '{"code":200}\n'),
        ("typed_json_format", {"p": "%REQ(:PATH)%"}, '{"p":"/a"}\n'),
    ],
)
def test_file_logger_legacy_format_fields(
    tmp_path: Path, kinds: Kind[Any], field: str, value: Any, expected: str
) -> None:
    out = tmp_path / "access.log"
    entry = {"name": "x", "typed_config": {"@type": FILE_URL, "path": str(out), field: value}}
    build_access_log(entry, kinds, None).log(info())
    flush_all()
    assert out.read_text() == expected


def test_stdout_and_stderr_loggers(kinds: Kind[Any], capfd: pytest.CaptureFixture[str]) -> None:
    fmt = {"text_format_source": {"inline_string": "%RESPONSE_CODE% %REQ(:PATH)%\n"}}
    for url in (STDOUT_URL, STDERR_URL):
        entry = {"name": "x", "typed_config": {"@type": url, "log_format": fmt}}
        build_access_log(entry, kinds, None).log(info(path="/" + url[-9:]))
    flush_all()
    captured = capfd.readouterr()
    assert captured.out == "200 /AccessLog\n"  # both paths end in .../StdxxxAccessLog
    assert captured.err == "200 /AccessLog\n"
    assert captured.out.count("\n") == 1 and captured.err.count("\n") == 1


def test_stdout_by_name_without_typed_config(
    kinds: Kind[Any], capfd: pytest.CaptureFixture[str]
) -> None:
    build_access_log({"name": "envoy.access_loggers.stdout"}, kinds, None).log(info())
    flush_all()
    assert '"GET /a HTTP/1.1" 200' in capfd.readouterr().out


def test_dev_stdout_path_goes_to_stdout(
    kinds: Kind[Any], capfd: pytest.CaptureFixture[str]
) -> None:
    build_access_log(file_entry(Path("/dev/stdout")), kinds, None).log(info())
    flush_all()
    assert capfd.readouterr().out == "200 /a\n"


async def test_run_flusher_flushes_periodically_and_on_cancel(
    tmp_path: Path, kinds: Kind[Any], autojump_clock: trio.testing.MockClock
) -> None:
    out = tmp_path / "access.log"
    logger = build_access_log(file_entry(out), kinds, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_flusher)
        logger.log(info(path="/first"))
        await trio.sleep(1.5)
        assert out.read_text() == "200 /first\n"
        logger.log(info(path="/last"))
        nursery.cancel_scope.cancel()
    assert out.read_text() == "200 /first\n200 /last\n"


# -- config errors ---------------------------------------------------------------------------


def test_empty_path_is_rejected(kinds: Kind[Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        build_access_log({"name": "x", "typed_config": {"@type": FILE_URL}}, kinds, None)
    assert exc.value.path == "typed_config.path"


def test_unopenable_path_is_rejected(tmp_path: Path, kinds: Kind[Any]) -> None:
    with pytest.raises(ConfigError, match="Failed to open file"):
        build_access_log(file_entry(tmp_path / "missing-dir" / "x.log"), kinds, None)


def test_bad_command_error_has_the_field_path(tmp_path: Path, kinds: Kind[Any]) -> None:
    with pytest.raises(ConfigError, match="Not supported field in StreamInfo: NOPE") as exc:
        build_access_log(file_entry(tmp_path / "a.log", "%NOPE%"), kinds, None)
    assert exc.value.path == "typed_config.log_format.text_format_source"


def test_unknown_logger_type(kinds: Kind[Any]) -> None:
    with pytest.raises(ConfigError, match="Didn't find a registered implementation"):
        build_access_log(
            {"name": "x", "typed_config": {"@type": "type.googleapis.com/nope.Nope"}}, kinds, None
        )


# -- filters ---------------------------------------------------------------------------------


def comparison(op: str, value: int) -> dict[str, Any]:
    return {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "rk"}}}


def test_status_code_filter_logs_only_matching(tmp_path: Path, kinds: Kind[Any]) -> None:
    out = tmp_path / "access.log"
    entry = file_entry(out, filter={"status_code_filter": comparison("GE", 500)})
    logger = build_access_log(entry, kinds, None)
    for code in (200, 404, 500, 503):
        logger.log(info(code))
    flush_all()
    assert out.read_text() == "500 /a\n503 /a\n"


@pytest.mark.parametrize(
    ("filt", "expect"),
    [
        ({"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 100}}}}, [1]),
        ({"duration_filter": {"comparison": {"op": "LE", "value": {"default_value": 100}}}}, [0]),
        (
            {"status_code_filter": {"comparison": {"op": "NE", "value": {"default_value": 200}}}},
            [1],
        ),
        ({"not_health_check_filter": {}}, [0, 1]),
        ({"response_flag_filter": {}}, [1]),
        ({"response_flag_filter": {"flags": ["UF", "NR"]}}, [1]),
        ({"response_flag_filter": {"flags": ["UH"]}}, []),
        (
            {
                "and_filter": {
                    "filters": [
                        {"not_health_check_filter": {}},
                        {
                            "status_code_filter": {
                                "comparison": {"op": "EQ", "value": {"default_value": 404}}
                            }
                        },
                    ]
                }
            },
            [1],
        ),
        (
            {
                "or_filter": {
                    "filters": [
                        {"response_flag_filter": {"flags": ["UH"]}},
                        {
                            "duration_filter": {
                                "comparison": {"op": "LE", "value": {"default_value": 5}}
                            }
                        },
                    ]
                }
            },
            [0],
        ),
    ],
)
def test_filters(filt: dict[str, Any], expect: list[int]) -> None:
    fast_ok = info(200, duration=0.003)
    slow_404 = info(404, duration=0.250)
    slow_404.response_flags = {"NR"}
    health = info(200, duration=0.003)
    health.health_check = True
    pred = build_filter(filt)
    assert [i for i, s in enumerate((fast_ok, slow_404)) if pred(s)] == expect
    if "not_health_check_filter" in filt:
        assert not pred(health)


def test_unsupported_filter_says_so() -> None:
    with pytest.raises(ConfigError, match="access log filter header_filter not supported yet"):
        build_filter({"header_filter": {"header": {"name": "x"}}})


def test_bad_flag_in_response_flag_filter_has_a_path(kinds: Kind[Any], tmp_path: Path) -> None:
    entry = file_entry(tmp_path / "a.log", filter={"response_flag_filter": {"flags": ["XX"]}})
    with pytest.raises(ConfigError) as exc:
        build_access_log(entry, kinds, None)
    assert exc.value.path == "filter.response_flag_filter.flags[0]"


def test_and_filter_needs_two_filters() -> None:
    with pytest.raises(ConfigError) as exc:
        build_filter({"and_filter": {"filters": [{"not_health_check_filter": {}}]}})
    assert exc.value.path == "and_filter.filters"


def test_nested_filter_errors_have_paths() -> None:
    with pytest.raises(ConfigError) as exc:
        build_filter(
            {"or_filter": {"filters": [{"not_health_check_filter": {}}, {"runtime_filter": {}}]}}
        )
    assert exc.value.path == "or_filter.filters[1].runtime_filter"


def test_sink_repr_shows_pending_bytes(tmp_path: Path) -> None:
    sink = loggers.sink_for(str(tmp_path / "r.log"))
    sink.write(b"abc")
    assert repr(sink).endswith("pending=3>")
