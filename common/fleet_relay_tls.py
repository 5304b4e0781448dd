"""TLS contexts for the fleet relay, built from PEM bytes: mTLS listener and pinned client."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

__all__ = ["client_ssl_context", "server_ssl_context"]


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # load_cert_chain reads only files: a private directory (0700) that is gone right after.
    with tempfile.TemporaryDirectory(prefix="fleet-relay-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)


def server_ssl_context(*, cert_chain_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """TLS >= 1.2 for the listener; a client certificate issued by `ca_pem` is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    _load_chain(context, cert_chain_pem, key_pem)
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_ssl_context(*, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS >= 1.2 to the upstream: only `ca_pem` is trusted, host name checked, client cert sent."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, cert_pem, key_pem)
    return context
