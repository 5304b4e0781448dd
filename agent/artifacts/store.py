"""Verified blobs named by sha256, plus the bookkeeping of partial (resumable) downloads."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from common.artifacts import ArtifactManifest
from common.errors import InvalidArgument
from common.files import atomic_write, ensure_private_directory, fsync_directory

BLOB_SUFFIX = ".gguf"
PARTIAL_DATA_SUFFIX = ".part"
PARTIAL_STATE_SUFFIX = ".json"
MAX_PARTIAL_STATE_BYTES = 16 * 1024 * 1024  # a manifest of MAX_CHUNKS digests is ~4.5 MB
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(Exception):
    """An artifact cannot be fetched or installed; message says why."""


def _checked(sha256: str) -> str:
    """`sha256` when it is 64 lowercase hex digits (so it is safe in a file name)."""
    if not isinstance(sha256, str) or _HEX64.fullmatch(sha256) is None:
        raise ArtifactError(f"not a sha256 (64 lowercase hex digits): {sha256!r:.80}")
    return sha256


@dataclass(frozen=True)
class PartialState:
    """What a partial download was verified against, and how far it got."""

    manifest: ArtifactManifest
    verified_bytes: int


class PartialFile:
    """The data file of one partial download: read back at resume, appended chunk by chunk.

    Each `append` is durable (written and fsynced) when it returns. A subclass set as
    `ArtifactStore.partial_file_type` can inject write failures in tests.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._handle = os.fdopen(fd, "r+b", buffering=0)
        self.path = path

    def size(self) -> int:
        return os.fstat(self._handle.fileno()).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._handle.fileno(), length, offset)

    def truncate(self, size: int) -> None:
        self._handle.truncate(size)
        os.fsync(self._handle.fileno())

    def append(self, data: bytes) -> None:
        self._handle.seek(0, os.SEEK_END)
        view = memoryview(data)
        while view:
            written = self._handle.write(view)
            if not written:
                raise OSError("short write")
            view = view[written:]
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


class ArtifactStore:
    """Complete, verified blobs under root/blobs; partial downloads under root/partial.

    A blob only ever appears in blobs/ by an atomic rename of a file that was verified against
    its sha256, so a file there is complete. Blobs are read-only (0444).
    """

    partial_file_type: type[PartialFile] = PartialFile  # tests swap in one that fails writing

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        self._staging = root / "staging"

    # --- complete blobs ---------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / f"{_checked(sha256)}{BLOB_SUFFIX}"

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def blobs(self) -> list[str]:
        if not self._blobs.is_dir():
            return []
        names = (
            path.name.removesuffix(BLOB_SUFFIX) for path in self._blobs.glob(f"*{BLOB_SUFFIX}")
        )
        return sorted(name for name in names if _HEX64.fullmatch(name))

    def staging_dir(self) -> Path:
        ensure_private_directory(self._staging)
        return self._staging

    def adopt(self, sha256: str, verified_file: Path) -> Path:
        """Moves a file the caller already verified to be `sha256` into blobs/ (atomically)."""
        target = self.blob_path(sha256)
        ensure_private_directory(self._blobs)
        if target.is_file():
            verified_file.unlink(missing_ok=True)
            return target
        try:
            os.chmod(verified_file, 0o444)
            fd = os.open(verified_file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(verified_file, target)
        except OSError as exc:
            raise ArtifactError(f"cannot install {sha256} into {self._blobs}: {exc}") from exc
        fsync_directory(self._blobs)
        return target

    def retain(self, keep: Collection[str]) -> list[str]:
        """Deletes blobs and partial downloads not in `keep`; returns the deleted sha256s."""
        kept = set(keep)
        deleted: set[str] = set()
        for sha256 in self.blobs():
            if sha256 not in kept:
                self.blob_path(sha256).unlink(missing_ok=True)
                deleted.add(sha256)
        for sha256 in self.partials():
            if sha256 not in kept:
                self.discard_partial(sha256)
                deleted.add(sha256)
        for directory in (self._blobs, self._partial):
            if directory.is_dir():
                fsync_directory(directory)
        return sorted(deleted)

    def free_bytes(self) -> int:
        """Free space (for unprivileged users) of the filesystem that holds root."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        stats = os.statvfs(path)
        return stats.f_bavail * stats.f_frsize

    # --- partial downloads ------------------------------------------------------------------

    def partial_data_path(self, sha256: str) -> Path:
        return self._partial / f"{_checked(sha256)}{PARTIAL_DATA_SUFFIX}"

    def partial_state_path(self, sha256: str) -> Path:
        return self._partial / f"{_checked(sha256)}{PARTIAL_STATE_SUFFIX}"

    def partials(self) -> list[str]:
        """sha256 of every partial download (data or state file present)."""
        if not self._partial.is_dir():
            return []
        names = {path.stem for path in self._partial.iterdir() if path.suffix}
        return sorted(name for name in names if _HEX64.fullmatch(name))

    def open_partial(self, sha256: str) -> PartialFile:
        """The partial data file of `sha256`, created (empty, 0600) when absent."""
        ensure_private_directory(self._partial)
        return self.partial_file_type(self.partial_data_path(sha256))

    def load_partial(self, sha256: str) -> PartialState | None:
        """The saved state of a partial download; None when absent or unreadable."""
        path = self.partial_state_path(sha256)
        try:
            with path.open("rb") as stream:
                raw = stream.read(MAX_PARTIAL_STATE_BYTES + 1)
            if len(raw) > MAX_PARTIAL_STATE_BYTES:
                return None
            document = json.loads(raw)
            manifest = ArtifactManifest(
                sha256=document["sha256"],
                size_bytes=int(document["size_bytes"]),
                chunk_size=int(document["chunk_size"]),
                chunk_sha256=tuple(document["chunk_sha256"]),
            )
            verified = int(document["verified_bytes"])
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument):
            return None
        if manifest.sha256 != sha256 or not 0 <= verified <= manifest.size_bytes:
            return None
        return PartialState(manifest, verified)

    def save_partial(self, manifest: ArtifactManifest, verified_bytes: int) -> None:
        """Records (atomically, durably) that the first `verified_bytes` are verified."""
        ensure_private_directory(self._partial)
        document = {
            "sha256": manifest.sha256,
            "size_bytes": manifest.size_bytes,
            "chunk_size": manifest.chunk_size,
            "chunk_sha256": list(manifest.chunk_sha256),
            "verified_bytes": verified_bytes,
        }
        atomic_write(
            self.partial_state_path(manifest.sha256),
            json.dumps(document, separators=(",", ":")).encode(),
            mode=0o600,
        )

    def discard_partial(self, sha256: str) -> None:
        for path in (self.partial_data_path(sha256), self.partial_state_path(sha256)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def adopt_partial(self, sha256: str) -> Path:
        """Installs a partial download the caller has verified in full; returns the blob path."""
        blob = self.adopt(sha256, self.partial_data_path(sha256))
        self.partial_state_path(sha256).unlink(missing_ok=True)
        return blob
