"""The compressor filter: gzip for responses the client accepts it for (Envoy's
``CompressorFilter``).

A response is *compressible* when compression is enabled, it has a body, its
``Content-Length`` (if any) is at least ``min_content_length`` (30), its type is in
``content_type`` (Envoy's text types by default; a response without one counts), it has no
``Content-Encoding``, no ``Cache-Control: no-transform``, no gzip/deflate
``Transfer-Encoding``, and no ``ETag`` when ``disable_on_etag_header``. A compressible response
gets ``Vary: Accept-Encoding`` whatever the client said; it is compressed when the request's
``Accept-Encoding`` picks gzip (by q-value, ``*`` included; ``identity`` or ``gzip;q=0`` do not):
then ``Content-Encoding: gzip``, no ``Content-Length`` (chunked, or HTTP/2 DATA frames), and a
strong ``ETag`` is dropped (weak ones stay). Stats: ``compressor.<library name>.gzip.*`` under
the connection manager's scope, with Envoy's names.
"""

from __future__ import annotations

from typing import Any

from trioproxy import runtime
from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.stats import Scope

from .config import CompressorConfig

_STATE = "envoy.filters.http.compressor"
_ACCEPT = "envoy.filters.http.compressor.accept"
_NO_BODY = frozenset({204, 304})
_CHOICE_STATS = {
    "missing": "no_accept_header",
    "identity": "header_identity",
    "wildcard": "header_wildcard",
    "none": "header_not_valid",
    "gzip": "header_compressor_used",
}


def choose(accept: str | None) -> str:
    """What an ``Accept-Encoding`` picks among gzip, ``*`` and identity: ``"gzip"``,
    ``"wildcard"``, ``"identity"``, ``"none"`` (nothing acceptable) or ``"missing"``."""
    if accept is None:
        return "missing"
    best, best_q = "none", 0.0
    for item in accept.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q <= 0:
            continue
        kind = {"gzip": "gzip", "*": "wildcard", "identity": "identity"}.get(coding)
        if kind is not None and q > best_q:
            best, best_q = kind, q
    return best


class CompressorFilter(HttpFilter):
    #: It removes Content-Length itself from the responses it compresses.
    keeps_response_length = True

    def __init__(self, config: CompressorConfig, scope: Scope) -> None:
        self.config = config
        self.scope = scope.scope(f"compressor.{config.library_name}.gzip.")
        s = self.scope
        self.compressed = s.counter("compressed")
        self.not_compressed = s.counter("not_compressed")
        self.too_small = s.counter("content_length_too_small")
        self.request_not_compressed = s.counter("request.not_compressed")
        self.uncompressed_bytes = s.counter("total_uncompressed_bytes")
        self.compressed_bytes = s.counter("total_compressed_bytes")
        for name in (  # the rest of Envoy's set, there from the start as in Envoy
            *_CHOICE_STATS.values(),
            "header_compressor_overshadowed",
            "not_compressed_etag",
            "request.compressed",
            "request.content_length_too_small",
            "request.total_uncompressed_bytes",
            "request.total_compressed_bytes",
        ):
            s.counter(name)

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        self.request_not_compressed.value += 1  # (request compression is not enabled)
        stream.filter_state[_ACCEPT] = headers.get("accept-encoding")
        if self.config.remove_accept_encoding:
            headers.remove("accept-encoding")
        return None

    def _enabled(self) -> bool:
        key = self.config.enabled_key
        value = runtime.current().get(key) if key else None
        if value is None:
            return self.config.enabled
        return value.lower() in ("true", "1")

    def _length_ok(self, headers: Headers) -> bool:
        length = headers.get("content-length")
        small = length is not None and length.isdecimal()
        if small and int(length or 0) < self.config.min_content_length:
            self.too_small.value += 1
            return False
        return True

    def _type_ok(self, headers: Headers) -> bool:
        ctype = headers.get("content-type")
        return ctype is None or ctype.split(";", 1)[0].strip().lower() in self.config.content_types

    def _etag_ok(self, headers: Headers) -> bool:
        if self.config.disable_on_etag and "etag" in headers:
            self.scope.counter("not_compressed_etag").value += 1
            return False
        return True

    async def on_response_headers(self, stream: HttpStream, headers: Headers) -> None:
        # Envoy's order, stat for stat: length, then (for a body) the Accept-Encoding with the
        # content type, then the rest; Vary goes on every compressible response
        status = int(headers.get(":status") or 0)
        end = status in _NO_BODY or status < 200 or stream.request_headers.get(":method") == "HEAD"
        length_ok = self._enabled() and self._length_ok(headers)
        type_ok = self._type_ok(headers)
        compressible = (
            length_ok
            and type_ok
            and "no-transform" not in (headers.get("cache-control") or "").lower()
            and self._etag_ok(headers)
            and "content-encoding" not in headers
        )
        if compressible:
            vary = headers.get("vary")
            if not vary:
                headers.set("vary", "Accept-Encoding")
            elif "accept-encoding" not in vary.lower():
                headers.set("vary", f"{vary}, Accept-Encoding")
        if not end and length_ok:
            choice = choose(stream.filter_state.get(_ACCEPT)) if type_ok else "none"
            self.scope.counter(_CHOICE_STATS[choice]).value += 1
            te = (headers.get("transfer-encoding") or "").lower()
            te_ok = "gzip" not in te and "deflate" not in te
            if choice in ("gzip", "wildcard") and compressible and te_ok:
                self.compressed.value += 1
                etag = headers.get("etag")
                if etag is not None and not etag.startswith("W/"):
                    headers.remove("etag")  # a strong validator no longer holds
                headers.remove("content-length")
                headers.set("content-encoding", "gzip")
                stream.filter_state[_STATE] = self.config.gzip.compressor()
                return
        self.not_compressed.value += 1

    async def on_response_data(self, stream: HttpStream, data: bytes, end_stream: bool) -> bytes:
        compressor: Any = stream.filter_state.get(_STATE)
        if compressor is None:
            return data
        self.uncompressed_bytes.value += len(data)
        out: bytes = compressor.compress(data) if data else b""
        if end_stream:
            out += compressor.flush()
            stream.filter_state[_STATE] = None
        elif data:
            out += compressor.flush(2)  # Z_SYNC_FLUSH: a streamed body keeps flowing
        self.compressed_bytes.value += len(out)
        return out
