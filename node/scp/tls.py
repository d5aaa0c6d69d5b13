"""The DICOM TLS server context (PS3.15 Annex B.9/B.10 secure transport), from settings."""

from __future__ import annotations

import ssl

from node.config import TlsSettings
from node.errors import ConfigError


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=tls.certificate, keyfile=tls.private_key)
        if tls.ca_certificates:
            ctx.load_verify_locations(cafile=tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"scp.tls: cannot load certificate or key ({exc.__class__.__name__}: {exc})"]
        ) from None
    if tls.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
