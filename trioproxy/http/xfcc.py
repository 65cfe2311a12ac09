"""``x-forwarded-client-cert``: what the connection manager does with it, per
``forward_client_cert_details``, as Envoy does.

- ``SANITIZE`` (the default): removed.
- ``ALWAYS_FORWARD_ONLY``: forwarded untouched.
- The others, on a connection without a client certificate: removed.
- ``FORWARD_ONLY``: forwarded untouched.
- ``APPEND_FORWARD``: this hop's element appended; ``SANITIZE_SET``: replaced by it.

This hop's element is ``Hash=<SHA-256 of the client certificate>`` followed by what
``set_current_client_cert_details`` asks for, in Envoy's order: ``Cert="<URL-encoded PEM>"``,
``Chain`` (the client's chain is not available here: the leaf is given), ``Subject="…"``,
``URI=…`` (one per URI SAN, or empty), ``DNS=…`` (one per DNS SAN). ``By=`` (the proxy's own
URI SANs) is not written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers

MODES = (
    "SANITIZE",
    "FORWARD_ONLY",
    "APPEND_FORWARD",
    "SANITIZE_SET",
    "ALWAYS_FORWARD_ONLY",
)
_DETAILS = ("cert", "chain", "subject", "uri", "dns")
HEADER = "x-forwarded-client-cert"


def parse_details(d: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for key in _DETAILS:
        value = d.get(key, False)
        if isinstance(value, Mapping):
            value = value.get("value", False)
        if value:
            out.append(key)
    return tuple(out)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"invalid value {mode!r}", path="forward_client_cert_details")
    return mode


def element(peer: Mapping[str, Any], details: tuple[str, ...]) -> str:
    parts = [f"Hash={peer['hash']}"]
    for key in details:
        if key in ("cert", "chain"):
            name = "Cert" if key == "cert" else "Chain"
            parts.append(f'{name}="{peer["pem_urlencoded"]}"')
        elif key == "subject":
            parts.append(f'Subject="{peer["subject"]}"')
        elif key == "uri":
            parts.extend(f"URI={u}" for u in peer["uri_sans"] or [""])
        else:
            parts.extend(f"DNS={d}" for d in peer["dns_sans"])
    return ";".join(parts)


def apply(
    headers: Headers, mode: str, details: tuple[str, ...], peer: Mapping[str, Any] | None
) -> None:
    if mode == "ALWAYS_FORWARD_ONLY":
        return
    if mode == "SANITIZE" or peer is None:
        if HEADER in headers:
            headers.remove(HEADER)
        return
    if mode == "FORWARD_ONLY":
        return
    mine = element(peer, details)
    current = headers.get(HEADER)
    if mode == "APPEND_FORWARD" and current:
        headers.set(HEADER, f"{current},{mine}")
    else:
        headers.set(HEADER, mine)
