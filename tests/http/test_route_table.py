"""The route table without sockets: virtual-host selection, matching, actions, mutations."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers
from trioproxy.http.route_table import HeaderMutations, Route, RouteConfiguration
from trioproxy.http.stream_info import StreamInfo


def req(path: str = "/", authority: str = "example.com", **headers: str) -> Headers:
    h = Headers(
        [(":authority", authority), (":path", path), (":method", "GET"), (":scheme", "http")]
    )
    for k, v in headers.items():
        h.add(k.replace("_", "-"), v)
    return h


def config(*vhosts: dict[str, Any], **top: Any) -> RouteConfiguration:
    return RouteConfiguration.from_proto({"name": "rc", "virtual_hosts": list(vhosts), **top})


def vhost(
    name: str, domains: list[str], routes: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}]
    return {"name": name, "domains": domains, "routes": routes, **extra}


DOMAINS = config(
    vhost("exact", ["api.example.com", "api.example.com:8080"]),
    vhost("suffix_long", ["*.api.example.com"]),
    vhost("suffix", ["*.example.com"]),
    vhost("prefix", ["api.*"]),
    vhost("any", ["*"]),
)


@pytest.mark.parametrize(
    ("authority", "vhost_name"),
    [
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),  # case-insensitive
        ("api.example.com:8080", "exact"),  # a port is part of the name
        ("v1.api.example.com", "suffix_long"),  # the longest suffix wins
        ("www.example.com", "suffix"),
        ("api.other.org", "prefix"),
        ("example.com", "any"),  # "*.example.com" needs at least one character before
        ("api.example.com:9090", "prefix"),  # the port stays in the name: only api.* fits
    ],
)
def test_virtual_host_selection(authority: str, vhost_name: str) -> None:
    vh = DOMAINS.find_virtual_host(req(authority=authority))
    assert vh is not None and vh.name == vhost_name


def test_ignore_port_in_host_matching() -> None:
    rc = config(vhost("a", ["a.com"]), ignore_port_in_host_matching=True)
    assert rc.route(req(authority="a.com:1234")) is not None


def test_no_virtual_host_means_no_route() -> None:
    assert config(vhost("a", ["a.com"])).route(req(authority="b.com")) is None


@given(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){1,3}", fullmatch=True))
def test_an_exact_domain_always_wins_over_wildcards(host: str) -> None:
    rc = config(
        vhost("wild", ["*"]),
        vhost("suffix", ["*" + host[host.index(".") :]]),
        vhost("prefix", [host[: host.index(".") + 1] + "*"]),
        vhost("exact", [host]),
    )
    vh = rc.find_virtual_host(req(authority=host))
    assert vh is not None and vh.name == "exact"


def test_duplicate_domains_are_rejected_with_a_path() -> None:
    with pytest.raises(ConfigError) as err:
        config(vhost("a", ["x.com"]), vhost("b", ["X.com"]))
    assert "Only unique values for domains are permitted" in err.value.reason
    assert err.value.path == "virtual_hosts[1].domains[0]"


def routes(*rs: dict[str, Any]) -> RouteConfiguration:
    return config(vhost("v", ["*"], list(rs)))


def test_first_matching_route_wins_and_query_is_ignored_for_paths() -> None:
    rc = routes(
        {"name": "exact", "match": {"path": "/a"}, "route": {"cluster": "x"}},
        {"name": "prefix", "match": {"prefix": "/a"}, "route": {"cluster": "y"}},
    )
    assert rc.route(req("/a?q=1")).name == "exact"  # type: ignore[union-attr]
    assert rc.route(req("/ab")).name == "prefix"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("match", "path", "hit"),
    [
        ({"prefix": "/API", "case_sensitive": False}, "/api/x", True),
        ({"prefix": "/API"}, "/api/x", False),
        ({"safe_regex": {"regex": "/v[0-9]+/.*"}}, "/v12/users", True),
        ({"safe_regex": {"regex": "/v[0-9]+"}}, "/v12/users", False),  # full match
        ({"path_separated_prefix": "/api"}, "/api", True),
        ({"path_separated_prefix": "/api"}, "/api/x", True),
        ({"path_separated_prefix": "/api"}, "/apix", False),
    ],
)
def test_path_matchers(match: dict[str, Any], path: str, hit: bool) -> None:
    rc = routes({"match": match, "route": {"cluster": "c"}})
    assert (rc.route(req(path)) is not None) is hit


def test_header_and_query_matchers() -> None:
    rc = routes(
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": "x-env", "string_match": {"exact": "prod"}},
                    {"name": "x-debug", "present_match": False},
                    {"name": "x-n", "range_match": {"start": 1, "end": 10}},
                ],
                "query_parameters": [{"name": "v", "string_match": {"prefix": "2"}}],
            },
            "route": {"cluster": "c"},
        }
    )
    assert rc.route(req("/?v=2.1", x_env="prod", x_n="5")) is not None
    assert rc.route(req("/?v=1", x_env="prod", x_n="5")) is None
    assert rc.route(req("/?v=2", x_env="prod", x_n="10")) is None  # end is exclusive
    assert rc.route(req("/?v=2", x_env="prod", x_n="5", x_debug="1")) is None
    assert rc.route(req("/?v=2", x_env="dev", x_n="5")) is None


def test_weighted_clusters_follow_the_random_value() -> None:
    rc = routes(
        {
            "match": {"prefix": "/"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": "a", "weight": 20}, {"name": "b", "weight": 80}]
                }
            },
        }
    )
    route = rc.route(req())
    assert route is not None
    picks = [route.cluster_name(req(), v) for v in range(100)]
    assert picks.count("a") == 20 and picks.count("b") == 80


@pytest.mark.parametrize(
    ("prefix", "rewrite", "path", "expected"),
    [
        ("/prefix", "/", "/prefix/etc", "//etc"),  # Envoy's documented double slash
        ("/prefix/", "/", "/prefix/etc", "/etc"),
        ("/api", "/v2", "/api/users?x=1", "/v2/users?x=1"),
    ],
)
def test_prefix_rewrite(prefix: str, rewrite: str, path: str, expected: str) -> None:
    rc = routes({"match": {"prefix": prefix}, "route": {"cluster": "c", "prefix_rewrite": rewrite}})
    h = req(path)
    route = rc.route(h)
    assert route is not None
    route.rewrite(h)
    assert h.get(":path") == expected
    assert h.get("x-envoy-original-path") == path


def test_regex_rewrite_and_host_rewrite() -> None:
    rc = routes(
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "c",
                "regex_rewrite": {
                    "pattern": {"regex": "^/service/([^/]+)(/.*)$"},
                    "substitution": "\\2/instance/\\1",
                },
                "host_rewrite_literal": "internal.local",
            },
        }
    )
    h = req("/service/foo/v1/api")
    rc.route(h).rewrite(h)  # type: ignore[union-attr]
    assert h.get(":path") == "/v1/api/instance/foo"
    assert h.get(":authority") == "internal.local"


def test_timeouts() -> None:
    rc = routes(
        {"match": {"path": "/default"}, "route": {"cluster": "c"}},
        {"match": {"path": "/off"}, "route": {"cluster": "c", "timeout": "0s"}},
        {"match": {"path": "/short"}, "route": {"cluster": "c", "timeout": "0.250s"}},
    )
    assert rc.route(req("/default")).timeout == 15.0  # type: ignore[union-attr]
    assert rc.route(req("/off")).timeout is None  # type: ignore[union-attr]
    assert rc.route(req("/short")).timeout == 0.25  # type: ignore[union-attr]


def test_redirects() -> None:
    rc = routes(
        {
            "match": {"prefix": "/old"},
            "redirect": {"prefix_rewrite": "/new", "response_code": "FOUND"},
        },
        {"match": {"prefix": "/"}, "redirect": {"https_redirect": True, "strip_query": True}},
    )
    old = rc.route(req("/old/page?a=1"))
    assert old is not None and old.redirect is not None
    assert old.redirect.response_code == 302
    assert old.redirect.location(req("/old/page?a=1")) == "http://example.com/new/page?a=1"
    https = rc.route(req("/x?a=1", authority="example.com:80"))
    assert https is not None and https.redirect is not None
    assert https.redirect.response_code == 301
    assert https.redirect.location(req("/x?a=1", authority="example.com:80")) == (
        "https://example.com/x"
    )


def test_direct_response() -> None:
    rc = routes(
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 403, "body": {"inline_string": "nope"}},
        }
    )
    route = rc.route(req())
    assert route is not None and route.direct_response is not None
    assert (route.direct_response.status, route.direct_response.body) == (403, b"nope")


def _add(key: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": action}


def test_header_mutation_order_less_specific_wins_by_default() -> None:
    route_level = {
        "match": {"prefix": "/"},
        "route": {"cluster": "c"},
        "request_headers_to_add": [_add("x-level", "route")],
        "response_headers_to_add": [_add("x-r", "route")],
    }
    vh = vhost("v", ["*"], [route_level], request_headers_to_add=[_add("x-level", "vhost")])
    rc = config(
        vh,
        request_headers_to_add=[_add("x-level", "config")],
        request_headers_to_remove=["x-secret"],
    )
    h = req(x_secret="1")
    route = rc.route(h)
    assert route is not None
    route.apply_request_headers(h, None)
    assert h.get_all("x-level") == ["config"]
    assert "x-secret" not in h
    flipped = config(
        vh,
        request_headers_to_add=[_add("x-level", "config")],
        most_specific_header_mutations_wins=True,
    )
    h = req()
    flipped.route(h).apply_request_headers(h, None)  # type: ignore[union-attr]
    assert h.get_all("x-level") == ["route"]


def test_header_values_use_the_substitution_formatter() -> None:
    rc = routes(
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "c"},
            "request_headers_to_add": [
                _add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                _add("x-pct", "100%%"),
            ],
        }
    )
    info = StreamInfo(
        start_time=0.0, start_monotonic=0.0, downstream_remote_address="10.1.2.3:5555"
    )
    h = req()
    rc.route(h).apply_request_headers(h, info)  # type: ignore[union-attr]
    assert h.get("x-client") == "10.1.2.3"
    assert h.get("x-pct") == "100%"


def test_per_filter_config_most_specific_level_first() -> None:
    rc = config(
        vhost(
            "v",
            ["*"],
            [
                {
                    "match": {"path": "/r"},
                    "route": {"cluster": "c"},
                    "typed_per_filter_config": {"f": {"level": "route"}},
                },
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
            ],
            typed_per_filter_config={"f": {"level": "vhost"}},
        ),
        typed_per_filter_config={"f": {"level": "config"}, "g": {"level": "config"}},
    )
    assert rc.route(req("/r")).per_filter_config("f") == {"level": "route"}  # type: ignore[union-attr]
    assert rc.route(req("/x")).per_filter_config("f") == {"level": "vhost"}  # type: ignore[union-attr]
    assert rc.route(req("/x")).per_filter_config("g") == {"level": "config"}  # type: ignore[union-attr]


def test_bad_regex_is_a_config_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        routes({"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "c"}})
    assert err.value.path == "virtual_hosts[0].routes[0].safe_regex"


# -- the classes as plain (compilable) classes keep what attrs gave them ----------------------


def test_routes_and_mutations_are_frozen() -> None:
    rc = routes({"match": {"prefix": "/"}, "route": {"cluster": "c"}})
    route = rc.route(req())
    assert route is not None
    for obj, name in ((route, "timeout"), (route.request_mutations, "add")):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(obj, name, None)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            delattr(obj, name)
    assert route.timeout == 15.0
    assert route.request_mutations.add == ()


def test_route_keywords_defaults_and_identity() -> None:
    def match(path: str, h: Headers) -> bool:
        return True

    a = Route(name="a", match_fn=match, cluster="c")
    b = Route("a", match, cluster="c")
    assert (a.timeout, a.buffer_limit, a.cluster_not_found_response_code) == (15.0, 1 << 20, 503)
    assert a.mutates_headers and a.virtual_host is None and a.config is None
    assert a.per_filter == {} and a.per_filter is not b.per_filter
    assert a.request_mutations == HeaderMutations() and a.request_mutations.empty
    assert a != b and len({a, b}) == 2  # identity, as attrs' eq=False


def test_header_mutations_compare_by_value() -> None:
    one = HeaderMutations((("x-a", "1", "APPEND_IF_EXISTS_OR_ADD", False),), ("x-b",))
    assert one == HeaderMutations((("x-a", "1", "APPEND_IF_EXISTS_OR_ADD", False),), ("x-b",))
    assert one != HeaderMutations(remove=("x-b",))
    assert HeaderMutations().formatters is not HeaderMutations().formatters


def test_route_repr_names_its_virtual_host_and_config() -> None:
    rc = config(vhost("v", ["*"]))
    text = repr(rc.route(req()))
    assert text.startswith("Route(name='', match_fn=")
    assert "cluster='v'" in text
    assert "virtual_host=<VirtualHost 'v'>" in text
    assert "config=<RouteConfiguration 'rc'>" in text
    assert "HeaderMutations(add=(), remove=(), formatters={})" in text


# -- CONNECT and upgrades ---------------------------------------------------------------------


def connect_req(authority: str = "example.com:443") -> Headers:
    """A CONNECT as the HTTP/1.1 connection manager builds it: no :path."""
    return Headers([(":authority", authority), (":method", "CONNECT"), (":scheme", "http")])


def test_connect_matches_only_connect_matcher_routes() -> None:
    rc = config(
        vhost(
            "v",
            ["*"],
            [
                {"match": {"prefix": "/"}, "route": {"cluster": "web"}},
                {"name": "tunnel", "match": {"connect_matcher": {}}, "route": {"cluster": "t"}},
            ],
        )
    )
    route = rc.route(connect_req())
    assert route is not None and route.name == "tunnel" and route.pathless
    assert rc.route(req("/")).cluster == "web"  # type: ignore[union-attr]
    # a connect_matcher route never takes a request with a path
    only_connect = config(
        vhost("v", ["*"], [{"match": {"connect_matcher": {}}, "route": {"cluster": "t"}}])
    )
    assert only_connect.route(req("/")) is None
    # and without one, a CONNECT finds no route (Envoy answers 404 NR)
    assert config(vhost("v", ["*"])).route(connect_req()) is None


def test_connect_matcher_still_checks_headers() -> None:
    rc = config(
        vhost(
            "v",
            ["*"],
            [
                {
                    "match": {
                        "connect_matcher": {},
                        "headers": [{"name": "x-tunnel", "present_match": True}],
                    },
                    "route": {"cluster": "t"},
                }
            ],
        )
    )
    assert rc.route(connect_req()) is None
    h = connect_req()
    h.add("x-tunnel", "1")
    assert rc.route(h) is not None


def _route_with(upgrade_configs: list[dict[str, Any]]) -> Route:
    rc = config(
        vhost(
            "v",
            ["*"],
            [
                {
                    "match": {"connect_matcher": {}},
                    "route": {"cluster": "c", "upgrade_configs": upgrade_configs},
                }
            ],
        )
    )
    route = rc.route(connect_req())
    assert route is not None
    return route


def test_route_upgrade_configs_override_the_connection_managers() -> None:
    # Envoy's table: the route's setting wins when it names the type, else the HCM's
    route = _route_with(
        [{"upgrade_type": "WebSocket"}, {"upgrade_type": "CONNECT", "enabled": False}]
    )
    assert route.upgrades == {"websocket": True, "connect": False}
    assert route.upgrade_enabled("websocket", frozenset())
    assert not route.upgrade_enabled("connect", frozenset({"connect"}))
    assert route.upgrade_enabled("h2c-other", frozenset({"h2c-other"}))
    assert not route.upgrade_enabled("spdy/3", frozenset())
    assert not route.terminate_connect


def test_connect_config_terminates_connect() -> None:
    assert _route_with([{"upgrade_type": "CONNECT", "connect_config": {}}]).terminate_connect
    assert _route_with([{"upgrade_type": "connect", "connect_config": {}}]).terminate_connect
    assert not _route_with([{"upgrade_type": "CONNECT"}]).terminate_connect


@pytest.mark.parametrize(
    ("upgrade_configs", "message", "path"),
    [
        (
            [{"upgrade_type": "websocket"}, {"upgrade_type": "WebSocket"}],
            "Duplicate upgrade WebSocket",
            "upgrade_configs[1]",
        ),
        (
            [{"upgrade_type": "websocket", "connect_config": {}}],
            "Non-CONNECT upgrade type websocket has ConnectConfig",
            "upgrade_configs[0].connect_config",
        ),
        (
            [{"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}],
            "allow_post is not supported yet",
            "upgrade_configs[0].connect_config.allow_post",
        ),
        (
            [
                {
                    "upgrade_type": "CONNECT",
                    "connect_config": {"proxy_protocol_config": {"version": "V2"}},
                }
            ],
            "proxy_protocol_config is not supported yet",
            "upgrade_configs[0].connect_config.proxy_protocol_config",
        ),
        (
            [{"upgrade_type": "CONNECT-UDP", "connect_config": {}}],
            "CONNECT-UDP is not supported yet",
            "upgrade_configs[0].connect_config",
        ),
    ],
)
def test_route_upgrade_config_errors_name_the_field(
    upgrade_configs: list[dict[str, Any]], message: str, path: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _route_with(upgrade_configs)
    assert err.value.reason == message
    assert err.value.path.endswith(f"routes[0].route.{path}")
