"""Certificate helpers the agent and the control plane share: fingerprints, ids, key checks."""

from __future__ import annotations

import hashlib
import re
import uuid

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

_HEX_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def fingerprint_of_der(cert_der: bytes) -> str:
    """The sha256 of a DER-encoded certificate: lowercase hex, no colons."""
    return hashlib.sha256(cert_der).hexdigest()


def fingerprint_of(cert_pem: bytes) -> str:
    """The sha256 of the certificate's DER encoding (the first one in `cert_pem`).

    Raises ValueError when `cert_pem` holds no parsable PEM certificate.
    """
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return fingerprint_of_der(certificate.public_bytes(Encoding.DER))


def normalize_fingerprint(value: str) -> str:
    """`value` as `fingerprint_of` writes it; accepts "sha256:", colons and upper case.

    Raises ValueError when what is left is not 64 hex digits.
    """
    text = value.strip().lower()
    text = text.removeprefix("sha256:").replace(":", "")
    if not _HEX_FINGERPRINT.fullmatch(text):
        raise ValueError(f"not a sha256 certificate fingerprint (64 hex digits): {value!r}")
    return text


def is_agent_id(value: str) -> bool:
    """True when `value` is a UUID in canonical form (lowercase, hyphenated): an agent id."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def is_ca_certificate(certificate: x509.Certificate) -> bool:
    """True when the certificate's BasicConstraints say it is a CA."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def key_matches_certificate(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """True when `certificate` carries the public half of `key`."""
    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(*spki)


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """`key` as unencrypted PKCS8 PEM."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
