"""The filter: one phase, on request headers.

A request without the key header gets 401, one with an unknown key 403, both answered by the
proxy (the upstream never sees them); a known key is replaced by the client's name in
``x-api-client``. Stats, in the connection manager's scope: ``api_key.allowed``,
``api_key.missing``, ``api_key.denied``.
"""

from __future__ import annotations

from trioproxy.http.filter import HttpFilter, HttpStream, LocalReply
from trioproxy.http.headers import Headers
from trioproxy.stats import Scope

from .config import ApiKeyConfig, fingerprint

NAME = "example.filters.http.api_key"


class ApiKeyFilter(HttpFilter):
    def __init__(self, config: ApiKeyConfig, stats: Scope) -> None:
        self.config = config
        scope = stats.scope("api_key.")
        self.allowed = scope.counter("allowed")
        self.missing = scope.counter("missing")
        self.denied = scope.counter("denied")

    async def on_request_headers(self, stream: HttpStream, headers: Headers) -> LocalReply | None:
        config = stream.per_filter_config(NAME) or self.config
        if config.disabled:
            return None
        key = headers.get(config.header)
        if key is None:
            self.missing.value += 1
            return LocalReply(
                401,
                b"an API key is required\n",
                headers=(("www-authenticate", f'ApiKey header="{config.header}"'),),
                details="api_key_missing",
            )
        client = config.clients.get(fingerprint(key))
        if client is None:
            self.denied.value += 1
            return LocalReply(403, b"unknown API key\n", details="api_key_unknown")
        self.allowed.value += 1
        headers.remove(config.header)
        headers.set(config.client_header, client)
        return None
