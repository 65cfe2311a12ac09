"""Every field of the messages trioproxy builds is read, refused or knowingly ignored.

A field trioproxy does not act on must not be accepted as if it were honoured: the Envoy API
grows with each release, and a new field left out of all three lists fails here."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import pytest

from trioproxy.config import load_bootstrap
from trioproxy.config.descriptors import pool
from trioproxy.config.unsupported import ACCEPTED_WITHOUT_EFFECT, NOT_SUPPORTED
from trioproxy.errors import ConfigError

# the sources (a compiled test run works from a copy of tests/: noxfile.tests_compiled)
ROOT = Path(os.environ.get("TRIOPROXY_SOURCE_ROOT") or Path(__file__).resolve().parents[2])
MESSAGES = sorted(set(NOT_SUPPORTED) | set(ACCEPTED_WITHOUT_EFFECT))


def _source() -> str:
    files = glob.glob(str(ROOT / "trioproxy" / "**" / "*.py"), recursive=True)
    files += glob.glob(str(ROOT / "plugins" / "**" / "*.py"), recursive=True)
    return "".join(Path(f).read_text() for f in files if not f.endswith("unsupported.py"))


@pytest.mark.parametrize("message", MESSAGES)
def test_every_field_is_read_refused_or_listed(message: str) -> None:
    md = pool().FindMessageTypeByName(message)
    refused = NOT_SUPPORTED.get(message, {})
    ignored = ACCEPTED_WITHOUT_EFFECT.get(message, {})
    for name in [*refused, *ignored]:
        assert name in md.fields_by_name, f"{message} has no field {name}"
    assert not set(refused) & set(ignored)
    source = _source()
    # read through f-strings: route_table._mutations (f"{kind}_headers_to_remove")
    source += "'request_headers_to_remove' 'response_headers_to_remove'"
    # read only as a quoted key: a name in a comment or a longer word does not count
    unclassified = [
        f.name
        for f in md.fields
        if not f.GetOptions().deprecated
        and f.name not in refused
        and f.name not in ignored
        and re.search(rf"[\"']{f.name}[\"']", source) is None
    ]
    assert unclassified == []


STATIC = """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM
          stat_prefix: x
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              ROUTE_EXTRA
              routes: [{match: {prefix: "/"}, route: {cluster: c, ACTION_EXTRA}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
""".replace(
    "HCM",
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager",
)


@pytest.mark.parametrize(
    "route_extra,action_extra,path",
    [
        ("virtual_clusters: [{name: a, headers: [{name: x}]}]", "", "virtual_clusters"),
        ("", "hedge_policy: {initial_requests: 2}", "routes[0].route.hedge_policy"),
        (
            "",
            "host_rewrite_path_regex: {pattern: {regex: a}, substitution: b}",
            "routes[0].route.host_rewrite_path_regex",
        ),
    ],
)
def test_a_refused_field_is_named_with_its_line(
    route_extra: str, action_extra: str, path: str
) -> None:
    text = STATIC.replace("ROUTE_EXTRA", route_extra)
    text = text.replace(", ACTION_EXTRA", f", {action_extra}" if action_extra else "")
    with pytest.raises(ConfigError) as info:
        load_bootstrap(yaml_text=text)
    err = info.value
    assert err.reason == "not supported by trioproxy yet"
    assert path in (err.path or "")
    assert err.line is not None and err.line >= 16


def test_envoy_defaults_spelt_out_are_accepted() -> None:
    text = (
        STATIC.replace("ROUTE_EXTRA", "")
        .replace(", ACTION_EXTRA", "")
        .replace(
            "stat_prefix: x",
            "stat_prefix: x\n          proxy_100_continue: false"
            "\n          stream_error_on_invalid_http_message: false",
        )
        .replace("route_config:", "route_config:\n            validate_clusters: false")
    )
    hcm = load_bootstrap(yaml_text=text).canonical["static_resources"]["listeners"][0]
    typed = hcm["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed.get("proxy_100_continue", False) is False  # (a plain bool: omitted)
    assert typed["stream_error_on_invalid_http_message"] is False
    assert typed["route_config"]["validate_clusters"] is False


def test_the_preserve_case_header_formatter_is_refused() -> None:
    text = STATIC.replace("ROUTE_EXTRA", "").replace(", ACTION_EXTRA", "")
    text = text.replace(
        "stat_prefix: x",
        "stat_prefix: x\n          http_protocol_options:\n            header_key_format:"
        "\n              stateful_formatter: {name: preserve_case, typed_config: "
        '{"@type": type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.'
        "v3.PreserveCaseFormatterConfig}}",
    )
    with pytest.raises(ConfigError) as info:
        load_bootstrap(yaml_text=text)
    assert info.value.reason == "not supported by trioproxy yet"
    assert "http_protocol_options.header_key_format.stateful_formatter" in (info.value.path or "")
    assert info.value.line == 14


def test_a_clusters_http2_keepalive_is_read() -> None:
    """(The behaviour: tests/differential/test_h2_upstream_keepalive.py.)"""
    from trioproxy.upstream.config import ClusterConfig, H2Keepalive

    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    keepalive = {"timeout": "1s", "interval": "10s", "connection_idle_interval": "0.5s"}
    raw = {
        "name": "c",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            options: {
                "@type": f"type.googleapis.com/{options}",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": keepalive}
                },
            }
        },
    }
    config = ClusterConfig.from_proto(raw)
    assert config.http2_keepalive == H2Keepalive(
        timeout=1.0, interval=10.0, jitter=15.0, idle_interval=0.5
    )
