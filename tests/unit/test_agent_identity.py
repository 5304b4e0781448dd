"""The agent's identity: key and CSR, the pinned CA fetched over TLS, and its files on disk."""

from __future__ import annotations

import json
import os
import queue
import socket
import ssl
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import agent.control.identity as identity_module
import controlplane.pki
from agent.control.identity import (
    CaPinError,
    IdentityError,
    IdentityStore,
    StoredIdentity,
    build_csr,
    certificate_expiry,
    fetch_pinned_ca,
    fingerprint_of,
    generate_key,
)
from common import certificates
from common.certificates import normalize_fingerprint
from common.files import atomic_write
from controlplane.pki import CertificateAuthority


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    authority, _ = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))
    return authority


def enrolled(ca: CertificateAuthority, agent_id: str | None = None) -> StoredIdentity:
    agent_id = agent_id or str(uuid.uuid4())
    key_pem = generate_key()
    _, issued = ca.sign_agent_csr(
        build_csr(key_pem, agent_id), expected_agent_id=agent_id, valid_for=timedelta(days=30)
    )
    return StoredIdentity(
        agent_id=agent_id,
        control_plane="cp.example.com:8701",
        mtls_port=8702,
        key_pem=key_pem,
        certificate_pem=issued.pem,
        ca_certificate_pem=ca.certificate_pem,
    )


# --- key, CSR, certificate facts ---------------------------------------------------------------


def test_generates_an_ec_p256_pkcs8_key() -> None:
    key_pem = generate_key()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert generate_key() != key_pem


def test_builds_a_csr_the_control_plane_signs(ca: CertificateAuthority) -> None:
    agent_id = str(uuid.uuid4())
    key_pem = generate_key()
    csr_pem = build_csr(key_pem, agent_id)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [agent_id]
    key = serialization.load_pem_private_key(key_pem, None)
    assert csr.public_key() == key.public_key()
    signed_id, issued = ca.sign_agent_csr(
        csr_pem, expected_agent_id=agent_id, valid_for=timedelta(days=1)
    )
    assert signed_id == agent_id
    assert ca.verify_agent_certificate(issued.pem).agent_id == agent_id


@pytest.mark.parametrize("agent_id", ["agent-1", "82E6C76B-6C58-4F0A-8B08-AB2E4AC7F2DF", ""])
def test_build_csr_refuses_a_malformed_agent_id(agent_id: str) -> None:
    with pytest.raises(ValueError, match="not a lowercase UUID"):
        build_csr(generate_key(), agent_id)


def test_certificate_expiry(ca: CertificateAuthority) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    _, issued = ca.sign_agent_csr(
        build_csr(generate_key(), str(uuid.uuid4())),
        expected_agent_id=None,
        valid_for=timedelta(days=30),
        now=now,
    )
    assert certificate_expiry(issued.pem) == (issued.not_before, issued.not_after)
    assert certificate_expiry(issued.pem)[1] == now + timedelta(days=30)


def test_one_fingerprint_implementation_for_agent_and_control_plane(
    ca: CertificateAuthority,
) -> None:
    assert fingerprint_of is certificates.fingerprint_of
    assert controlplane.pki.fingerprint_of is certificates.fingerprint_of
    assert fingerprint_of(ca.certificate_pem) == ca.fingerprint


@pytest.mark.parametrize(
    "transform",
    [
        lambda f: f,
        lambda f: f.upper(),
        lambda f: "sha256:" + f,
        lambda f: "SHA256:" + ":".join(f[i : i + 2] for i in range(0, 64, 2)).upper(),
        lambda f: f"  {f}\n",
    ],
)
def test_normalizes_fingerprint_spellings(transform: Any) -> None:
    fingerprint = "ab" * 32
    assert normalize_fingerprint(transform(fingerprint)) == fingerprint


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "ab" * 33, "md5:" + "ab" * 32])
def test_refuses_malformed_fingerprints(text: str) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        normalize_fingerprint(text)


# --- the pinned CA, fetched from a real TLS server ---------------------------------------------


@dataclass
class TlsServer:
    port: int
    leaf_pem: bytes
    ca_pem: bytes
    alpn: queue.Queue[str | None]  # the protocol each handshake agreed on


@pytest.fixture
def tls_server(tmp_path: Path, ca: CertificateAuthority) -> Iterator[TlsServer]:
    key_pem, chain_pem = ca.issue_server_certificate(["localhost", "127.0.0.1"])
    (tmp_path / "server.key").write_bytes(key_pem)
    (tmp_path / "chain.pem").write_bytes(chain_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "server.key")
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # lets the thread notice `stop`
    stop = threading.Event()
    alpn: queue.Queue[str | None] = queue.Queue()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(5)
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    alpn.put(tls.selected_alpn_protocol())
                    while tls.recv(1024):
                        pass
            except OSError:
                pass  # the client hangs up right after the handshake
            finally:
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    leaf_pem = chain_pem[: -len(ca.certificate_pem)]
    try:
        yield TlsServer(listener.getsockname()[1], leaf_pem, ca.certificate_pem, alpn)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_fetches_the_ca_with_the_pinned_fingerprint(
    tls_server: TlsServer, ca: CertificateAuthority
) -> None:
    pem = fetch_pinned_ca("127.0.0.1", tls_server.port, ca.fingerprint, timeout=5)
    assert pem == ca.certificate_pem
    assert tls_server.alpn.get(timeout=5) == "h2"


def test_accepts_the_pin_in_other_spellings(
    tls_server: TlsServer, ca: CertificateAuthority
) -> None:
    pairs = [ca.fingerprint[i : i + 2] for i in range(0, 64, 2)]
    spelled = "sha256:" + ":".join(pairs).upper()
    assert fetch_pinned_ca("127.0.0.1", tls_server.port, spelled, timeout=5) == ca.certificate_pem


def test_a_fingerprint_the_server_does_not_present_is_refused(tls_server: TlsServer) -> None:
    wrong = "0" * 64
    with pytest.raises(CaPinError, match=f"no certificate with fingerprint {wrong}") as caught:
        fetch_pinned_ca("127.0.0.1", tls_server.port, wrong, timeout=5)
    message = str(caught.value)
    assert fingerprint_of(tls_server.leaf_pem) in message
    assert fingerprint_of(tls_server.ca_pem) in message


def test_the_leaf_fingerprint_is_refused_because_it_is_not_a_ca(tls_server: TlsServer) -> None:
    leaf = fingerprint_of(tls_server.leaf_pem)
    with pytest.raises(CaPinError, match="not a CA certificate"):
        fetch_pinned_ca("127.0.0.1", tls_server.port, leaf, timeout=5)


def test_a_malformed_pin_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        fetch_pinned_ca("127.0.0.1", 1, "not-a-fingerprint", timeout=5)


def test_connection_errors_surface_as_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):  # an OSError: nothing listens there now
        fetch_pinned_ca("127.0.0.1", port, "0" * 64, timeout=5)


def test_reads_the_chain_the_python_313_way_too() -> None:
    class NewSocket:
        def get_unverified_chain(self) -> list[bytes]:
            return [b"leaf-der", b"ca-der"]

    class OldCertificate:
        def __init__(self, der: bytes) -> None:
            self.der = der

        def public_bytes(self, encoding: int) -> bytes:
            assert encoding == 2  # _ssl.ENCODING_DER
            return self.der

    class OldSocket:
        class _sslobj:
            @staticmethod
            def get_unverified_chain() -> list[OldCertificate]:
                return [OldCertificate(b"leaf-der")]

    presented = identity_module._presented_chain
    assert presented(NewSocket()) == [b"leaf-der", b"ca-der"]  # type: ignore[arg-type]
    assert presented(OldSocket()) == [b"leaf-der"]  # type: ignore[arg-type]


# --- the identity on disk ----------------------------------------------------------------------


def test_not_enrolled_when_the_state_dir_is_empty_or_missing(tmp_path: Path) -> None:
    assert IdentityStore(tmp_path / "missing").load() is None
    assert IdentityStore(tmp_path).load() is None


def test_saves_and_loads_an_identity(tmp_path: Path, ca: CertificateAuthority) -> None:
    state = tmp_path / "state"
    identity = enrolled(ca)
    IdentityStore(state).save(identity)
    assert IdentityStore(state).load() == identity
    assert json.loads((state / "identity.json").read_text()) == {
        "agent_id": identity.agent_id,
        "control_plane": "cp.example.com:8701",
        "mtls_port": 8702,
    }
    assert (state / "agent.key").read_bytes() == identity.key_pem
    assert (state / "agent.pem").read_bytes() == identity.certificate_pem
    assert (state / "ca.pem").read_bytes() == identity.ca_certificate_pem
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "agent.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == [
        "agent.key",
        "agent.pem",
        "ca.pem",
        "identity.json",
    ]


@pytest.mark.parametrize("missing", ["identity.json", "agent.key", "agent.pem", "ca.pem"])
def test_a_partial_identity_is_an_error_naming_the_file(
    tmp_path: Path, ca: CertificateAuthority, missing: str
) -> None:
    IdentityStore(tmp_path).save(enrolled(ca))
    (tmp_path / missing).unlink()
    with pytest.raises(IdentityError, match=f"incomplete: {missing} missing"):
        IdentityStore(tmp_path).load()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"agent_id": 5, "control_plane": "h:1", "mtls_port": 1}', "agent_id"),
        (b'{"agent_id": "AGENT", "control_plane": "h:1", "mtls_port": 1}', "agent_id"),
        (b'{"agent_id": "%s", "control_plane": 7, "mtls_port": 1}', "control_plane"),
        (b'{"agent_id": "%s", "control_plane": "", "mtls_port": 1}', "control_plane"),
        (b'{"agent_id": "%s", "control_plane": "h:1", "mtls_port": "8702"}', "mtls_port"),
        (b'{"agent_id": "%s", "control_plane": "h:1", "mtls_port": true}', "mtls_port"),
        (b'{"agent_id": "%s", "control_plane": "h:1", "mtls_port": 70000}', "mtls_port"),
        (b'{"agent_id": "%s", "control_plane": "h:1"}', "mtls_port"),
    ],
)
def test_a_damaged_identity_json_is_an_error_naming_it(
    tmp_path: Path, ca: CertificateAuthority, content: bytes, message: str
) -> None:
    identity = enrolled(ca)
    IdentityStore(tmp_path).save(identity)
    if b"%s" in content:
        content = content.replace(b"%s", identity.agent_id.encode())
    (tmp_path / "identity.json").write_bytes(content)
    with pytest.raises(IdentityError, match=rf"identity\.json.*{message}"):
        IdentityStore(tmp_path).load()


@pytest.mark.parametrize(
    ("damaged", "message"),
    [("agent.key", "not an unencrypted"), ("agent.pem", "not a PEM"), ("ca.pem", "not a PEM")],
)
def test_unreadable_pem_files_are_errors_naming_them(
    tmp_path: Path, ca: CertificateAuthority, damaged: str, message: str
) -> None:
    IdentityStore(tmp_path).save(enrolled(ca))
    (tmp_path / damaged).write_bytes(b"-----BEGIN GARBAGE-----\n")
    with pytest.raises(IdentityError, match=rf"{damaged} is {message}"):
        IdentityStore(tmp_path).load()


def test_a_certificate_of_another_key_is_an_error(tmp_path: Path, ca: CertificateAuthority) -> None:
    IdentityStore(tmp_path).save(enrolled(ca))
    (tmp_path / "agent.key").write_bytes(generate_key())
    with pytest.raises(IdentityError, match=r"agent\.pem is not the certificate of the key"):
        IdentityStore(tmp_path).load()


def test_a_certificate_of_another_agent_is_an_error(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    identity = enrolled(ca)
    other = enrolled(ca)
    IdentityStore(tmp_path).save(identity)
    (tmp_path / "agent.key").write_bytes(other.key_pem)
    (tmp_path / "agent.pem").write_bytes(other.certificate_pem)
    with pytest.raises(IdentityError, match=f"does not name agent {identity.agent_id}"):
        IdentityStore(tmp_path).load()


def test_a_certificate_from_another_ca_is_an_error(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    other_ca, _ = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    identity = enrolled(ca)
    with pytest.raises(IdentityError, match=r"not issued by the CA"):
        IdentityStore(tmp_path / "state").save(
            replace(identity, ca_certificate_pem=other_ca.certificate_pem)
        )
    assert IdentityStore(tmp_path / "state").load() is None  # nothing was written


def test_renews_the_key_and_certificate(tmp_path: Path, ca: CertificateAuthority) -> None:
    store = IdentityStore(tmp_path)
    identity = enrolled(ca)
    store.save(identity)
    renewed = enrolled(ca, identity.agent_id)
    store.replace_certificate(renewed.key_pem, renewed.certificate_pem)
    loaded = store.load()
    assert loaded == replace(
        identity, key_pem=renewed.key_pem, certificate_pem=renewed.certificate_pem
    )
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "agent.key",
        "agent.pem",
        "ca.pem",
        "identity.json",
    ]


def test_renewal_refuses_a_mismatched_pair_and_keeps_the_old_one(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    store = IdentityStore(tmp_path)
    identity = enrolled(ca)
    store.save(identity)
    renewed = enrolled(ca, identity.agent_id)
    with pytest.raises(IdentityError, match="not the certificate of the key"):
        store.replace_certificate(generate_key(), renewed.certificate_pem)
    other = enrolled(ca)
    with pytest.raises(IdentityError, match="does not name agent"):
        store.replace_certificate(other.key_pem, other.certificate_pem)
    assert store.load() == identity


def test_renewal_needs_an_identity(tmp_path: Path, ca: CertificateAuthority) -> None:
    renewed = enrolled(ca)
    with pytest.raises(IdentityError, match="no agent identity"):
        IdentityStore(tmp_path).replace_certificate(renewed.key_pem, renewed.certificate_pem)


@pytest.mark.parametrize("key_already_renamed", [False, True])
def test_an_interrupted_renewal_is_finished_on_load(
    tmp_path: Path, ca: CertificateAuthority, key_already_renamed: bool
) -> None:
    store = IdentityStore(tmp_path)
    identity = enrolled(ca)
    store.save(identity)
    renewed = enrolled(ca, identity.agent_id)
    # The state a crash leaves after both pending files were written (and maybe one rename).
    if key_already_renamed:
        atomic_write(tmp_path / "agent.key", renewed.key_pem, 0o600)
    else:
        atomic_write(tmp_path / "agent.key.new", renewed.key_pem, 0o600)
    atomic_write(tmp_path / "agent.pem.new", renewed.certificate_pem)
    loaded = store.load()
    assert loaded is not None
    assert loaded.key_pem == renewed.key_pem
    assert loaded.certificate_pem == renewed.certificate_pem
    assert not (tmp_path / "agent.key.new").exists()
    assert not (tmp_path / "agent.pem.new").exists()


def test_a_renewal_interrupted_before_the_certificate_is_dropped(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    store = IdentityStore(tmp_path)
    identity = enrolled(ca)
    store.save(identity)
    atomic_write(tmp_path / "agent.key.new", generate_key(), 0o600)
    assert store.load() == identity
    assert not (tmp_path / "agent.key.new").exists()


# --- atomic writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_atomic_write_sets_the_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    previous = os.umask(0o077)
    try:
        atomic_write(tmp_path / "file", b"data", mode)
    finally:
        os.umask(previous)
    assert (tmp_path / "file").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == mode


def test_atomic_write_keeps_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary file left behind
