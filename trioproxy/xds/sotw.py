"""State-of-the-world bookkeeping for one resource type on one stream.

A pure state machine, no I/O: the transport feeds it responses and sends the requests it
returns. The rules (../shared/XDS.md):

- the first request on a stream carries ``node``; later ones may leave it out;
- an ACK echoes the accepted ``version_info`` and that response's nonce; a NACK sends the last
  *good* version, the rejected response's nonce and ``error_detail``;
- every request repeats the current ``resource_names`` and the latest nonce seen;
- ``version_info`` survives a reconnect, nonces do not;
- CDS and LDS are wildcard subscriptions (no names); EDS and RDS name their resources.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: google.rpc.Code INVALID_ARGUMENT, what Envoy puts in a NACK's error_detail.
INVALID_ARGUMENT = 3


@attrs.frozen
class Rejection:
    """The last NACKed update (``error_state`` in ``/config_dump``)."""

    version_info: str
    details: str
    at: float


@attrs.define
class TypeState:
    type_url: str
    wildcard: bool
    names: frozenset[str] = frozenset()
    version_info: str = ""  # last accepted
    nonce: str = ""  # latest response nonce on the current stream
    rejection: Rejection | None = None
    #: Whether anything was ever received (initial_fetch_timeout ends on the first response).
    received: bool = False

    def _request(self, nonce: str, error: str | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"type_url": self.type_url}
        if self.version_info:
            req["version_info"] = self.version_info
        if not self.wildcard:
            req["resource_names"] = sorted(self.names)
        if nonce:
            req["response_nonce"] = nonce
        if error is not None:
            req["error_detail"] = {"code": INVALID_ARGUMENT, "message": error}
        return req

    def on_connect(self) -> dict[str, Any]:
        """The subscription request on a new stream: last good version, no nonce."""
        self.nonce = ""
        return self._request("")

    def ack(self, version_info: str, nonce: str) -> dict[str, Any]:
        self.version_info = version_info
        self.nonce = nonce
        self.received = True
        self.rejection = None
        return self._request(nonce)

    def nack(self, version_info: str, nonce: str, error: str) -> dict[str, Any]:
        self.nonce = nonce
        self.received = True
        self.rejection = Rejection(version_info, error, time.time())
        return self._request(nonce, error)

    def set_names(self, names: Iterable[str]) -> dict[str, Any] | None:
        """A new interest set; the request to send, or ``None`` when nothing changed."""
        new = frozenset(names)
        if self.wildcard or new == self.names:
            return None
        self.names = new
        return self._request(self.nonce)


def with_node(request: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` carrying the node identity (the first request on a stream)."""
    return {**request, "node": dict(node)}
