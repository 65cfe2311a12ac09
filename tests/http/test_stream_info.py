"""StreamInfo as plugins use it: built with keywords, read and written attribute by attribute."""

from __future__ import annotations

import pytest

from trioproxy.http.headers import Headers
from trioproxy.http.stream_info import StreamInfo


def test_keywords_and_defaults() -> None:
    info = StreamInfo(start_time=1.5, start_monotonic=2.0, protocol="HTTP/2", connection_id=7)
    assert (info.start_time, info.start_monotonic, info.protocol) == (1.5, 2.0, "HTTP/2")
    assert info.connection_id == 7
    assert info.response_code == 0 and info.response_code_details == ""
    assert info.request_headers is None and info.end_monotonic is None
    assert info.response_flags == set() and info.filter_state == {}
    assert not info.health_check
    assert StreamInfo(1.5, 2.0).protocol == "HTTP/1.1"  # positional, as attrs allowed


def test_each_stream_gets_its_own_flags_and_filter_state() -> None:
    a, b = StreamInfo(0.0, 0.0), StreamInfo(0.0, 0.0)
    a.response_flags.add("DC")
    a.filter_state["k"] = 1
    assert b.response_flags == set() and b.filter_state == {}
    assert a.flags_string() == "DC" and b.flags_string() == "-"
    shared: dict[str, object] = {}
    c = StreamInfo(0.0, 0.0, filter_state=shared, response_flags={"UH"})
    assert c.filter_state is shared and c.flags_string() == "UH"


def test_attributes_are_writable_and_fixed() -> None:
    info = StreamInfo(start_time=0.0, start_monotonic=10.0)
    info.response_code = 503
    info.request_headers = Headers([(":path", "/")])
    info.end_monotonic = 10.25
    assert info.duration_ms() == 250
    with pytest.raises(AttributeError):
        info.no_such_field = 1  # type: ignore[attr-defined]


def test_identity_equality_and_repr() -> None:
    a, b = StreamInfo(0.0, 0.0), StreamInfo(0.0, 0.0)
    assert a != b and a == a and len({a, b}) == 2  # eq=False, as before
    text = repr(StreamInfo(1.0, 2.0, upstream_cluster="svc"))
    assert text.startswith("StreamInfo(start_time=1.0, start_monotonic=2.0, protocol='HTTP/1.1'")
    assert "upstream_cluster='svc'" in text and text.endswith(
        "local_reply_body='', upstream_cluster_observability='')"
    )
