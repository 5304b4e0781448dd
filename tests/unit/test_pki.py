"""The fleet CA: its files, the server certificate, and every CSR and client-cert rejection."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import InvalidArgument, OutpostError
from controlplane.pki import (
    CertificateAuthority,
    CertificateError,
    CsrError,
    IssuedCertificate,
    fingerprint_of,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
SAMPLE_ID = "0f0e0d0c-abcd-4ef0-8123-456789abcdef"

CsrKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
E = TypeVar("E", bound=x509.ExtensionType)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority, created = CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)
    assert created
    return authority


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: CsrKey, *names: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def ext(certificate: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return certificate.extensions.get_extension_for_class(kind)


def signed_agent(ca: CertificateAuthority, *, now: datetime = NOW) -> tuple[str, IssuedCertificate]:
    agent_id = str(uuid.uuid4())
    return ca.sign_agent_csr(
        csr_for(p256(), agent_id), expected_agent_id=None, valid_for=30 * DAY, now=now
    )


# --- the CA itself ---------------------------------------------------------------------------


def test_creates_a_private_self_signed_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    directory = tmp_path / "ca"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert (directory / "ca.pem").read_bytes() == ca.certificate_pem
    assert b"BEGIN PRIVATE KEY" in (directory / "ca.key").read_bytes()  # PKCS8
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"

    certificate = load(ca.certificate_pem)
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_name] == ["Outpost fleet CA"]
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    constraints = ext(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ext(certificate, x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    ski = ext(certificate, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3652)
    assert certificate.not_valid_before_utc <= NOW < certificate.not_valid_after_utc


def test_fingerprint_is_sha256_of_der_in_lowercase_hex(ca: CertificateAuthority) -> None:
    der = load(ca.certificate_pem).public_bytes(serialization.Encoding.DER)
    assert ca.fingerprint == hashlib.sha256(der).hexdigest()
    assert fingerprint_of(ca.certificate_pem) == ca.fingerprint
    assert len(ca.fingerprint) == 64
    assert ca.fingerprint == ca.fingerprint.lower()


def test_loads_the_existing_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    again, created = CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW + DAY)
    assert not created
    assert again.fingerprint == ca.fingerprint
    # The loaded key signs: a certificate it issues verifies against the original CA.
    _, issued = signed_agent(again, now=NOW + DAY)
    assert ca.verify_agent_certificate(issued.pem, now=NOW + DAY).serial == issued.serial


def test_refuses_a_key_that_does_not_match_the_certificate(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    other = p256().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ca" / "ca.key").write_bytes(other)
    with pytest.raises(CertificateError, match=r"ca\.key is not the private key of .*ca\.pem"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


@pytest.mark.parametrize(("damaged", "message"), [("ca.key", "private key"), ("ca.pem", "PEM")])
def test_refuses_unreadable_ca_files(
    tmp_path: Path, ca: CertificateAuthority, damaged: str, message: str
) -> None:
    (tmp_path / "ca" / damaged).write_bytes(b"not PEM at all")
    with pytest.raises(CertificateError, match=message):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


@pytest.mark.parametrize(("removed", "kept"), [("ca.pem", "ca.key"), ("ca.key", "ca.pem")])
def test_refuses_half_a_ca_rather_than_replacing_it(
    tmp_path: Path, ca: CertificateAuthority, removed: str, kept: str
) -> None:
    (tmp_path / "ca" / removed).unlink()
    with pytest.raises(CertificateError, match=rf"{kept} exists but .*{removed} is missing"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)
    assert not (tmp_path / "ca" / removed).exists()


def test_refuses_a_pair_that_is_not_a_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    key_pem, chain_pem = ca.issue_server_certificate(["localhost"])
    (tmp_path / "ca" / "ca.key").write_bytes(key_pem)
    (tmp_path / "ca" / "ca.pem").write_bytes(chain_pem)  # the leaf comes first
    with pytest.raises(CertificateError, match=r"ca\.pem is not a CA certificate"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


def test_refuses_an_expired_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="expired"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW + timedelta(days=4000))


def test_error_classes_map_to_the_common_errors() -> None:
    assert issubclass(CsrError, InvalidArgument)
    assert issubclass(CertificateError, OutpostError)


# --- the server certificate --------------------------------------------------------------------


def test_server_certificate_names_every_host_and_chains_to_the_ca(
    ca: CertificateAuthority,
) -> None:
    key_pem, chain_pem = ca.issue_server_certificate(
        ["cp.example.com", "127.0.0.1", "::1", "localhost"], valid_for=90 * DAY
    )
    chain = x509.load_pem_x509_certificates(chain_pem)
    assert len(chain) == 2
    leaf, presented_ca = chain
    assert presented_ca.public_bytes(serialization.Encoding.PEM) == ca.certificate_pem
    assert chain_pem.endswith(ca.certificate_pem)
    leaf.verify_directly_issued_by(load(ca.certificate_pem))

    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        "cp.example.com"
    ]
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not ext(leaf, x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=90) <= lifetime <= timedelta(days=90, minutes=6)

    key = serialization.load_pem_private_key(key_pem, None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)


def test_server_certificate_needs_a_host(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="at least one host"):
        ca.issue_server_certificate([])


# --- signing agent CSRs ------------------------------------------------------------------------


def test_signs_an_agent_client_certificate(ca: CertificateAuthority) -> None:
    agent_id = str(uuid.uuid4())
    returned_id, issued = ca.sign_agent_csr(
        csr_for(p256(), agent_id), expected_agent_id=agent_id, valid_for=30 * DAY, now=NOW
    )
    assert returned_id == agent_id
    certificate = load(issued.pem)
    certificate.verify_directly_issued_by(load(ca.certificate_pem))
    assert certificate.issuer == load(ca.certificate_pem).subject
    assert [a.value for a in certificate.subject] == [agent_id]
    san = ext(certificate, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:outpost:agent:{agent_id}"
    ]
    assert list(ext(certificate, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext(certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert issued.serial == format(certificate.serial_number, "x")
    assert issued.serial == issued.serial.lower()
    assert issued.not_before == NOW - timedelta(minutes=5) == certificate.not_valid_before_utc
    assert issued.not_after == NOW + 30 * DAY == certificate.not_valid_after_utc
    assert issued.not_before.tzinfo is not None


def test_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {signed_agent(ca)[1].serial for _ in range(5)}
    assert len(serials) == 5
    assert all(int(serial, 16) > 2**64 for serial in serials)


def test_agent_certificate_never_outlives_the_ca(ca: CertificateAuthority) -> None:
    agent_id = str(uuid.uuid4())
    _, issued = ca.sign_agent_csr(
        csr_for(p256(), agent_id), expected_agent_id=None, valid_for=20 * 365 * DAY, now=NOW
    )
    assert issued.not_after == ca.not_after
    assert load(issued.pem).not_valid_after_utc == load(ca.certificate_pem).not_valid_after_utc


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ec-p384", "rsa-2048"],
)
def test_accepts_the_other_allowed_key_types(
    ca: CertificateAuthority, make_key: Callable[[], CsrKey]
) -> None:
    agent_id = str(uuid.uuid4())
    returned, issued = ca.sign_agent_csr(
        csr_for(make_key(), agent_id), expected_agent_id=None, valid_for=DAY, now=NOW
    )
    assert returned == agent_id
    assert ca.verify_agent_certificate(issued.pem, now=NOW).agent_id == agent_id


def sign(ca: CertificateAuthority, csr_pem: bytes, expected: str | None = None) -> None:
    ca.sign_agent_csr(csr_pem, expected_agent_id=expected, valid_for=DAY, now=NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_rejects_garbage(ca: CertificateAuthority, garbage: bytes) -> None:
    with pytest.raises(CsrError, match="not a parsable PEM"):
        sign(ca, garbage)


def test_rejects_a_huge_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="at most"):
        sign(ca, csr_for(p256(), str(uuid.uuid4())) + b"\n" * 70_000)


def test_rejects_a_csr_signed_by_another_key_than_it_carries(ca: CertificateAuthority) -> None:
    agent_id = str(uuid.uuid4())
    signer, other = p256(), p256()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    der = x509.load_pem_x509_csr(csr_for(signer, agent_id)).public_bytes(serialization.Encoding.DER)
    signer_spki = signer.public_key().public_bytes(*spki)
    assert der.count(signer_spki) == 1
    swapped = der.replace(signer_spki, other.public_key().public_bytes(*spki))
    forged = x509.load_der_x509_csr(swapped)
    assert forged.public_key() == other.public_key()
    with pytest.raises(CsrError, match="signature does not match"):
        sign(ca, forged.public_bytes(serialization.Encoding.PEM))


def test_rejects_a_csr_with_a_corrupted_signature(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(csr_for(p256(), str(uuid.uuid4())))
    signature = csr.signature
    der = csr.public_bytes(serialization.Encoding.DER)
    # The signature's last byte (part of the ECDSA s integer) ends the DER encoding.
    assert der.endswith(signature)
    corrupted = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 0x01]))
    with pytest.raises(CsrError, match="signature does not match"):
        sign(ca, corrupted.public_bytes(serialization.Encoding.PEM))


def test_rejects_a_csr_for_another_agent(ca: CertificateAuthority) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(CsrError, match=f"CSR names agent {theirs} but the caller is agent {mine}"):
        sign(ca, csr_for(p256(), theirs), expected=mine)


@pytest.mark.parametrize(
    "common_name",
    [
        "agent-1",
        SAMPLE_ID.upper(),
        "{" + SAMPLE_ID + "}",
        SAMPLE_ID.replace("-", ""),
        "urn:uuid:" + SAMPLE_ID,
    ],
)
def test_rejects_a_common_name_that_is_not_a_canonical_uuid(
    ca: CertificateAuthority, common_name: str
) -> None:
    with pytest.raises(CsrError, match="is not a lowercase UUID"):
        sign(ca, csr_for(p256(), common_name))


@pytest.mark.parametrize("names", [(), (str(uuid.uuid4()), str(uuid.uuid4()))])
def test_rejects_a_csr_without_exactly_one_common_name(
    ca: CertificateAuthority, names: tuple[str, ...]
) -> None:
    with pytest.raises(CsrError, match="exactly one common name"):
        sign(ca, csr_for(p256(), *names))


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
    ],
    ids=["rsa-1024", "ec-p521", "ec-secp256k1", "ed25519"],
)
def test_rejects_weak_or_unsupported_keys(
    ca: CertificateAuthority, make_key: Callable[[], CsrKey], message: str
) -> None:
    with pytest.raises(CsrError, match=message):
        sign(ca, csr_for(make_key(), str(uuid.uuid4())))


# --- verifying client certificates -------------------------------------------------------------


def test_verifies_a_certificate_it_issued(ca: CertificateAuthority) -> None:
    agent_id, issued = signed_agent(ca)
    peer = ca.verify_agent_certificate(issued.pem, now=NOW + DAY)
    assert peer.agent_id == agent_id
    assert peer.serial == issued.serial
    assert peer.not_after == issued.not_after


def test_rejects_a_certificate_from_another_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    other, _ = CertificateAuthority.load_or_create(tmp_path / "other", now=NOW)
    # Same issuer name ("Outpost fleet CA"): only the signature tells them apart.
    assert load(other.certificate_pem).subject == load(ca.certificate_pem).subject
    _, issued = signed_agent(other)
    with pytest.raises(CertificateError, match="not issued by the fleet CA"):
        ca.verify_agent_certificate(issued.pem, now=NOW)


def test_rejects_an_expired_certificate(ca: CertificateAuthority) -> None:
    _, issued = signed_agent(ca)
    ca.verify_agent_certificate(issued.pem, now=issued.not_after)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify_agent_certificate(issued.pem, now=issued.not_after + timedelta(seconds=1))


def test_rejects_a_certificate_not_yet_valid(ca: CertificateAuthority) -> None:
    _, issued = signed_agent(ca)
    with pytest.raises(CertificateError, match="not valid before"):
        ca.verify_agent_certificate(issued.pem, now=issued.not_before - timedelta(seconds=1))


def test_rejects_a_server_certificate_presented_as_a_client(ca: CertificateAuthority) -> None:
    _, chain = ca.issue_server_certificate([str(uuid.uuid4())])  # even with a UUID for a name
    with pytest.raises(CertificateError, match="not a client certificate"):
        ca.verify_agent_certificate(chain)


def test_rejects_the_ca_certificate_itself(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="not a client certificate"):
        ca.verify_agent_certificate(ca.certificate_pem, now=NOW)


def test_rejects_garbage_instead_of_a_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ca.verify_agent_certificate(b"garbage")


def test_rejects_a_client_certificate_whose_name_is_not_an_agent_id(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    ca_key = serialization.load_pem_private_key((tmp_path / "ca" / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    subject = p256()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-an-agent")]))
        .issuer_name(load(ca.certificate_pem).subject)
        .public_key(subject.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateError, match="'not-an-agent' is not an agent id"):
        ca.verify_agent_certificate(pem, now=NOW)
