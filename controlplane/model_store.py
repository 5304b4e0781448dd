"""`ModelStore`: the control plane's content-addressed blobs (by sha256) and their manifests."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from common.artifacts import (
    CHUNK_SIZE,
    MESSAGE_BYTES,
    ArtifactManifest,
    ManifestBuilder,
    check_sha256,
    manifest_of_file,
)
from common.errors import (
    InsufficientResources,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from common.files import atomic_write, ensure_private_directory, fsync_directory

BLOB_MODE = 0o444
MANIFEST_SUFFIX = ".manifest.json"
_MANIFEST_CACHE = 64  # manifests kept in memory: a transfer asks for one per request


class BlobTooLarge(ResourceExhausted):
    """An artifact is larger than the store accepts; nothing was stored."""


def _store_failure(action: str, exc: OSError) -> Exception:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientResources(f"cannot {action}: the model store's disk is full ({reason})")
    return Unavailable(f"cannot {action}: {reason}")


class _BlobWriter:
    """One upload in progress: a temporary file under tmp/, hashed as it is written."""

    def __init__(self, tmp_dir: Path, max_bytes: int, chunk_size: int) -> None:
        self._max_bytes = max_bytes
        self._builder = ManifestBuilder(chunk_size)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, block: bytes | bytearray) -> None:
        if self._builder.size_bytes + len(block) > self._max_bytes:
            raise BlobTooLarge(f"the artifact is larger than the limit of {self._max_bytes} bytes")
        self._file.write(block)
        self._builder.update(memoryview(block))

    def finish(self) -> ArtifactManifest:
        """Flushes, fsyncs and closes the file read-only; the manifest of what was written."""
        self._file.flush()
        os.fchmod(self._file.fileno(), BLOB_MODE)
        os.fsync(self._file.fileno())
        self._file.close()
        return self._builder.finish()

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self._file.close()
        self.path.unlink(missing_ok=True)


class ModelStore:
    """Blobs at `root/blobs/<sha256>` (mode 0444) with `<sha256>.manifest.json` beside them.

    Uploads are written under `root/tmp` (same filesystem) and renamed into place only once
    complete, so a blob present is always whole. Directories are created on first use.
    """

    def __init__(self, root: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self._chunk_size = chunk_size
        self._lock = threading.Lock()  # guards the manifest cache
        self._manifests: dict[str, ArtifactManifest] = {}
        self._discard_stale_uploads()

    # -- reading ---------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.blobs_dir / check_sha256(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        """The blob's manifest; None when the blob is not held here."""
        blob = self.path(sha256)
        with self._lock:
            cached = self._manifests.get(sha256)
        if cached is not None and blob.is_file():
            return cached
        if not blob.is_file():
            return None
        manifest = self._read_manifest(sha256)
        if manifest is None:  # missing or damaged: rebuild it from the blob itself
            manifest = manifest_of_file(blob, self._chunk_size)
            self._write_manifest(manifest)
        with self._lock:
            if len(self._manifests) >= _MANIFEST_CACHE:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[sha256] = manifest
        return manifest

    def open(self, sha256: str) -> BinaryIO:
        """The blob, opened for reading; NotFound when it is not held here."""
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"no blob sha256:{sha256} in the model store") from None

    def blobs(self) -> list[str]:
        """The sha256 of every blob held."""
        if not self.blobs_dir.is_dir():
            return []
        return sorted(p.name for p in self.blobs_dir.iterdir() if len(p.name) == 64)

    # -- writing ---------------------------------------------------------------------------

    def ingest(self, blocks: Iterable[bytes], max_bytes: int) -> ArtifactManifest:
        """Stores the bytes of `blocks` (at most `max_bytes`) and answers their manifest.

        Idempotent: storing bytes already held keeps the blob and answers the same manifest.
        BlobTooLarge past `max_bytes`; InsufficientResources when the disk is full. The
        temporary file is removed whatever goes wrong.
        """
        writer = self._start(max_bytes)
        try:
            for block in blocks:
                self._write(writer, block)
            return self._commit(writer)
        except BaseException:
            writer.discard()
            raise

    async def ingest_async(self, blocks: AsyncIterator[bytes], max_bytes: int) -> ArtifactManifest:
        """`ingest` for an async stream (an HTTP request body): blocks are gathered to about
        1 MiB and written and hashed in a worker thread, so the event loop never waits on disk.
        """
        writer = await asyncio.to_thread(self._start, max_bytes)
        step: asyncio.Future[Any] | None = None
        try:
            pending = bytearray()
            async for block in blocks:
                pending += block
                if len(pending) >= MESSAGE_BYTES:
                    step = asyncio.ensure_future(asyncio.to_thread(self._write, writer, pending))
                    await asyncio.shield(step)
                    pending = bytearray()  # the thread had the old one
            if pending:
                step = asyncio.ensure_future(asyncio.to_thread(self._write, writer, pending))
                await asyncio.shield(step)
            step = asyncio.ensure_future(asyncio.to_thread(self._commit, writer))
            manifest: ArtifactManifest = await asyncio.shield(step)
            return manifest
        except BaseException:
            if step is not None and not step.done():  # let the thread finish with the file
                await asyncio.wait([step])
            await asyncio.to_thread(writer.discard)
            raise

    def delete(self, sha256: str) -> bool:
        """Removes the blob and its manifest; False when it was not held."""
        blob = self.path(sha256)
        with self._lock:
            self._manifests.pop(sha256, None)
        try:
            blob.unlink()
            existed = True
        except FileNotFoundError:
            existed = False
        except OSError as exc:
            raise _store_failure(f"delete blob sha256:{sha256}", exc) from exc
        self._manifest_path(sha256).unlink(missing_ok=True)
        fsync_directory(self.blobs_dir)
        return existed

    # -- internals -------------------------------------------------------------------------

    def _start(self, max_bytes: int) -> _BlobWriter:
        try:
            ensure_private_directory(self.root)
            ensure_private_directory(self.blobs_dir)
            ensure_private_directory(self.tmp_dir)
            return _BlobWriter(self.tmp_dir, max_bytes, self._chunk_size)
        except OSError as exc:
            raise _store_failure("start storing a model", exc) from exc

    @staticmethod
    def _write(writer: _BlobWriter, block: bytes | bytearray) -> None:
        try:
            writer.write(block)
        except OSError as exc:
            raise _store_failure("store the model", exc) from exc

    def _commit(self, writer: _BlobWriter) -> ArtifactManifest:
        try:
            manifest = writer.finish()
            blob = self.path(manifest.sha256)
            # The manifest goes first: a blob in place always has one.
            self._write_manifest(manifest)
            if blob.is_file():  # the same bytes are held already
                writer.path.unlink()
            else:
                os.replace(writer.path, blob)
                fsync_directory(self.blobs_dir)
        except OSError as exc:
            raise _store_failure("store the model", exc) from exc
        return manifest

    def _manifest_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"{check_sha256(sha256)}{MANIFEST_SUFFIX}"

    def _write_manifest(self, manifest: ArtifactManifest) -> None:
        document = {
            "sha256": manifest.sha256,
            "size_bytes": manifest.size_bytes,
            "chunk_size": manifest.chunk_size,
            "chunk_sha256": list(manifest.chunk_sha256),
        }
        data = json.dumps(document, separators=(",", ":")).encode()
        atomic_write(self._manifest_path(manifest.sha256), data, mode=BLOB_MODE)

    def _read_manifest(self, sha256: str) -> ArtifactManifest | None:
        try:
            document = json.loads(self._manifest_path(sha256).read_bytes())
            manifest = ArtifactManifest(
                sha256=document["sha256"],
                size_bytes=document["size_bytes"],
                chunk_size=document["chunk_size"],
                chunk_sha256=tuple(document["chunk_sha256"]),
            )
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument):
            return None
        if manifest.sha256 != sha256 or manifest.chunk_size != self._chunk_size:
            return None
        return manifest

    def _discard_stale_uploads(self) -> None:
        """Uploads cut short by a crash; only this process writes here."""
        if not self.tmp_dir.is_dir():
            return
        for leftover in self.tmp_dir.iterdir():
            if leftover.name.startswith("upload-"):
                leftover.unlink(missing_ok=True)
