"""Route ``request_mirror_policies``: a copy of a request, sent to another cluster and
forgotten (Envoy's shadowing).

Per policy whose ``runtime_fraction`` (default 100%) draws the request, the router hands the
request's headers — as they go upstream — and its body to ``send_mirror`` in the cluster
manager's nursery: the host gets ``-shadow`` (before any port) unless
``disable_shadow_host_suffix_append``, ``x-envoy-internal: true`` and Envoy's async-client
``x-forwarded-for`` entry are added, and the answer is dropped. A body is mirrored once it
has been read whole (kept up to the route's buffer limit; a larger one is not mirrored).
The main request never waits for, or fails with, its mirror.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from trioproxy.config.types import fractional_percent
from trioproxy.errors import ConfigError, UpstreamError
from trioproxy.http.headers import Headers

log = logging.getLogger(__name__)

#: The downstream address Envoy's async client stands in for (TEST-NET-1): what it appends to
#: x-forwarded-for on a mirrored request. Sent the same, so that mirror targets see the same.
ASYNC_CLIENT_ADDRESS = "192.0.2.2"


@attrs.frozen
class MirrorPolicy:
    cluster: str = ""
    cluster_header: str = ""
    percent: float = 100.0
    suffix: bool = True

    def draws(self, rng: Callable[[], float] = random.random) -> bool:
        return self.percent >= 100.0 or rng() * 100.0 < self.percent

    def cluster_name(self, headers: Headers) -> str | None:
        return self.cluster or headers.get(self.cluster_header) or None

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> MirrorPolicy:
        fraction = d.get("runtime_fraction")
        percent = 100.0
        if fraction is not None:
            percent = fractional_percent(fraction.get("default_value"), 0.0)
        if not d.get("cluster") and not d.get("cluster_header"):
            raise ConfigError("cluster or cluster_header is required", path="cluster")
        return cls(
            cluster=str(d.get("cluster", "")),
            cluster_header=str(d.get("cluster_header", "")).lower(),
            percent=percent,
            suffix=not bool(d.get("disable_shadow_host_suffix_append", False)),
        )


def compile_mirrors(items: Any) -> tuple[MirrorPolicy, ...]:
    out = []
    for i, d in enumerate(items or ()):
        try:
            out.append(MirrorPolicy.from_proto(d))
        except ConfigError as exc:
            raise exc.at(f"request_mirror_policies[{i}]") from None
    return tuple(out)


def shadow_host(host: str) -> str:
    """``a.com`` → ``a.com-shadow``; ``a.com:8080`` → ``a.com-shadow:8080``."""
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1] + "-shadow" + host[end + 1 :]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return f"{name}-shadow:{port}"
    return host + "-shadow"


def mirror_headers(
    headers: Headers, policy: MirrorPolicy
) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, path, authority, headers) of the copy."""
    authority = headers.get(":authority") or ""
    if policy.suffix:
        authority = shadow_host(authority)
    out = [(k, v) for k, v in headers if k[0] != ":" and k != "host"]
    out = [(k, v) for k, v in out if k not in ("x-envoy-internal", "x-forwarded-for")]
    out.append(("x-envoy-internal", "true"))
    xff = headers.get("x-forwarded-for")
    entry = f"{xff},{ASYNC_CLIENT_ADDRESS}" if xff else ASYNC_CLIENT_ADDRESS  # (no space: Envoy)
    out.append(("x-forwarded-for", entry))
    return headers.get(":method") or "GET", headers.get(":path") or "/", authority, out


async def send_mirror(
    request: Callable[..., Awaitable[Any]],
    cluster: str,
    method: str,
    path: str,
    authority: str,
    headers: list[tuple[str, str]],
    body: Callable[[], Awaitable[bytes | None]] | None,
    deadline_s: float,
) -> None:
    """Send the copy and forget the answer; ``body`` waits for the whole request body
    (``None``: too large to mirror)."""
    data: bytes | None = None
    if body is not None:
        with trio.move_on_after(deadline_s):
            data = await body()
        if data is None:
            return  # too large, or never read whole
    try:
        await request(
            cluster,
            method,
            path,
            authority=authority,
            headers=headers,
            body=data,
            deadline_s=deadline_s,
        )
    except UpstreamError as exc:
        log.debug("mirror to %s failed: %s", cluster, exc)
