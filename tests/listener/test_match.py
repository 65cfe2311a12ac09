"""Filter-chain selection, Envoy's precedence: pure function, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from trioproxy.errors import ConfigError
from trioproxy.listener.match import Candidate, ChainMatch, Conn, select


def chains(**named: dict[str, Any]) -> list[Candidate[str]]:
    return [Candidate(ChainMatch.from_proto(m), name) for name, m in named.items()]


def conn(
    local: str = "10.0.0.1:80",
    remote: str = "192.168.1.9:40000",
    sni: str = "",
    tp: str = "raw_buffer",
    alpn: tuple[str, ...] = (),
) -> Conn:
    lh, lp = local.rsplit(":", 1)
    rh, rp = remote.rsplit(":", 1)
    return Conn((lh, int(lp)), (rh, int(rp)), sni, tp, alpn)


def test_destination_port_beats_everything_after_it() -> None:
    cs = chains(
        by_port={"destination_port": 80},
        by_source={"source_prefix_ranges": [{"address_prefix": "192.168.0.0", "prefix_len": 16}]},
    )
    assert select(cs, conn()) == "by_port"
    assert select(cs, conn(local="10.0.0.1:81")) == "by_source"


def test_a_more_specific_match_that_fails_later_does_not_fall_back() -> None:
    # Envoy: port 80 picks the first chain; its source range then fails -> no match at all,
    # even though the catch-all would have accepted the connection.
    cs = chains(
        strict={
            "destination_port": 80,
            "source_prefix_ranges": [{"address_prefix": "172.16.0.0", "prefix_len": 12}],
        },
        catch_all={},
    )
    assert select(cs, conn()) is None
    assert select(cs, conn(remote="172.16.3.4:1")) == "strict"
    assert select(cs, conn(local="10.0.0.1:8080")) == "catch_all"


def test_longest_destination_prefix_wins() -> None:
    cs = chains(
        wide={"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]},
        narrow={"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 24}]},
        none={},
    )
    assert select(cs, conn(local="10.0.0.7:80")) == "narrow"
    assert select(cs, conn(local="10.9.0.7:80")) == "wide"
    assert select(cs, conn(local="11.0.0.1:80")) == "none"


def test_prefix_without_length_is_one_address_and_v4_mapped_v6_matches_v4() -> None:
    cs = chains(one={"prefix_ranges": [{"address_prefix": "10.0.0.7"}]}, other={})
    assert select(cs, conn(local="10.0.0.7:80")) == "one"
    assert select(cs, conn(local="::ffff:10.0.0.7:80")) == "one"
    assert select(cs, conn(local="10.0.0.8:80")) == "other"


def test_server_names_exact_then_longest_wildcard() -> None:
    cs = chains(
        exact={"server_names": ["api.example.com"]},
        wild={"server_names": ["*.example.com"]},
        deeper={"server_names": ["*.eu.example.com"]},
        none={},
    )
    assert select(cs, conn(sni="api.example.com")) == "exact"
    assert select(cs, conn(sni="API.example.com")) == "exact"
    assert select(cs, conn(sni="www.example.com")) == "wild"
    assert select(cs, conn(sni="a.eu.example.com")) == "deeper"
    assert select(cs, conn(sni="example.org")) == "none"
    assert select(cs, conn(sni="")) == "none"


def test_transport_and_application_protocols() -> None:
    cs = chains(
        tls_h2={"transport_protocol": "tls", "application_protocols": ["h2"]},
        tls={"transport_protocol": "tls"},
        plain={},
    )
    assert select(cs, conn(tp="tls", alpn=("h2", "http/1.1"))) == "tls_h2"
    assert select(cs, conn(tp="tls", alpn=("http/1.1",))) == "tls"
    assert select(cs, conn(tp="raw_buffer")) == "plain"


def test_source_type_ports_and_ranges() -> None:
    cs = chains(
        local={"source_type": "SAME_IP_OR_LOOPBACK"},
        external_port={"source_type": "EXTERNAL", "source_ports": [40000]},
        external={"source_type": "EXTERNAL"},
    )
    assert select(cs, conn(remote="127.0.0.1:5")) == "local"
    assert select(cs, conn(remote="10.0.0.1:5")) == "local"  # same IP as the local address
    assert select(cs, conn(remote="8.8.8.8:40000")) == "external_port"
    assert select(cs, conn(remote="8.8.8.8:40001")) == "external"


@pytest.mark.parametrize(
    ("match", "path", "reason"),
    [
        ({"destination_port": 0}, "destination_port", "1..65535"),
        ({"server_names": ["a*.example.com"]}, "server_names[0]", "partial wildcards"),
        (
            {"prefix_ranges": [{"address_prefix": "nope", "prefix_len": 8}]},
            "prefix_ranges[0]",
            "malformed",
        ),
        (
            {"source_prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 33}]},
            "source_prefix_ranges[0]",
            "malformed",
        ),
    ],
)
def test_bad_matches_name_the_field(match: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChainMatch.from_proto(match)
    assert info.value.path == path
    assert reason in info.value.reason
