"""Downstream TLS: ``DownstreamTlsContext`` → ``ssl.SSLContext``.

What is covered now: certificate chains and keys inline or from files, ALPN, minimum and maximum
protocol versions, cipher suites (TLS ≤ 1.2 names in OpenSSL form, as Envoy takes them).
Certificates may come by SDS (``tls_certificate_sds_secret_configs``: a static secret, a watched
file or ADS) and rotate without a restart. Client certificates (mTLS): a ``validation_context``
with ``trusted_ca`` verifies them when presented, ``require_client_certificate`` demands one,
``match_typed_subject_alt_names`` is checked after the handshake (``client_san_matcher``).
Session resumption, SPKI/hash pinning, CRLs and SDS validation contexts are refused with a
clear error rather than ignored.
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
    for key in ("validation_context_sds_secret_config", "combined_validation_context"):
        if common.get(key):
            raise ConfigError(f"{key} is not supported yet", path=f"common_tls_context.{key}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _client_validation(ctx, d, common.get("validation_context") or {}, base_dir)
    # (no renegotiation, as Envoy's BoringSSL servers: trioproxy.tls_stream relies on it)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
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


_VC_UNSUPPORTED = (
    "verify_certificate_spki",
    "verify_certificate_hash",
    "crl",
    "allow_expired_certificate",
    "custom_validator_config",
    "watched_directory",
    "match_subject_alt_names",
)


def _client_validation(
    ctx: ssl.SSLContext, d: Mapping[str, Any], vc: Mapping[str, Any], base_dir: str
) -> None:
    """mTLS: verify client certificates against ``trusted_ca``; require one if asked."""
    path = "common_tls_context.validation_context"
    for key in _VC_UNSUPPORTED:
        if vc.get(key):
            raise ConfigError(f"{key} is not supported yet", path=f"{path}.{key}")
    require = d.get("require_client_certificate", False)
    if isinstance(require, Mapping):
        require = require.get("value", False)
    try:
        ca = data_source(vc.get("trusted_ca"), base_dir) if vc.get("trusted_ca") else b""
    except ConfigError as exc:
        raise exc.at(f"{path}.trusted_ca") from None
    if not ca:
        if require:
            raise ConfigError(
                "require_client_certificate needs validation_context.trusted_ca (accepting any"
                " client certificate unverified is not supported)",
                path="require_client_certificate",
            )
        return
    try:
        ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
    except ssl.SSLError as exc:
        raise ConfigError(f"failed to load trusted_ca: {exc}", path=f"{path}.trusted_ca") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL


_SAN_KEYS = {"DNS": "DNS", "URI": "URI", "EMAIL": "email", "IP_ADDRESS": "IP Address"}


def client_san_matcher(d: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool] | None:
    """``validation_context.match_typed_subject_alt_names`` as a check of a verified peer
    certificate (``SSLSocket.getpeercert()``); ``None`` when there is nothing to check."""
    from trioproxy.http.matchers import string_matcher

    vc = (d.get("common_tls_context") or {}).get("validation_context") or {}
    rules = []
    for i, m in enumerate(vc.get("match_typed_subject_alt_names", ())):
        path = f"common_tls_context.validation_context.match_typed_subject_alt_names[{i}]"
        kind = _SAN_KEYS.get(str(m.get("san_type", "")))
        if kind is None:
            raise ConfigError("san_type must be DNS, URI, EMAIL or IP_ADDRESS", path=path)
        if m.get("oid"):
            raise ConfigError("OTHER_NAME SANs are not supported yet", path=f"{path}.oid")
        try:
            rules.append((kind, string_matcher(m.get("matcher") or {})))
        except ConfigError as exc:
            raise exc.at(f"{path}.matcher") from None
    if not rules:
        return None

    def check(cert: Mapping[str, Any]) -> bool:
        sans = cert.get("subjectAltName", ())
        return any(k == kind and test(str(v)) for kind, test in rules for k, v in sans)

    return check


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "streetAddress": "STREET",
    "userId": "UID",
}


def _rfc2253_escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;' else ch for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def rfc2253(name: Any) -> str:
    """``getpeercert()``'s subject as OpenSSL prints it with ``XN_FLAG_RFC2253`` (what Envoy
    puts in ``Subject=``): last RDN first, short attribute names, escaped values."""
    rdns = []
    for rdn in reversed(name or ()):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_rfc2253_escape(str(v))}" for k, v in rdn))
    return ",".join(rdns)


def peer_details(cert: Mapping[str, Any], der: bytes) -> dict[str, Any]:
    """What the connection manager needs of a verified client certificate (XFCC, RBAC)."""
    import hashlib
    from urllib.parse import quote

    sans = cert.get("subjectAltName", ())
    pem = ssl.DER_cert_to_PEM_cert(der)
    return {
        "subject": rfc2253(cert.get("subject")),
        "uri_sans": [str(v) for k, v in sans if k == "URI"],
        "dns_sans": [str(v) for k, v in sans if k == "DNS"],
        "hash": hashlib.sha256(der).hexdigest(),
        "pem_urlencoded": quote(pem, safe=""),
    }
