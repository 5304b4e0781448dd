"""Opens a signed offline bundle: verifies its manifest first, then every member as it streams."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.artifacts import MESSAGE_BYTES
from common.bundle_format import (
    COMPRESSED_MAGIC,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    POLICY_MEMBER,
    SIGNATURE_BYTES,
    SIGNATURE_MEMBER,
    BundleError,
    BundleManifest,
    BundleMember,
    check_manifest,
    key_id_of,
    load_public_key,
    model_member,
)

HEADER_READ_BUDGET = 64 * 1024  # bytes tarfile may read for one member's headers (pax, longname)


@dataclass(frozen=True)
class VerifiedBundle:
    """Members extracted into `directory` (under their member paths), each one verified."""

    manifest: BundleManifest
    directory: Path

    def file(self, member_path: str) -> Path:
        return self.directory / member_path

    def model_file(self, sha256: str) -> Path:
        return self.file(model_member(sha256))

    @property
    def policy_file(self) -> Path | None:
        return self.file(POLICY_MEMBER) if self.manifest.policy else None

    @property
    def wheel_files(self) -> list[Path]:
        return [self.file(path) for path in self.manifest.wheels]


class _OverBudget(BundleError):
    pass


class _BudgetedFile:
    """The bundle file as tarfile reads it: no single stretch of reads may exceed `budget`, so
    a hostile pax header, long name or sparse map cannot make tarfile read gigabytes into memory."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.budget = HEADER_READ_BUDGET

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.budget:
            raise _OverBudget("the bundle has a tar header larger than allowed")
        data = self._handle.read(size)
        self.budget -= len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _kind(member: tarfile.TarInfo) -> str | None:
    """What a member is when it is not a plain regular file; None when it is one."""
    if member.issym():
        return f"a symbolic link (to {member.linkname!r:.80})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r:.80})"
    if member.isdir():
        return "a directory"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        return "not a regular file"
    return None


def _check_safe_path(name: str) -> None:
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise BundleError(f"member {name!r:.120} has an unsafe path (absolute, backslash or NUL)")
    if ".." in name.split("/"):
        raise BundleError(f"member {name!r:.120} has an unsafe path (it climbs out with '..')")


def _verify_manifest(raw: bytes, signature: bytes, key: Ed25519PublicKey) -> BundleManifest:
    pinned = key_id_of(key)
    try:
        key.verify(signature, raw)
    except InvalidSignature:
        claimed = None
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError, AttributeError):
            claimed = json.loads(raw).get("key_id")
        if isinstance(claimed, str) and claimed != pinned:
            raise BundleError(
                f"the bundle is signed by another key (key id {claimed:.64}), "
                f"not by the pinned key {pinned}"
            ) from None
        raise BundleError(
            "the bundle's signature does not verify with the pinned key: manifest.json was "
            "changed after it was signed, or another key signed it"
        ) from None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"invalid bundle manifest: not valid JSON ({error})") from None
    manifest = check_manifest(document)
    if manifest.key_id != pinned:
        raise BundleError(f"the manifest names key {manifest.key_id}, not the pinned key {pinned}")
    return manifest


class BundleReader:
    """An open bundle whose signed manifest has been verified against the pinned public key.

    `extract_to` then streams every member into a directory, checking each against the
    manifest as it goes; on any error it removes what it wrote.
    """

    def __init__(self, path: Path, public_key_pem: bytes) -> None:
        key = load_public_key(public_key_pem)
        self.path = path
        try:
            self._handle: BinaryIO = path.open("rb")
        except OSError as error:
            raise BundleError(f"cannot open the bundle {path}: {error.strerror}") from None
        try:
            magic = self._handle.read(8)
            for prefix, kind in COMPRESSED_MAGIC.items():
                if magic.startswith(prefix):
                    raise BundleError(
                        f"{path} is {kind}-compressed; a bundle is a plain, uncompressed tar file"
                    )
            self._handle.seek(0)
            self._file = _BudgetedFile(self._handle)
            with self._tar_errors():
                # TarFile itself reads plain tar only: no compression is detected or undone
                self._tar = tarfile.TarFile(fileobj=cast(BinaryIO, self._file), mode="r")
            raw = self._read_first(MANIFEST_MEMBER, "the bundle must start with manifest.json")
            signature = self._read_first(SIGNATURE_MEMBER, "the bundle is not signed")
            self.manifest = _verify_manifest(raw, signature, key)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @contextlib.contextmanager
    def _tar_errors(self, member: str = "") -> Iterator[None]:
        try:
            yield
        except (tarfile.TarError, EOFError, UnicodeError, ValueError) as error:
            where = f" (in member {member})" if member else ""
            raise BundleError(
                f"{self.path} is not a readable bundle (a plain tar): {error}{where}"
            ) from None

    def _next(self) -> tarfile.TarInfo | None:
        self._file.budget = HEADER_READ_BUDGET
        with self._tar_errors():
            return self._tar.next()

    def _read_first(self, name: str, complaint: str) -> bytes:
        member = self._next()
        if member is None or member.name != name:
            found = "nothing" if member is None else repr(member.name[:120])
            raise BundleError(f"{complaint}: expected {name} next, found {found}")
        if (kind := _kind(member)) is not None:
            raise BundleError(f"member {name} is {kind}, not a regular file")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_MEMBER else SIGNATURE_BYTES
        if member.size > limit or (name == SIGNATURE_MEMBER and member.size != limit):
            raise BundleError(
                f"member {name} has {member.size} bytes; it must have at most {limit}"
                if name == MANIFEST_MEMBER
                else f"member {name} must hold a {limit}-byte ed25519 signature"
            )
        self._file.budget = member.size + 1
        with self._tar_errors():
            stream = self._tar.extractfile(member)
            assert stream is not None  # a regular file
            data: bytes = stream.read(member.size)
        return data

    def extract_to(self, directory: Path) -> VerifiedBundle:
        """Writes every member under `directory` (existing), each verified against the manifest."""
        expected = {member.path: member for member in self.manifest.members}
        written: list[Path] = []
        try:
            while (member := self._next()) is not None:
                name = member.name
                _check_safe_path(name)
                if (kind := _kind(member)) is not None:
                    raise BundleError(f"member {name!r:.120} is {kind}, not a regular file")
                declared = expected.get(name)
                if declared is None:
                    raise BundleError(f"member {name!r:.120} is not in the manifest")
                target = directory / name
                if target in written:
                    raise BundleError(f"member {name} appears twice in the bundle")
                if member.size != declared.size_bytes:
                    size = "larger" if member.size > declared.size_bytes else "smaller"
                    raise BundleError(
                        f"member {name} is {size} than declared: {member.size} bytes, "
                        f"the manifest says {declared.size_bytes}"
                    )
                target.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                written.append(target)
                with os.fdopen(fd, "wb") as out:
                    self._copy(member, declared, out)
            if missing := sorted(set(expected) - {str(p.relative_to(directory)) for p in written}):
                raise BundleError(
                    f"member {missing[0]} is missing from the bundle "
                    f"({len(missing)} missing in all; is the file truncated?)"
                )
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return VerifiedBundle(self.manifest, directory)

    def _copy(self, member: tarfile.TarInfo, declared: BundleMember, out: BinaryIO) -> None:
        """Streams one member into `out`, reading at most one byte more than declared."""
        digest, total = hashlib.sha256(), 0
        self._file.budget = declared.size_bytes + 1
        with self._tar_errors(declared.path):
            stream = self._tar.extractfile(member)
            assert stream is not None
            while block := stream.read(min(MESSAGE_BYTES, declared.size_bytes + 1 - total)):
                total += len(block)
                if total > declared.size_bytes:
                    raise BundleError(f"member {declared.path} is larger than declared")
                digest.update(block)
                out.write(block)
        if total != declared.size_bytes:
            raise BundleError(f"member {declared.path} ends early ({total} bytes)")
        if digest.hexdigest() != declared.sha256:
            raise BundleError(
                f"member {declared.path} does not match its sha256: it hashes to "
                f"{digest.hexdigest()}, the manifest says {declared.sha256}"
            )
        out.flush()
        os.fsync(out.fileno())


def open_bundle(path: Path, public_key_pem: bytes) -> BundleReader:
    """The bundle at `path`, its manifest verified; use as a context manager, then `extract_to`."""
    return BundleReader(path, public_key_pem)


def verify_bundle(path: Path, public_key_pem: bytes, directory: Path) -> VerifiedBundle:
    """Verifies the whole bundle, extracting its members into `directory`."""
    with open_bundle(path, public_key_pem) as reader:
        return reader.extract_to(directory)
