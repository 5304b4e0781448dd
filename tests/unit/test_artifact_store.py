"""The agent's artifact store: blob layout, atomic adoption, retention, partial bookkeeping."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts.store import ArtifactError, ArtifactStore
from common.artifacts import manifest_of_stream


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_file(store: ArtifactStore, data: bytes) -> tuple[str, Path]:
    path = store.staging_dir() / f"incoming-{sha_of(data)[:8]}"
    path.write_bytes(data)
    return sha_of(data), path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_creates_nothing_until_used(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha = sha_of(b"x")
    assert not store.has(sha)
    assert store.blobs() == []
    assert store.partials() == []
    assert store.load_partial(sha) is None
    assert store.blob_path(sha) == tmp_path / "artifacts" / "blobs" / f"{sha}.gguf"
    assert not (tmp_path / "artifacts").exists()
    assert store.free_bytes() > 0  # measured on the nearest existing parent


def test_adopt_installs_a_read_only_blob_atomically(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha, incoming = verified_file(store, b"model bytes")
    blob = store.adopt(sha, incoming)
    assert blob == store.blob_path(sha)
    assert blob.read_bytes() == b"model bytes"
    assert mode_of(blob) == 0o444
    assert mode_of(tmp_path / "artifacts" / "blobs") == 0o700
    assert mode_of(store.staging_dir()) == 0o700
    assert not incoming.exists()
    assert store.has(sha)
    assert store.blobs() == [sha]


def test_adopting_a_blob_already_present_keeps_the_old_and_drops_the_new(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha, first = verified_file(store, b"same")
    blob = store.adopt(sha, first)
    inode = blob.stat().st_ino
    _, second = verified_file(store, b"same")
    assert store.adopt(sha, second) == blob
    assert not second.exists()
    assert blob.stat().st_ino == inode


def test_staging_is_on_the_same_filesystem_as_blobs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha, incoming = verified_file(store, b"abc")
    store.adopt(sha, incoming)
    assert store.staging_dir().stat().st_dev == store.blob_path(sha).parent.stat().st_dev


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "A" * 64, "a" * 63, "", "a" * 64 + "/x", "g" * 64]
)
def test_names_that_are_not_a_sha256_are_refused(tmp_path: Path, bad: str) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ArtifactError, match="not a sha256"):
        store.blob_path(bad)
    with pytest.raises(ArtifactError, match="not a sha256"):
        store.partial_data_path(bad)


def test_retain_deletes_blobs_and_partials_not_kept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    kept, incoming = verified_file(store, b"keep me")
    store.adopt(kept, incoming)
    dropped, incoming = verified_file(store, b"drop me")
    store.adopt(dropped, incoming)
    partial_data = b"half a model"
    partial_manifest = manifest_of_stream([partial_data], chunk_size=4)
    store.save_partial(partial_manifest, 4)
    handle = store.open_partial(partial_manifest.sha256)
    handle.append(partial_data[:4])
    handle.close()
    assert store.partials() == [partial_manifest.sha256]

    deleted = store.retain({kept})

    assert deleted == sorted([dropped, partial_manifest.sha256])
    assert store.blobs() == [kept]
    assert store.partials() == []
    assert store.blob_path(kept).read_bytes() == b"keep me"
    assert store.retain({kept}) == []


def test_partial_state_round_trips_privately(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    manifest = manifest_of_stream([b"0123456789"], chunk_size=4)
    store.save_partial(manifest, 8)
    state = store.load_partial(manifest.sha256)
    assert state is not None
    assert state.manifest == manifest
    assert state.verified_bytes == 8
    assert mode_of(store.partial_state_path(manifest.sha256)) == 0o600
    assert mode_of(tmp_path / "artifacts" / "partial") == 0o700
    handle = store.open_partial(manifest.sha256)
    handle.append(b"0123")
    handle.close()
    assert mode_of(store.partial_data_path(manifest.sha256)) == 0o600


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: b"{not json",
        lambda doc: json.dumps({**doc, "verified_bytes": 11}).encode(),
        lambda doc: json.dumps({**doc, "verified_bytes": -1}).encode(),
        lambda doc: json.dumps({**doc, "sha256": "0" * 64}).encode(),
        lambda doc: json.dumps({**doc, "chunk_sha256": doc["chunk_sha256"][:1]}).encode(),
        lambda doc: json.dumps({k: v for k, v in doc.items() if k != "chunk_size"}).encode(),
        lambda doc: json.dumps([1, 2]).encode(),
        lambda doc: b" " * (17 * 1024 * 1024),
    ],
    ids=["garbage", "past-end", "negative", "other-sha", "chunks", "missing", "list", "huge"],
)
def test_damaged_partial_state_reads_as_none(
    tmp_path: Path, damage: Callable[[dict[str, Any]], bytes]
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    manifest = manifest_of_stream([b"0123456789"], chunk_size=4)
    store.save_partial(manifest, 4)
    path = store.partial_state_path(manifest.sha256)
    document = json.loads(path.read_bytes())
    path.write_bytes(damage(document))
    assert store.load_partial(manifest.sha256) is None


def test_adopt_partial_installs_the_data_and_drops_the_state(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = b"all of it"
    manifest = manifest_of_stream([data], chunk_size=4)
    handle = store.open_partial(manifest.sha256)
    handle.append(data)
    handle.close()
    store.save_partial(manifest, len(data))
    blob = store.adopt_partial(manifest.sha256)
    assert blob.read_bytes() == data
    assert store.partials() == []
    assert store.blobs() == [manifest.sha256]


def test_discard_partial_removes_both_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    manifest = manifest_of_stream([b"abcdef"], chunk_size=4)
    store.open_partial(manifest.sha256).close()
    store.save_partial(manifest, 0)
    store.discard_partial(manifest.sha256)
    assert not store.partial_data_path(manifest.sha256).exists()
    assert not store.partial_state_path(manifest.sha256).exists()
    assert store.partials() == []


def test_free_bytes_matches_the_filesystem(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    stats = os.statvfs(tmp_path)
    expected = stats.f_bavail * stats.f_frsize
    assert abs(store.free_bytes() - expected) < 64 * 1024 * 1024
