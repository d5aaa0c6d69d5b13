"""The DICOM TLS server context (PS3.15 Annex B.9/B.10 secure transport), from settings."""

from __future__ import annotations

import ssl

from node.core.errors import ConfigError
from node.core.settings import ClientTls, TlsSettings


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


def client_context(tls: ClientTls, where: str) -> ssl.SSLContext | None:
    """A client context for an outgoing connection (DICOM or MLLP); None when TLS is off.

    The peer is verified against ``ca_certificates`` only when given (else the system's trust
    store) and its host name is checked; a client certificate is presented when configured.
    """
    if not tls.enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_certificates or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.certificate:
            ctx.load_cert_chain(tls.certificate, tls.private_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"{where}.tls: cannot load certificates or key ({exc.__class__.__name__}: {exc})"]
        ) from None
    return ctx
