"""The control plane's content-addressed store on real files: whole blobs or nothing."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import resource
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.artifacts import ArtifactManifest, manifest_of_file
from common.errors import InsufficientResources, InvalidArgument, NotFound, Unavailable
from controlplane.model_store import BlobTooLarge, ModelStore, _store_failure

CHUNK = 1024  # small chunks, so a few KiB make a many-chunk manifest


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", chunk_size=CHUNK)


def blocks_of(data: bytes, size: int = 700) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir()) if store.tmp_dir.exists() else []


DATA = bytes(range(256)) * 20  # 5120 bytes: five chunks of 1 KiB


def test_ingest_stores_a_read_only_blob_with_its_manifest(store: ModelStore) -> None:
    manifest = store.ingest(blocks_of(DATA), max_bytes=len(DATA))
    sha = hashlib.sha256(DATA).hexdigest()
    assert manifest.sha256 == sha
    assert (manifest.size_bytes, manifest.chunk_count) == (len(DATA), 5)
    assert manifest.chunk_sha256[0] == hashlib.sha256(DATA[:CHUNK]).hexdigest()
    blob = store.path(sha)
    assert blob == store.blobs_dir / sha
    assert blob.read_bytes() == DATA
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert manifest == manifest_of_file(blob, CHUNK)
    assert store.has(sha)
    assert store.manifest(sha) == manifest
    assert store.blobs() == [sha]
    assert leftovers(store) == []
    stored = json.loads((store.blobs_dir / f"{sha}.manifest.json").read_text())
    assert stored["chunk_sha256"] == list(manifest.chunk_sha256)


def test_the_store_directories_are_private(store: ModelStore) -> None:
    store.ingest([b"x"], max_bytes=1)
    for directory in (store.root, store.blobs_dir, store.tmp_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_ingesting_the_same_bytes_twice_keeps_one_blob(store: ModelStore) -> None:
    first = store.ingest(blocks_of(DATA), max_bytes=len(DATA))
    second = store.ingest(blocks_of(DATA, size=4096), max_bytes=len(DATA))
    assert first == second
    assert store.blobs() == [first.sha256]
    assert leftovers(store) == []


def test_an_oversized_stream_stores_nothing(store: ModelStore) -> None:
    with pytest.raises(BlobTooLarge, match=f"limit of {len(DATA) - 1} bytes"):
        store.ingest(blocks_of(DATA), max_bytes=len(DATA) - 1)
    assert store.blobs() == []
    assert leftovers(store) == []


def test_a_stream_that_fails_midway_stores_nothing(store: ModelStore) -> None:
    def broken() -> Iterator[bytes]:
        yield DATA[:2000]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        store.ingest(broken(), max_bytes=len(DATA))
    assert store.blobs() == []
    assert leftovers(store) == []


def test_a_write_error_is_reported_clearly_and_stores_nothing(store: ModelStore) -> None:
    """A real write failure: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG)."""
    store.ingest([b"warm"], max_bytes=4)  # directories exist before the limit is set
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, limits[1]))
    try:
        with pytest.raises(Unavailable, match="cannot store the model: File too large"):
            store.ingest(blocks_of(DATA * 2, size=1024), max_bytes=10 * len(DATA))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert store.blobs() == [hashlib.sha256(b"warm").hexdigest()]
    assert leftovers(store) == []


def test_a_full_disk_is_named_as_such() -> None:
    full = _store_failure("store the model", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, InsufficientResources)
    assert "disk is full" in str(full)
    other = _store_failure("store the model", OSError(errno.EIO, "Input/output error"))
    assert isinstance(other, Unavailable)
    assert "Input/output error" in str(other)


def test_async_ingest_streams_blocks_and_cleans_up(store: ModelStore) -> None:
    big = DATA * 300  # 1.5 MB: more than one buffered write

    async def body(data: bytes) -> AsyncIterator[bytes]:
        for block in blocks_of(data, 65536):
            yield block

    manifest = asyncio.run(store.ingest_async(body(big), max_bytes=len(big)))
    assert manifest == manifest_of_file(store.path(manifest.sha256), CHUNK)
    assert manifest.size_bytes == len(big)

    with pytest.raises(BlobTooLarge):
        asyncio.run(store.ingest_async(body(big + b"!"), max_bytes=len(big) - 1))
    assert store.blobs() == [manifest.sha256]
    assert leftovers(store) == []


def test_async_ingest_cancelled_midway_leaves_no_temp_file(store: ModelStore) -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield DATA * 300
            started.set()
            await asyncio.Event().wait()  # the client stops sending
            yield b""

        task = asyncio.create_task(store.ingest_async(stalled(), max_bytes=10**9))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert store.blobs() == []
    assert leftovers(store) == []


def test_open_manifest_and_delete(store: ModelStore) -> None:
    manifest = store.ingest([DATA], max_bytes=len(DATA))
    with store.open(manifest.sha256) as handle:
        assert handle.read() == DATA
    assert store.delete(manifest.sha256) is True
    assert store.delete(manifest.sha256) is False
    assert not store.has(manifest.sha256)
    assert store.manifest(manifest.sha256) is None
    assert list(store.blobs_dir.iterdir()) == []
    with pytest.raises(NotFound, match=manifest.sha256):
        store.open(manifest.sha256)


def test_unknown_and_malformed_digests(store: ModelStore) -> None:
    unknown = "0" * 64
    assert store.manifest(unknown) is None
    assert not store.has(unknown)
    for bad in ("0" * 63, "A" * 64, "../" + "0" * 61, ""):
        with pytest.raises(InvalidArgument, match="64 lowercase hex"):
            store.path(bad)
        with pytest.raises(InvalidArgument):
            store.manifest(bad)


def test_a_damaged_manifest_file_is_rebuilt_from_the_blob(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", chunk_size=CHUNK)
    manifest = store.ingest([DATA], max_bytes=len(DATA))
    manifest_file = store.blobs_dir / f"{manifest.sha256}.manifest.json"
    manifest_file.chmod(0o644)
    manifest_file.write_text('{"sha256": "nope"}')
    fresh = ModelStore(tmp_path / "models", chunk_size=CHUNK)  # no cached manifest
    assert fresh.manifest(manifest.sha256) == manifest
    assert json.loads(manifest_file.read_text())["sha256"] == manifest.sha256


def test_leftover_uploads_of_a_crash_are_removed_on_start(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.ingest([b"kept"], max_bytes=4)
    (store.tmp_dir / "upload-crashed.part").write_bytes(b"half a model")
    ModelStore(tmp_path / "models")
    assert leftovers(store) == []
    assert store.blobs() == [hashlib.sha256(b"kept").hexdigest()]


def test_the_store_serves_as_a_blob_source(store: ModelStore) -> None:
    """What the ArtifactService asks of it: a manifest, and the bytes of each chunk."""
    manifest = store.ingest([DATA], max_bytes=len(DATA))
    served = store.manifest(manifest.sha256)
    assert isinstance(served, ArtifactManifest)
    with store.open(manifest.sha256) as handle:
        for index in range(served.chunk_count):
            offset, length = served.chunk_span(index)
            handle.seek(offset)
            chunk = handle.read(length)
            assert hashlib.sha256(chunk).hexdigest() == served.chunk_sha256[index]
