"""Downstream TLS: ``DownstreamTlsContext`` → ``ssl.SSLContext``.

What is covered now: certificate chains and keys inline or from files, ALPN, minimum and maximum
protocol versions, cipher suites (TLS ≤ 1.2 names in OpenSSL form, as Envoy takes them).
Client-certificate validation (mTLS), SDS and session resumption come with the TLS issue; their
fields are refused with a clear error rather than ignored.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

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


def server_context(d: Mapping[str, Any], base_dir: str) -> ssl.SSLContext:
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
    if common.get("tls_certificate_sds_secret_configs"):
        raise ConfigError(
            "SDS certificates are not supported yet",
            path="common_tls_context.tls_certificate_sds_secret_configs",
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
    if not certs:
        raise ConfigError(
            "no certificate: a DownstreamTlsContext needs common_tls_context.tls_certificates",
            path="common_tls_context.tls_certificates",
        )
    for i, cert in enumerate(certs):
        path = f"common_tls_context.tls_certificates[{i}]"
        try:
            chain = data_source(cert.get("certificate_chain"), base_dir)
            key = data_source(cert.get("private_key"), base_dir)
        except ConfigError as exc:
            raise exc.at(path) from None
        if not chain or not key:
            raise ConfigError("certificate_chain and private_key are both required", path=path)
        _load_pair(ctx, chain, key, path)
    alpn = list(common.get("alpn_protocols", []))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
