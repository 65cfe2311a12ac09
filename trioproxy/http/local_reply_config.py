"""The connection manager's ``local_reply_config``: Envoy's mappers over local replies.

Every response the proxy makes itself (no route, no healthy upstream, a timeout, a direct
response or redirect, a request that does not parse, a filter's ``LocalReply``) goes through
it before it is sent, as through Envoy's ``LocalReply::rewrite``: the first mapper whose
``filter`` (an access log filter) matches may replace the status, the body and add headers;
then the mapper's ``body_format_override``, or else the config's ``body_format``, formats the
body (``%LOCAL_REPLY_BODY%`` is the body so far) and names its content type. Responses from
upstream are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.accesslog.format import Formatter, JsonFormatter, formatter_from_proto
from trioproxy.accesslog.loggers import Predicate, build_filter
from trioproxy.config.types import data_source
from trioproxy.errors import ConfigError
from trioproxy.http.filter import LocalReply
from trioproxy.http.headers import Headers
from trioproxy.http.route_table import HeaderMutations
from trioproxy.http.stream_info import StreamInfo


@attrs.frozen
class BodyFormat:
    formatter: Formatter
    content_type: str

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> BodyFormat:
        formatter = formatter_from_proto(d)
        default = "application/json" if isinstance(formatter, JsonFormatter) else "text/plain"
        return cls(formatter, str(d.get("content_type") or default))


@attrs.frozen
class Mapper:
    matches: Predicate
    status: int | None
    body: bytes | None
    headers: HeaderMutations
    body_format: BodyFormat | None

    @classmethod
    def from_proto(cls, d: Mapping[str, Any], base_dir: str) -> Mapper:
        try:
            matches = build_filter(d.get("filter", {}))
        except ConfigError as exc:
            raise exc.at("filter") from None
        status = d.get("status_code")
        try:
            body = data_source(d["body"], base_dir) if "body" in d else None
        except ConfigError as exc:
            raise exc.at("body") from None
        fmt = None
        if "body_format_override" in d:
            try:
                fmt = BodyFormat.from_proto(d["body_format_override"])
            except ConfigError as exc:
                raise exc.at("body_format_override") from None
        headers = HeaderMutations.from_proto(d.get("headers_to_add", ()), (), "headers_to_add")
        return cls(matches, int(status) if status is not None else None, body, headers, fmt)


@attrs.frozen
class LocalReplyConfig:
    mappers: tuple[Mapper, ...]
    body_format: BodyFormat | None

    @classmethod
    def from_proto(cls, d: Mapping[str, Any], base_dir: str = ".") -> LocalReplyConfig:
        mappers = []
        for i, m in enumerate(d.get("mappers", ())):
            try:
                mappers.append(Mapper.from_proto(m, base_dir))
            except ConfigError as exc:
                raise exc.at(f"mappers[{i}]") from None
        fmt = None
        if "body_format" in d:
            try:
                fmt = BodyFormat.from_proto(d["body_format"])
            except ConfigError as exc:
                raise exc.at("body_format") from None
        return cls(tuple(mappers), fmt)

    def rewrite(self, reply: LocalReply, info: StreamInfo) -> LocalReply:
        """``reply`` as the mappers and body format make it. The filters see the reply's
        status as the response code, as Envoy's do."""
        status = reply.status
        body = reply.body
        headers = Headers([(":status", str(status)), *reply.headers])
        info.response_code = status
        info.response_headers = headers
        fmt = self.body_format
        for mapper in self.mappers:
            if not mapper.matches(info):
                continue
            if mapper.body is not None:
                body = mapper.body
            mapper.headers.apply(headers, info)
            if mapper.status is not None and mapper.status != status:
                status = mapper.status
                headers.set(":status", str(status))
                info.response_code = status
            if mapper.body_format is not None:
                fmt = mapper.body_format
            break
        content_type = "text/plain"
        if fmt is not None:
            info.local_reply_body = body.decode("utf-8", "replace")
            body = fmt.formatter.format(info).encode()
            info.local_reply_body = ""  # (the access log's %LOCAL_REPLY_BODY% is empty)
            content_type = fmt.content_type
        if not body:
            headers.remove("content-type")
        elif "content-type" not in headers:
            headers.add("content-type", content_type)
        out = tuple((k, v) for k, v in headers.items() if k != ":status")
        return LocalReply(
            status, body, out, details=reply.details, flag=reply.flag, grpc_status=reply.grpc_status
        )
