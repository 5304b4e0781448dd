"""The agent's identity: its key and CSR, the pinned fleet CA, and their files in the state dir."""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from common.certificates import (
    fingerprint_of,
    fingerprint_of_der,
    is_agent_id,
    is_ca_certificate,
    key_matches_certificate,
    normalize_fingerprint,
    private_key_pem,
)
from common.files import atomic_write, ensure_private_directory, fsync_directory

__all__ = [
    "CaPinError",
    "IdentityError",
    "IdentityStore",
    "StoredIdentity",
    "build_csr",
    "certificate_expiry",
    "fetch_pinned_ca",
    "fingerprint_of",
    "generate_key",
]

_ENCODING_DER = 2  # _ssl.ENCODING_DER: the format argument of _ssl.Certificate.public_bytes


class CaPinError(Exception):
    """The server did not present a CA certificate with the pinned fingerprint."""


class IdentityError(Exception):
    """The identity in the state directory is damaged or incomplete; the message names the file."""


def generate_key() -> bytes:
    """A new EC P-256 private key, PKCS8 PEM without encryption."""
    return private_key_pem(ec.generate_private_key(ec.SECP256R1()))


def _private_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}; use EC or RSA")
    return key


def build_csr(key_pem: bytes, agent_id: str) -> bytes:
    """A PEM CSR signed by `key_pem` whose common name is `agent_id` (a lowercase UUID)."""
    if not is_agent_id(agent_id):
        raise ValueError(f"agent id {agent_id!r} is not a lowercase UUID")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .sign(_private_key(key_pem), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def certificate_expiry(cert_pem: bytes) -> tuple[datetime, datetime]:
    """(not_before, not_after) of the first certificate in `cert_pem`, both UTC-aware."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return certificate.not_valid_before_utc, certificate.not_valid_after_utc


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The DER certificates the server sent, unverified, leaf first."""
    getter = getattr(tls, "get_unverified_chain", None)  # Python 3.13+: DER bytes
    if getter is None:  # Python 3.11/3.12: _ssl.Certificate objects on the private object
        getter = getattr(tls, "_sslobj").get_unverified_chain  # noqa: B009
    chain: list[Any] | None = getter()
    return [
        item if isinstance(item, bytes) else item.public_bytes(_ENCODING_DER)
        for item in chain or []
    ]


def fetch_pinned_ca(host: str, port: int, fingerprint: str, *, timeout: float = 10.0) -> bytes:
    """The PEM of the CA certificate with `fingerprint` from the chain `host:port` presents.

    The handshake is deliberately unverified: the fingerprint is the trust anchor. Raises
    CaPinError when no presented certificate matches or the match is not a CA, ValueError for
    a malformed fingerprint, and OSError (ssl.SSLError included) when the connection fails.
    """
    wanted = normalize_fingerprint(fingerprint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        chain = _presented_chain(tls)
    seen = [fingerprint_of_der(der) for der in chain]
    for der, candidate in zip(chain, seen, strict=True):
        if candidate != wanted:
            continue
        certificate = x509.load_der_x509_certificate(der)
        if not is_ca_certificate(certificate):
            raise CaPinError(
                f"{host}:{port} presented a certificate with fingerprint {wanted}, "
                "but it is not a CA certificate; pin the fleet CA's fingerprint"
            )
        return certificate.public_bytes(serialization.Encoding.PEM)
    raise CaPinError(
        f"{host}:{port} presented no certificate with fingerprint {wanted}; "
        f"it presented: {', '.join(seen) or 'none'}"
    )


@dataclass(frozen=True)
class StoredIdentity:
    agent_id: str
    control_plane: str  # "host:port" of the public (enrollment) port
    mtls_port: int
    key_pem: bytes
    certificate_pem: bytes
    ca_certificate_pem: bytes


IDENTITY_FILE = "identity.json"
KEY_FILE = "agent.key"
CERTIFICATE_FILE = "agent.pem"
CA_FILE = "ca.pem"
PENDING_SUFFIX = ".new"  # a renewal writes agent.key.new and agent.pem.new, then renames


class IdentityStore:
    """The agent's enrolled identity in `state_dir` (0700): identity.json, agent.key (0600),
    agent.pem and ca.pem. Every file is replaced atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _path(self, name: str) -> Path:
        return self.state_dir / name

    def load(self) -> StoredIdentity | None:
        """The stored identity; None when not enrolled; IdentityError when damaged or partial.

        Finishes (or discards) a certificate renewal that was interrupted.
        """
        self._recover_renewal()
        names = (IDENTITY_FILE, KEY_FILE, CERTIFICATE_FILE, CA_FILE)
        missing = [name for name in names if not self._path(name).is_file()]
        if len(missing) == len(names):
            return None
        if missing:
            raise IdentityError(
                f"the agent identity in {self.state_dir} is incomplete: {', '.join(missing)} "
                "missing; restore the files or empty the directory and enroll again"
            )
        metadata = self._read_metadata()
        identity = StoredIdentity(
            agent_id=metadata["agent_id"],
            control_plane=metadata["control_plane"],
            mtls_port=metadata["mtls_port"],
            key_pem=self._path(KEY_FILE).read_bytes(),
            certificate_pem=self._path(CERTIFICATE_FILE).read_bytes(),
            ca_certificate_pem=self._path(CA_FILE).read_bytes(),
        )
        self._check(identity)
        return identity

    def _read_metadata(self) -> dict[str, Any]:
        path = self._path(IDENTITY_FILE)
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as error:
            raise IdentityError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise IdentityError(f"{path} must hold a JSON object")
        agent_id, address, port = (
            data.get("agent_id"),
            data.get("control_plane"),
            data.get("mtls_port"),
        )
        if not isinstance(agent_id, str) or not is_agent_id(agent_id):
            raise IdentityError(f"{path}: agent_id must be a lowercase UUID, not {agent_id!r}")
        if not isinstance(address, str) or not address:
            raise IdentityError(f"{path}: control_plane must be a non-empty 'host:port' string")
        if type(port) is not int or not 1 <= port <= 65535:
            raise IdentityError(f"{path}: mtls_port must be a port number, not {port!r}")
        return {"agent_id": agent_id, "control_plane": address, "mtls_port": port}

    def _check(self, identity: StoredIdentity) -> None:
        """Raises IdentityError naming the file whose content does not fit the others."""
        key_path, cert_path, ca_path = (
            self._path(n) for n in (KEY_FILE, CERTIFICATE_FILE, CA_FILE)
        )
        try:
            key = _private_key(identity.key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise IdentityError(f"{key_path} is not an unencrypted EC or RSA PEM key") from error
        try:
            certificate = x509.load_pem_x509_certificate(identity.certificate_pem)
        except ValueError as error:
            raise IdentityError(f"{cert_path} is not a PEM certificate") from error
        try:
            ca = x509.load_pem_x509_certificate(identity.ca_certificate_pem)
        except ValueError as error:
            raise IdentityError(f"{ca_path} is not a PEM certificate") from error
        if not key_matches_certificate(key, certificate):
            raise IdentityError(f"{cert_path} is not the certificate of the key in {key_path}")
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [attribute.value for attribute in names] != [identity.agent_id]:
            raise IdentityError(f"{cert_path} does not name agent {identity.agent_id}")
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as error:
            raise IdentityError(f"{cert_path} was not issued by the CA in {ca_path}") from error

    def save(self, identity: StoredIdentity) -> None:
        """Writes the whole identity; identity.json goes last and marks it complete."""
        if not is_agent_id(identity.agent_id):
            raise IdentityError(f"agent id {identity.agent_id!r} is not a lowercase UUID")
        if not 1 <= identity.mtls_port <= 65535 or not identity.control_plane:
            raise IdentityError("an identity needs the control plane address and the mTLS port")
        self._check(identity)
        ensure_private_directory(self.state_dir)
        for name in (KEY_FILE, CERTIFICATE_FILE):
            self._path(name + PENDING_SUFFIX).unlink(missing_ok=True)
        atomic_write(self._path(KEY_FILE), identity.key_pem, 0o600)
        atomic_write(self._path(CERTIFICATE_FILE), identity.certificate_pem)
        atomic_write(self._path(CA_FILE), identity.ca_certificate_pem)
        metadata = {
            "agent_id": identity.agent_id,
            "control_plane": identity.control_plane,
            "mtls_port": identity.mtls_port,
        }
        atomic_write(self._path(IDENTITY_FILE), json.dumps(metadata, indent=2).encode() + b"\n")

    def replace_certificate(self, key_pem: bytes, certificate_pem: bytes) -> None:
        """Swaps in a renewed key and certificate as one step (a crash leaves old or new)."""
        current = self.load()
        if current is None:
            raise IdentityError(f"no agent identity in {self.state_dir} to renew")
        renewed = StoredIdentity(
            agent_id=current.agent_id,
            control_plane=current.control_plane,
            mtls_port=current.mtls_port,
            key_pem=key_pem,
            certificate_pem=certificate_pem,
            ca_certificate_pem=current.ca_certificate_pem,
        )
        self._check(renewed)
        pending_key = self._path(KEY_FILE + PENDING_SUFFIX)
        pending_cert = self._path(CERTIFICATE_FILE + PENDING_SUFFIX)
        atomic_write(pending_key, key_pem, 0o600)
        atomic_write(pending_cert, certificate_pem)  # from here on, load() rolls forward
        os.replace(pending_key, self._path(KEY_FILE))
        os.replace(pending_cert, self._path(CERTIFICATE_FILE))
        fsync_directory(self.state_dir)

    def _recover_renewal(self) -> None:
        pending_key = self._path(KEY_FILE + PENDING_SUFFIX)
        pending_cert = self._path(CERTIFICATE_FILE + PENDING_SUFFIX)
        if pending_cert.exists():  # both pending files were complete: finish the renewal
            if pending_key.exists():
                os.replace(pending_key, self._path(KEY_FILE))
            os.replace(pending_cert, self._path(CERTIFICATE_FILE))
            fsync_directory(self.state_dir)
        elif pending_key.exists():  # interrupted before the certificate was written
            pending_key.unlink()
