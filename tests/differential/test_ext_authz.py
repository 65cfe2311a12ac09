"""ext_authz with an HTTP authorization service, through real Envoy and trioproxy: what the
service is asked, what the client and the upstream get when it allows, denies or fails, and
the stats that moved."""

from __future__ import annotations

import fnmatch

import pytest
import trio

from .harness import (
    RecordedRequest,
    RecordingUpstream,
    Reply,
    build_request,
    find_envoy,
    get_stat_names,
    http_config,
    run_proxy,
    send_raw,
    static_cluster,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3"
ROUTES = """
- match: {prefix: "/public"}
  route: {cluster: backend}
  typed_per_filter_config:
    envoy.filters.http.ext_authz:
      "@type": {authz}.ExtAuthzPerRoute
      {per_route}
- match: {prefix: "/"}
  route: {cluster: backend}
"""
CONFIG = http_config(
    routes=ROUTES.replace("{per_route}", "disabled: true"),
    http_filters="""
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": {authz}.ExtAuthz
    http_service:
      server_uri: {uri: "http://authz", cluster: authz, timeout: 1s}
      path_prefix: /check
      authorization_request:
        allowed_headers: {patterns: [{exact: x-user-token}]}
        headers_to_add: [{key: x-authz-origin, value: proxy}]
      authorization_response:
        allowed_upstream_headers: {patterns: [{exact: x-auth-user}]}
        allowed_upstream_headers_to_append: {patterns: [{exact: x-auth-group}]}
        allowed_client_headers: {patterns: [{exact: x-auth-reason}]}
        allowed_client_headers_on_success: {patterns: [{exact: x-auth-session}]}
""",
    clusters=static_cluster("authz", "{authz_port}"),
).replace("{authz}", AUTHZ)

REQUESTS = [
    build_request(
        "GET",
        "/allow/x?q=1",
        headers=[("x-user-token", "t"), ("x-not-sent", "n"), ("authorization", "Basic x")],
    ),
    build_request("POST", "/allow/post", headers=[("x-auth-group", "client")], body=b"hello"),
    build_request("GET", "/deny"),
    build_request("GET", "/error"),
    build_request("GET", "/public/page"),
]


def authz(req: RecordedRequest) -> Reply:
    if "/allow" in req.target:
        headers = (("x-auth-user", "alice"), ("x-auth-group", "admins"), ("x-auth-session", "s1"))
        return Reply(200, (*headers, ("x-other", "o")), b"ignored")
    if "/deny" in req.target:
        headers = (("x-auth-reason", "bad token"), ("www-authenticate", "Bearer"))
        return Reply(401, (*headers, ("x-other", "o")), b"denied by authz\n")
    return Reply(500, (), b"authz broke\n")


def _multiset(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    skip = {"date", "x-request-id", "x-envoy-upstream-service-time"}
    return sorted((k, "<v>" if k in skip else v) for k, v in headers)


async def observe(kind: str) -> dict[str, object]:
    backend = RecordingUpstream(script=(Reply(),))
    service = RecordingUpstream(script=authz)
    backend_listeners, service_listeners = await backend.listen(), await service.listen()
    config = CONFIG.replace("{authz_port}", str(service.port))
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve, backend_listeners)
        await nursery.start(service.serve, service_listeners)
        async with run_proxy(kind, config, backend.port) as proxy:
            responses = [await send_raw(proxy.listener_port, raw) for raw in REQUESTS]
            names = await get_stat_names(proxy.admin_port)
        nursery.cancel_scope.cancel()
    wanted = (
        "*.ext_authz.*",
        "cluster.authz.upstream_rq_[1-5]*",
        "cluster.authz.upstream_rq_total",
    )
    return {
        "responses": [(r.status, r.body, _multiset(r.headers)) for r in responses],
        "checks": [(q.method, q.target, _multiset(q.headers), q.body) for q in service.requests],
        "upstream": [(q.method, q.target, _multiset(q.headers)) for q in backend.requests],
        "stats": sorted(n for n in names if any(fnmatch.fnmatchcase(n, w) for w in wanted)),
    }


async def test_ext_authz_http_service_matches_envoy() -> None:
    envoy = await observe("envoy")
    assert [r[0] for r in envoy["responses"]] == [200, 200, 401, 403, 200]  # type: ignore[index]
    ours = await observe("trioproxy")
    for key in ("responses", "checks", "upstream", "stats"):
        assert ours[key] == envoy[key], key


GRPC_FILTER = """
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": {authz}.ExtAuthz
    transport_api_version: V3
    grpc_service:
      envoy_grpc: {cluster_name: authz}
      timeout: 2s
"""
H2 = """
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: {http2_protocol_options: {}}"""


def grpc_config() -> str:
    """The same routes, the gRPC service instead (over HTTP/2), context extensions on /public."""
    authz_cluster = static_cluster("authz", "{authz_port}").replace(
        "  connect_timeout: 1s\n", "  connect_timeout: 1s" + H2 + "\n"
    )
    return http_config(
        routes=ROUTES.replace(
            "{per_route}", "check_settings: {context_extensions: {tier: public}}"
        ),
        http_filters=GRPC_FILTER,
        clusters=authz_cluster,
    ).replace("{authz}", AUTHZ)


class GrpcAuthz:
    """An Authorization service on grpcio that decides by path and records what it was asked."""

    def __init__(self) -> None:
        from google.protobuf import json_format
        from trioproxy_plugins.ext_authz.check import _message

        self.asked: list[dict[str, object]] = []
        self._json = json_format
        self._request = _message("envoy.service.auth.v3.CheckRequest")
        self._response = _message("envoy.service.auth.v3.CheckResponse")

    def check(self, payload: bytes, context: object) -> bytes:
        request = self._request()
        request.ParseFromString(payload)
        http = request.attributes.request.http
        self.asked.append(
            {
                "method": http.method,
                "path": http.path,
                "host": http.host,
                "scheme": http.scheme,
                "protocol": http.protocol,
                "headers": sorted(
                    (k, v) for k, v in http.headers.items() if k not in ("x-request-id",)
                ),
                "has_id": bool(http.id),
                "extensions": dict(request.attributes.context_extensions),
                "source_ip": request.attributes.source.address.socket_address.address,
            }
        )
        if http.path.startswith(("/allow", "/public")):
            answer = {
                "status": {"code": 0},
                "ok_response": {
                    "headers": [{"header": {"key": "x-auth-user", "value": "bob"}}],
                    "headers_to_remove": ["x-user-token"],
                },
            }
        elif http.path.startswith("/deny"):
            answer = {
                "status": {"code": 7},
                "denied_response": {
                    "status": {"code": 401},
                    "headers": [{"header": {"key": "www-authenticate", "value": "Bearer"}}],
                    "body": "no entry\n",
                },
            }
        else:
            answer = {"status": {"code": 7}}
        message = self._json.ParseDict(answer, self._response())
        return bytes(message.SerializeToString())


async def observe_grpc(kind: str) -> dict[str, object]:
    from concurrent import futures

    import grpc

    service = GrpcAuthz()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization",
        {"Check": grpc.unary_unary_rpc_method_handler(service.check, None, None)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backend = RecordingUpstream(script=(Reply(),))
    listeners = await backend.listen()
    requests = [
        build_request("GET", "/allow/x?q=1", headers=[("x-user-token", "secret"), ("x-a", "1")]),
        build_request("GET", "/allow/y", headers=[("x-auth-user", "mallory")]),  # overwritten
        build_request("GET", "/deny"),
        build_request("GET", "/other"),
        build_request("GET", "/public/page"),
    ]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve, listeners)
            config = grpc_config().replace("{authz_port}", str(port))
            async with run_proxy(kind, config, backend.port) as proxy:
                responses = [await send_raw(proxy.listener_port, raw) for raw in requests]
                names = await get_stat_names(proxy.admin_port)
            nursery.cancel_scope.cancel()
    finally:
        server.stop(0)
    return {
        "responses": [(r.status, r.body, _multiset(r.headers)) for r in responses],
        "asked": service.asked,
        "upstream": [(q.method, q.target, _multiset(q.headers)) for q in backend.requests],
        "stats": sorted(n for n in names if fnmatch.fnmatchcase(n, "*.ext_authz.*")),
    }


async def test_ext_authz_grpc_service_matches_envoy() -> None:
    envoy = await observe_grpc("envoy")
    assert [r[0] for r in envoy["responses"]] == [200, 200, 401, 403, 200]  # type: ignore[index]
    second = envoy["upstream"][1]  # type: ignore[index]
    assert ("x-auth-user", "bob") in second[2] and ("x-auth-user", "mallory") not in second[2]
    ours = await observe_grpc("trioproxy")
    for key in ("responses", "asked", "upstream", "stats"):
        assert ours[key] == envoy[key], (key, ours[key], envoy[key])
