"""Upstream TLS: ``UpstreamTlsContext`` → a client ``ssl.SSLContext`` and the SNI to send.

Covered: ``sni``, ``common_tls_context.validation_context.trusted_ca`` (the chain is verified;
without it, as in Envoy, any certificate is accepted), client certificates
(``tls_certificates``), ``alpn_protocols``, ``tls_params`` minimum and maximum versions.
Refused with an error naming the field: SAN matching, SDS, CRLs, session resumption settings.
Used by the HTTP pools (ALPN ``http/1.1`` or ``h2`` by the cluster's protocol unless
``alpn_protocols`` says otherwise), tcp_proxy and the xDS gRPC client.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trioproxy.config.types import data_source
from trioproxy.errors import ConfigError
from trioproxy.listener.tls import _VERSIONS, _load_pair

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_VALIDATION_KNOWN = ("trusted_ca",)
_COMMON_KNOWN = ("validation_context", "tls_certificates", "alpn_protocols", "tls_params")


@attrs.frozen
class UpstreamTls:
    context: ssl.SSLContext = attrs.field(eq=False)
    sni: str
    canonical: Mapping[str, Any]


def client_context(
    d: Mapping[str, Any], base_dir: str = ".", default_alpn: Sequence[str] = ()
) -> UpstreamTls:
    """Build from the canonical ``UpstreamTlsContext`` dict (without ``@type``)."""
    for key in d:
        if key not in ("sni", "common_tls_context"):
            raise ConfigError(f"{key} is not supported yet", path=key)
    common = d.get("common_tls_context") or {}
    for key in common:
        if key not in _COMMON_KNOWN:
            raise ConfigError(f"{key} is not supported yet", path=f"common_tls_context.{key}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # Envoy checks names only with match_typed_subject_alt_names
    # (no renegotiation, as Envoy without allow_renegotiation: trioproxy.tls_stream relies on it)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    validation = common.get("validation_context") or {}
    for key in validation:
        if key not in _VALIDATION_KNOWN:
            raise ConfigError(
                f"{key} is not supported yet",
                path=f"common_tls_context.validation_context.{key}",
            )
    if "trusted_ca" in validation:
        try:
            ca = data_source(validation["trusted_ca"], base_dir)
            ctx.load_verify_locations(cadata=ca.decode("ascii"))
        except (ConfigError, ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"cannot load trusted_ca: {exc}",
                path="common_tls_context.validation_context.trusted_ca",
            ) from None
    else:
        ctx.verify_mode = ssl.CERT_NONE
    certs = common.get("tls_certificates") or []
    if len(certs) > 1:
        raise ConfigError(
            "one client certificate at most", path="common_tls_context.tls_certificates"
        )
    if certs:
        path = "common_tls_context.tls_certificates[0]"
        chain = data_source(certs[0].get("certificate_chain"), base_dir)
        key_pem = data_source(certs[0].get("private_key"), base_dir)
        if not chain or not key_pem:
            raise ConfigError("certificate_chain and private_key are both required", path=path)
        _load_pair(ctx, chain, key_pem, path)
    params = common.get("tls_params") or {}
    for field, attr in (
        ("tls_minimum_protocol_version", "minimum_version"),
        ("tls_maximum_protocol_version", "maximum_version"),
    ):
        version = _VERSIONS.get(params.get(field, "TLS_AUTO"))
        if version is not None:
            setattr(ctx, attr, version)
    alpn = list(common.get("alpn_protocols") or default_alpn)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return UpstreamTls(ctx, str(d.get("sni", "")), d)


def cluster_tls(
    transport_socket: Mapping[str, Any] | None,
    base_dir: str = ".",
    default_alpn: Sequence[str] = ("h2",),
) -> UpstreamTls | None:
    """The TLS settings of a cluster's ``transport_socket`` (``None`` for plaintext)."""
    if not transport_socket:
        return None
    typed = transport_socket.get("typed_config") or {}
    url = typed.get("@type", "")
    if url != UPSTREAM_TLS:
        raise ConfigError(
            f"transport socket {transport_socket.get('name')!r} is not supported",
            path="transport_socket",
        )
    body = {k: v for k, v in typed.items() if k != "@type"}
    try:
        return client_context(body, base_dir, default_alpn=default_alpn)
    except ConfigError as exc:
        raise exc.at("transport_socket.typed_config") from None
