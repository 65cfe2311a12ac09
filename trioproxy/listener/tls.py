"""Downstream TLS: ``DownstreamTlsContext`` → ``ssl.SSLContext``.

What is covered now: certificate chains and keys inline or from files, ALPN, minimum and maximum
protocol versions, cipher suites (TLS ≤ 1.2 names in OpenSSL form, as Envoy takes them).
Certificates may come by SDS (``tls_certificate_sds_secret_configs``: a static secret, a watched
file or ADS) and rotate without a restart. Client-certificate validation (mTLS) and session
resumption are refused with a clear error rather than ignored.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from trioproxy.config.types import data_source
from trioproxy.errors import ConfigError

log = logging.getLogger(__name__)

_VERSIONS = {
    "TLS_AUTO": None,
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}

_UNSUPPORTED = (
    "require_client_certificate",
    "session_ticket_keys",
    "session_ticket_keys_sds_secret_config",
    "ocsp_staple_policy",
)


def _load_pair(ctx: ssl.SSLContext, chain: bytes, key: bytes, path: str) -> None:
    # The ssl module loads certificates from files only; write them to a private temp file.
    fd, name = tempfile.mkstemp(prefix="trioproxy-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(chain.rstrip(b"\n") + b"\n" + key)
        ctx.load_cert_chain(name)
    except ssl.SSLError as exc:
        raise ConfigError(f"failed to load certificate chain or key: {exc}", path=path) from exc
    finally:
        os.unlink(name)


class SecretSubscriber(Protocol):
    """Where SDS secrets come from (``trioproxy.xds.manager.XdsManager``)."""

    def subscribe_secret(
        self,
        name: str,
        sds_config: Mapping[str, Any],
        on_update: Callable[[Mapping[str, Any]], None],
    ) -> None:
        """Call ``on_update(secret)`` now if the secret is known (static secrets when
        ``sds_config`` is empty), and on every update; ``ConfigError`` rejects it."""
        ...


def load_tls_certificate(
    ctx: ssl.SSLContext, cert: Mapping[str, Any], base_dir: str, path: str
) -> None:
    """Load a ``TlsCertificate`` (chain and key) into ``ctx``."""
    try:
        chain = data_source(cert.get("certificate_chain"), base_dir)
        key = data_source(cert.get("private_key"), base_dir)
    except ConfigError as exc:
        raise exc.at(path) from None
    if not chain or not key:
        raise ConfigError("certificate_chain and private_key are both required", path=path)
    _load_pair(ctx, chain, key, path)


def server_context(
    d: Mapping[str, Any], base_dir: str, secrets: SecretSubscriber | None = None
) -> ssl.SSLContext:
    """Build the server-side context of a ``DownstreamTlsContext`` (canonical dict)."""
    for name in _UNSUPPORTED:
        if d.get(name):
            raise ConfigError(f"{name} is not supported yet", path=name)
    common = d.get("common_tls_context", {})
    if common.get("validation_context") or common.get("validation_context_sds_secret_config"):
        raise ConfigError(
            "client certificate validation is not supported yet",
            path="common_tls_context.validation_context",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION
    params = common.get("tls_params", {})
    # Envoy's server defaults: TLS 1.2 to 1.3.
    ctx.minimum_version = (
        _VERSIONS.get(params.get("tls_minimum_protocol_version", "TLS_AUTO"))
        or ssl.TLSVersion.TLSv1_2
    )
    ctx.maximum_version = (
        _VERSIONS.get(params.get("tls_maximum_protocol_version", "TLS_AUTO"))
        or ssl.TLSVersion.TLSv1_3
    )
    ciphers = params.get("cipher_suites")
    if ciphers:
        try:
            ctx.set_ciphers(":".join(c.strip("[]").replace("|", ":") for c in ciphers))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"invalid cipher suites: {exc}", path="common_tls_context.tls_params.cipher_suites"
            ) from exc
    certs = common.get("tls_certificates", [])
    sds = common.get("tls_certificate_sds_secret_configs", [])
    if not certs and not sds:
        raise ConfigError(
            "no certificate: a DownstreamTlsContext needs common_tls_context.tls_certificates"
            " or tls_certificate_sds_secret_configs",
            path="common_tls_context.tls_certificates",
        )
    for i, cert in enumerate(certs):
        load_tls_certificate(ctx, cert, base_dir, f"common_tls_context.tls_certificates[{i}]")
    if sds:
        path = "common_tls_context.tls_certificate_sds_secret_configs"
        if len(sds) > 1 or certs:
            raise ConfigError("one SDS certificate, and no inline one beside it", path=path)
        if secrets is None:
            raise ConfigError("SDS is not available here", path=path)

        def update(secret: Mapping[str, Any]) -> None:
            cert = secret.get("tls_certificate")
            if not cert:
                raise ConfigError(f"secret {secret.get('name')!r} has no tls_certificate")
            # Loading again replaces the certificate for new handshakes; connections already
            # established keep theirs. This is the rotation.
            load_tls_certificate(ctx, cert, base_dir, "tls_certificate")

        try:
            secrets.subscribe_secret(
                str(sds[0].get("name", "")), sds[0].get("sds_config") or {}, update
            )
        except ConfigError as exc:
            raise exc.at(f"{path}[0]") from None
    alpn = list(common.get("alpn_protocols", []))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
