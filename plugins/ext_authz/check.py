"""Asking the authorization service: over HTTP (``http_service``) or gRPC
(``envoy.service.auth.v3.Authorization/Check``), with the answer as a ``Decision``.

HTTP (as Envoy sends it, checked side by side): the request's method, ``path_prefix`` + its
path, its ``Host``; ``Authorization`` and the headers ``allowed_headers`` match; the
configured ``headers_to_add``; ``x-envoy-internal: true`` and the timeout in
``x-envoy-expected-rq-timeout-ms``; no body. ``200`` allows (``allowed_upstream_headers`` of
the answer go upstream, ``allowed_client_headers_on_success`` back to the client), a ``5xx``
or no answer is an error, anything else denies with that status, body and the
``allowed_client_headers`` (all but ``Host`` when unset; ``WWW-Authenticate`` and
``Location`` always).

gRPC: a ``CheckRequest`` with the source and destination addresses, the request's method,
headers, path, host, scheme, protocol and id, and the route's ``context_extensions``; an OK
``CheckResponse`` allows with its ``ok_response`` header mutations, another status denies with
its ``denied_response`` (status 403 unless it says otherwise), and a transport or gRPC error
is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from google.protobuf import json_format, message_factory

from trioproxy.config.descriptors import pool
from trioproxy.errors import UpstreamError
from trioproxy.http.filter import HttpStream
from trioproxy.http.headers import Headers
from trioproxy.upstream import client
from trioproxy.upstream.cluster_manager import ClusterManager

from .config import ExtAuthzConfig

_ALWAYS_TO_CLIENT = frozenset({"www-authenticate", "location"})
_NEVER_TO_CLIENT = frozenset({"host", ":authority", "content-length", "transfer-encoding"})


@attrs.define
class Decision:
    verdict: str  # "ok", "denied" or "error"
    status: int = 0
    body: bytes = b""
    client_headers: list[tuple[str, str]] = attrs.field(factory=list)
    upstream_set: list[tuple[str, str]] = attrs.field(factory=list)
    upstream_append: list[tuple[str, str]] = attrs.field(factory=list)
    upstream_remove: list[str] = attrs.field(factory=list)
    success_headers: list[tuple[str, str]] = attrs.field(factory=list)


def _matching(headers: Headers, matchers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k[0] != ":" and any(m(k) for m in matchers)]


async def check_http(
    c: ExtAuthzConfig, cm: ClusterManager, stream: HttpStream, headers: Headers
) -> Decision:
    out = [
        (k, v)
        for k, v in headers
        if k[0] != ":" and (k == "authorization" or any(m(k) for m in c.request_headers))
    ]
    out += c.headers_to_add
    out.append(("x-envoy-internal", "true"))
    out.append(("x-envoy-expected-rq-timeout-ms", str(int(c.timeout * 1000))))
    try:
        resp = await client.request(
            cm,
            c.cluster,
            headers.get(":method") or "GET",
            c.path_prefix + (headers.get(":path") or "/"),
            authority=headers.get(":authority") or "",
            headers=out,
            deadline_s=c.timeout,
        )
    except UpstreamError:
        return Decision("error")
    if resp.status == 200:
        return Decision(
            "ok",
            upstream_set=_matching(resp.headers, c.upstream_headers),
            upstream_append=_matching(resp.headers, c.upstream_headers_to_append),
            success_headers=_matching(resp.headers, c.client_headers_on_success),
        )
    if resp.status >= 500:
        return Decision("error")
    if c.client_headers is None:
        to_client = [(k, v) for k, v in resp.headers if k not in _NEVER_TO_CLIENT]
    else:
        to_client = [
            (k, v)
            for k, v in resp.headers
            if k not in _NEVER_TO_CLIENT
            and (k in _ALWAYS_TO_CLIENT or any(m(k) for m in c.client_headers))
        ]
    return Decision("denied", resp.status, resp.body, to_client)


# -- gRPC ------------------------------------------------------------------------------------

_classes: dict[str, Any] = {}


def _message(name: str) -> Any:
    cls = _classes.get(name)
    if cls is None:
        cls = _classes[name] = message_factory.GetMessageClass(pool().FindMessageTypeByName(name))
    return cls


def _address(address: tuple[str, int]) -> dict[str, Any]:
    return {"socket_address": {"address": address[0], "port_value": address[1]}}


def check_request(stream: HttpStream, headers: Headers, extensions: Mapping[str, str]) -> bytes:
    """The ``CheckRequest`` for this request, serialized."""
    conn = stream.connection
    http: dict[str, Any] = {
        "method": headers.get(":method") or "",
        "headers": {k: v for k, v in headers},
        "path": headers.get(":path") or "",
        "host": headers.get(":authority") or "",
        "scheme": headers.get(":scheme") or ("https" if conn.tls else "http"),
        "protocol": stream.info.protocol,
        "size": "-1",
    }
    rid = headers.get("x-request-id")
    if rid:
        http["id"] = rid
    attributes: dict[str, Any] = {
        "source": {"address": _address(conn.remote_address)},
        "destination": {"address": _address(conn.local_address)},
        "request": {"http": http},
    }
    if extensions:
        attributes["context_extensions"] = dict(extensions)
    message = json_format.ParseDict(
        {"attributes": attributes}, _message("envoy.service.auth.v3.CheckRequest")()
    )
    return bytes(message.SerializeToString())


def _header_options(items: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``HeaderValueOption`` list → (to set, to append). In a ``CheckResponse`` an unset
    ``append`` means overwrite (its documented default there); ``append: true`` appends;
    an explicit ``append_action`` other than the default overwrites."""
    set_, append = [], []
    for opt in items:
        pair = (opt.header.key.lower(), opt.header.value)
        if opt.append_action == 0 and opt.HasField("append") and opt.append.value:
            append.append(pair)
        else:
            set_.append(pair)
    return set_, append


async def check_grpc(
    c: ExtAuthzConfig,
    cm: ClusterManager,
    stream: HttpStream,
    headers: Headers,
    extensions: Mapping[str, str],
) -> Decision:
    payload = check_request(stream, headers, extensions)
    try:
        resp = await client.request(
            cm,
            c.cluster,
            "POST",
            "/envoy.service.auth.v3.Authorization/Check",
            authority=c.authority,
            headers=[
                (":scheme", "http"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", f"{max(1, int(c.timeout * 1000))}m"),
            ],
            body=b"\x00" + len(payload).to_bytes(4, "big") + payload,
            deadline_s=c.timeout,
        )
    except UpstreamError:
        return Decision("error")
    status = (resp.trailers or resp.headers).get("grpc-status")
    if resp.status != 200 or status != "0" or len(resp.body) < 5:
        return Decision("error")
    answer = _message("envoy.service.auth.v3.CheckResponse")()
    try:
        answer.ParseFromString(resp.body[5 : 5 + int.from_bytes(resp.body[1:5], "big")])
    except Exception:
        return Decision("error")
    if answer.status.code == 0:
        ok = answer.ok_response
        set_, append = _header_options(ok.headers)
        success, _ = _header_options(ok.response_headers_to_add)
        return Decision(
            "ok",
            upstream_set=set_,
            upstream_append=append,
            upstream_remove=[h.lower() for h in ok.headers_to_remove],
            success_headers=success,
        )
    denied = answer.denied_response
    code = denied.status.code if denied.HasField("status") and denied.status.code else 403
    set_, append = _header_options(denied.headers)
    return Decision("denied", int(code), denied.body.encode(), set_ + append)
