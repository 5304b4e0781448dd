"""The fleet CA: created once; issues the server certificate, signs and checks agent certs."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.certificates import (
    fingerprint_of,
    is_agent_id,
    is_ca_certificate,
    key_matches_certificate,
    private_key_pem,
)
from common.errors import InvalidArgument, OutpostError
from common.files import atomic_write, ensure_private_directory

CA_COMMON_NAME = "Outpost fleet CA"
CA_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=5)
MAX_CSR_BYTES = 64 * 1024
AGENT_URI_PREFIX = "urn:outpost:agent:"

__all__ = [
    "CertificateAuthority",
    "CertificateError",
    "CsrError",
    "IssuedCertificate",
    "PeerIdentity",
    "fingerprint_of",
]


class CsrError(InvalidArgument):
    """A certificate signing request the CA refuses to sign; the message says why."""


class CertificateError(OutpostError):
    """A certificate (or the CA's own files) that fails a check; the message says which."""


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str  # lowercase hex
    not_before: datetime  # UTC
    not_after: datetime
    pem: bytes


@dataclass(frozen=True)
class PeerIdentity:
    agent_id: str
    serial: str
    not_after: datetime


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _common_name(name: x509.Name) -> str | None:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attributes) != 1 or not isinstance(attributes[0].value, str):
        return None
    return attributes[0].value


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    """A KeyUsage with the named flags set and every other one cleared."""
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(enabled)
    return x509.KeyUsage(**flags)


def _serial_hex(serial: int) -> str:
    return format(serial, "x")


_CaKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateAuthority:
    """The fleet CA: its key stays in `directory/ca.key` (0600), its certificate in ca.pem."""

    def __init__(self, key: _CaKey, certificate: x509.Certificate) -> None:
        self._key = key
        self._certificate = certificate
        self._certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._fingerprint = fingerprint_of(self._certificate_pem)

    @classmethod
    def load_or_create(
        cls, directory: Path, *, now: datetime | None = None
    ) -> tuple[CertificateAuthority, bool]:
        """The CA in `directory`, created there first if it has neither file (then True)."""
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        have_key, have_cert = key_path.exists(), cert_path.exists()
        if have_key and have_cert:
            return cls._load(key_path, cert_path, _now(now)), False
        if have_key or have_cert:
            present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
            raise CertificateError(
                f"{present} exists but {missing} is missing; restore it or remove both files "
                "to create a new CA (every agent then has to enroll again)"
            )
        ensure_private_directory(directory)
        ca = cls._create(_now(now))
        atomic_write(key_path, private_key_pem(ca._key), 0o600)
        atomic_write(cert_path, ca.certificate_pem)
        return ca, True

    @classmethod
    def _create(cls, now: datetime) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def _load(cls, key_path: Path, cert_path: Path, now: datetime) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise CertificateError(f"{key_path} is not an unencrypted PEM private key") from error
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateError(f"{key_path} holds a key the CA cannot sign with (EC or RSA)")
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as error:
            raise CertificateError(f"{cert_path} is not a PEM certificate") from error
        if not key_matches_certificate(key, certificate):
            raise CertificateError(f"{key_path} is not the private key of {cert_path}")
        if not is_ca_certificate(certificate):
            raise CertificateError(f"{cert_path} is not a CA certificate")
        if certificate.not_valid_after_utc <= now:
            raise CertificateError(
                f"the CA certificate {cert_path} expired on {certificate.not_valid_after_utc}"
            )
        return cls(key, certificate)

    @property
    def certificate_pem(self) -> bytes:
        return self._certificate_pem

    @property
    def fingerprint(self) -> str:
        """sha256 of the CA certificate's DER encoding, lowercase hex: what agents pin."""
        return self._fingerprint

    @property
    def not_after(self) -> datetime:
        return self._certificate.not_valid_after_utc

    def _leaf_builder(
        self,
        subject: str,
        public_key: CertificatePublicKeyTypes,
        now: datetime,
        valid_for: timedelta,
    ) -> tuple[x509.CertificateBuilder, datetime, datetime]:
        if valid_for <= timedelta(0):
            raise ValueError("valid_for must be positive")
        if now >= self.not_after:
            raise CertificateError(f"the fleet CA expired on {self.not_after}")
        not_before = now - CLOCK_SKEW
        not_after = min(now + valid_for, self.not_after)
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        return builder, not_before, not_after

    def issue_server_certificate(
        self,
        hosts: Sequence[str],
        *,
        valid_for: timedelta = timedelta(days=365),
        now: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A fresh key and certificate for the gRPC servers: (key PEM, leaf PEM + CA PEM)."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        builder, _, _ = self._leaf_builder(hosts[0], key.public_key(), _now(now), valid_for)
        certificate = (
            builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        leaf_pem = certificate.public_bytes(serialization.Encoding.PEM)
        return private_key_pem(key), leaf_pem + self._certificate_pem

    def sign_agent_csr(
        self,
        csr_pem: bytes,
        *,
        expected_agent_id: str | None,
        valid_for: timedelta,
        now: datetime | None = None,
    ) -> tuple[str, IssuedCertificate]:
        """Checks an agent's CSR and signs a client certificate for it: (agent id, cert)."""
        if not isinstance(csr_pem, bytes) or len(csr_pem) > MAX_CSR_BYTES:
            raise CsrError(f"the CSR must be PEM bytes of at most {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as error:
            raise CsrError("the CSR is not a parsable PEM certificate signing request") from error
        try:
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as error:
            raise CsrError("the CSR's public key cannot be read") from error
        _check_agent_key(public_key)
        try:
            signature_valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as error:
            raise CsrError("the CSR's signature cannot be checked") from error
        if not signature_valid:
            raise CsrError("the CSR's signature does not match its public key")
        agent_id = _common_name(csr.subject)
        if agent_id is None:
            raise CsrError("the CSR's subject needs exactly one common name: the agent id")
        if not is_agent_id(agent_id):
            raise CsrError(f"the CSR's common name {agent_id!r} is not a lowercase UUID")
        if expected_agent_id is not None and agent_id != expected_agent_id:
            raise CsrError(
                f"CSR names agent {agent_id} but the caller is agent {expected_agent_id}"
            )
        builder, not_before, not_after = self._leaf_builder(
            agent_id, public_key, _now(now), valid_for
        )
        certificate = (
            builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return agent_id, IssuedCertificate(
            serial=_serial_hex(certificate.serial_number),
            not_before=not_before,
            not_after=not_after,
            pem=certificate.public_bytes(serialization.Encoding.PEM),
        )

    def verify_agent_certificate(
        self, cert_pem: bytes, *, now: datetime | None = None
    ) -> PeerIdentity:
        """The agent a client certificate names, once it passes every check of this CA."""
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as error:
            raise CertificateError("the client certificate is not a PEM certificate") from error
        try:
            certificate.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as error:
            raise CertificateError(
                "the client certificate was not issued by the fleet CA"
            ) from error
        moment = _now(now)
        if moment < certificate.not_valid_before_utc:
            raise CertificateError(
                f"the client certificate is not valid before {certificate.not_valid_before_utc}"
            )
        if moment > certificate.not_valid_after_utc:
            raise CertificateError(
                f"the client certificate expired on {certificate.not_valid_after_utc}"
            )
        try:
            usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            raise CertificateError("the certificate is not a client certificate (no clientAuth)")
        if is_ca_certificate(certificate):
            raise CertificateError("a CA certificate cannot identify an agent")
        agent_id = _common_name(certificate.subject)
        if agent_id is None or not is_agent_id(agent_id):
            raise CertificateError(
                f"the client certificate's common name {agent_id!r} is not an agent id"
            )
        return PeerIdentity(
            agent_id=agent_id,
            serial=_serial_hex(certificate.serial_number),
            not_after=certificate.not_valid_after_utc,
        )


def _check_agent_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CsrError(f"the CSR's EC key uses {public_key.curve.name}; use P-256 or P-384")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CsrError(f"the CSR's RSA key has {public_key.key_size} bits; at least 2048")
        return
    raise CsrError(
        f"the CSR's key type {type(public_key).__name__} is not accepted; "
        "use EC P-256/P-384 or RSA >= 2048"
    )
