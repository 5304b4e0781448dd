"""One download on disk: its verified prefix, re-verified at resume, grown one chunk at a time."""

from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path

from agent.artifacts.store import ArtifactError, ArtifactStore, PartialFile
from common.artifacts import ArtifactManifest

log = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskWriteError(ArtifactError):
    """Writing the download failed (disk full, I/O error): no other source can help."""


def write_failure(sha256: str, exc: OSError) -> DiskWriteError:
    if exc.errno in _DISK_FULL:
        return DiskWriteError(f"disk full while downloading {sha256}: {exc}")
    return DiskWriteError(f"cannot write the download of {sha256}: {exc}")


class PartialDownload:
    """The partial file of one artifact holds only whole chunks that matched the manifest.

    Methods that touch the disk block: call them from a worker thread. Any OSError becomes
    DiskWriteError; the caller then discards the download (`discard`).
    """

    def __init__(self, store: ArtifactStore, manifest: ArtifactManifest) -> None:
        self.store = store
        self.manifest = manifest
        self.next_chunk = 0  # chunks 0..next_chunk-1 are verified and durable on disk
        self._whole = hashlib.sha256()
        self._file: PartialFile | None = None

    @property
    def done_bytes(self) -> int:
        return min(self.next_chunk * self.manifest.chunk_size, self.manifest.size_bytes)

    def resume(self) -> int:
        """Re-verifies what an earlier attempt left (a data file with its state) up to the first
        chunk that does not match, truncates there, checks free space for the rest, and opens
        the file for appending. Returns the bytes kept."""
        sha256 = self.manifest.sha256
        saved = self.store.load_partial(sha256)
        if saved is None:
            self.store.discard_partial(sha256)  # a data file without its state is not trusted
        else:
            self._keep_verified_prefix()
        needed, free = self.manifest.size_bytes - self.done_bytes, self.store.free_bytes()
        if needed > free:
            self.close()
            raise ArtifactError(
                f"not enough disk space for {sha256}: {needed} bytes still to download, "
                f"{free} bytes free under {self.store.root}"
            )
        try:
            if self._file is None:
                self._file = self.store.open_partial(sha256)
                self.store.save_partial(self.manifest, 0)
        except OSError as exc:
            raise write_failure(sha256, exc) from exc
        return self.done_bytes

    def _keep_verified_prefix(self) -> None:
        manifest = self.manifest
        try:
            self._file = self.store.open_partial(manifest.sha256)
            while self.next_chunk < manifest.chunk_count:
                offset, length = manifest.chunk_span(self.next_chunk)
                data = self._file.read_at(offset, length)
                if not self.chunk_matches(self.next_chunk, data):
                    break
                self._whole.update(data)
                self.next_chunk += 1
            if self._file.size() != self.done_bytes:
                self._file.truncate(self.done_bytes)
            self.store.save_partial(manifest, self.done_bytes)
        except OSError as exc:
            raise write_failure(manifest.sha256, exc) from exc

    def chunk_matches(self, index: int, data: bytes) -> bool:
        expected_length = self.manifest.chunk_span(index)[1]
        if len(data) != expected_length:
            return False
        return hashlib.sha256(data).hexdigest() == self.manifest.chunk_sha256[index]

    def append_chunk(self, data: bytes) -> None:
        """Appends the next chunk (already verified by the caller) durably, then records it."""
        if self._file is None:
            raise RuntimeError("resume() first")
        try:
            self._file.append(data)
            self._whole.update(data)
            self.next_chunk += 1
            self.store.save_partial(self.manifest, self.done_bytes)
        except OSError as exc:
            raise write_failure(self.manifest.sha256, exc) from exc

    def install(self) -> Path:
        """Checks the whole file's sha256, then moves it into the store's blobs."""
        sha256 = self.manifest.sha256
        if self.next_chunk != self.manifest.chunk_count:
            raise RuntimeError("install() before every chunk was written")
        self.close()
        actual = self._whole.hexdigest()
        if actual != sha256:
            self.discard()
            raise ArtifactError(
                f"{sha256}: every chunk matched the manifest but the whole file's sha256 is "
                f"{actual}; the manifest is inconsistent and the download was discarded"
            )
        try:
            return self.store.adopt_partial(sha256)
        except (OSError, ArtifactError) as exc:
            self.discard()
            raise ArtifactError(f"cannot install {sha256}: {exc}") from exc

    def discard(self) -> None:
        self.close()
        self.store.discard_partial(self.manifest.sha256)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
