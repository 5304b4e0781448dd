"""The control plane's ed25519 bundle-signing key and the sequence numbers of its bundles."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bundle_format import BundleError, key_id_of
from common.files import atomic_write, ensure_private_directory, fsync_directory

SIGNING_DIRECTORY = "bundle-signing"
PRIVATE_KEY_FILE = "private-key.pem"
PUBLIC_KEY_FILE = "public-key.pem"
SEQUENCE_FILE = "sequence"
LOCK_FILE = ".lock"


def signing_directory(data_dir: Path) -> Path:
    return data_dir / SIGNING_DIRECTORY


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create_exclusively(path: Path, data: bytes) -> bool:
    """Writes `path` (0600) unless it exists; False when another process created it first."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temp, path)  # unlike a rename, never replaces an existing key
        except FileExistsError:
            return False
    finally:
        Path(temp).unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise BundleError(f"{path} is not a PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an ed25519 private key")
    return key


class BundleSigner:
    """Signs bundle manifests with the key kept in `directory` (private key 0600, public beside).

    The key is made on first use. Sequence numbers rise monotonically across processes
    (a lock file serialises them) and restarts (kept in `directory/sequence`).
    """

    def __init__(self, directory: Path, key: Ed25519PrivateKey) -> None:
        self.directory = directory
        self._key = key
        self.public_key_pem: bytes = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id: str = key_id_of(key.public_key())

    @classmethod
    def load_or_create(cls, directory: Path) -> BundleSigner:
        ensure_private_directory(directory)
        private_path = directory / PRIVATE_KEY_FILE
        if not private_path.exists():
            _create_exclusively(private_path, _private_pem(Ed25519PrivateKey.generate()))
        signer = cls(directory, _load_private_key(private_path))
        public_path = directory / PUBLIC_KEY_FILE
        try:
            current = public_path.read_bytes()
        except FileNotFoundError:
            current = b""
        if current != signer.public_key_pem:  # the private key is the one that counts
            atomic_write(public_path, signer.public_key_pem, 0o644)
        return signer

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def last_sequence(self) -> int:
        path = self.directory / SEQUENCE_FILE
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as error:
            raise BundleError(f"cannot read {path}: {error}") from None
        if not text.isdigit():
            raise BundleError(f"{path} does not hold a sequence number: {text[:40]!r}")
        return int(text)

    def next_sequence(self) -> int:
        """max(previous + 1, now in milliseconds), recorded before it is returned."""
        with self._locked():
            sequence = max(self.last_sequence() + 1, time.time_ns() // 1_000_000)
            atomic_write(self.directory / SEQUENCE_FILE, f"{sequence}\n".encode(), 0o600)
        return sequence
