"""Verified, resumable chunked downloads against in-memory sources that misbehave on purpose."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from agent.artifacts.download import (
    ChunkSource,
    Downloader,
    Progress,
    resolve_manifest,
)
from agent.artifacts.store import ArtifactError, ArtifactStore, PartialFile
from common.artifacts import ArtifactManifest, manifest_of_stream

CHUNK = 1024
BLOCK = 300  # messages do not line up with chunks, as over the wire they need not
DATA = bytes((i * 7 + i // 251) % 256 for i in range(10 * CHUNK + 123))
MANIFEST = manifest_of_stream([DATA], chunk_size=CHUNK)
T = TypeVar("T")


def run(work: Awaitable[T]) -> T:
    async def main() -> T:
        return await work

    return asyncio.run(main())


class MemorySource:
    """Serves `data` in blocks; can cut once after some bytes, flip a byte, add bytes, stall."""

    def __init__(
        self,
        data: bytes = DATA,
        *,
        name: str = "memory",
        manifest: ArtifactManifest = MANIFEST,
        cut_after: int | None = None,
        flip_at: int | None = None,
        extra: bytes = b"",
        stall_after: int | None = None,
    ) -> None:
        self.name = name
        self._data = data
        self._manifest = manifest
        self._cut_after = cut_after
        self._flip_at = flip_at
        self._extra = extra
        self._stall_after = stall_after
        self.stalled = asyncio.Event()
        self.sent = 0
        self.reads: list[tuple[int, int]] = []

    async def manifest(self, sha256: str) -> ArtifactManifest:
        return self._manifest

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        self.reads.append((offset, length))
        served = bytearray(self._data[offset : offset + length] + self._extra)
        if self._flip_at is not None and offset <= self._flip_at < offset + len(served):
            served[self._flip_at - offset] ^= 0xFF
        for start in range(0, len(served), BLOCK):
            block = bytes(served[start : start + BLOCK])
            if self._cut_after is not None and self.sent + len(block) > self._cut_after:
                block = block[: self._cut_after - self.sent]
                self._cut_after = None  # cuts once
                self.sent += len(block)
                if block:
                    yield block
                raise ConnectionResetError("connection reset by peer")
            if self._stall_after is not None and self.sent >= self._stall_after:
                self.stalled.set()
                await asyncio.Event().wait()
            self.sent += len(block)
            yield block


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def downloader(root: Path, time: FakeTime | None = None, **options: int) -> Downloader:
    time = time or FakeTime()
    return Downloader(ArtifactStore(root), clock=time.clock, sleep=time.sleep, **options)


def fetch(
    loader: Downloader,
    sources: Sequence[ChunkSource],
    manifest: ArtifactManifest = MANIFEST,
    on_progress: Callable[[Progress], None] | None = None,
) -> Path:
    return run(loader.fetch(manifest, sources, on_progress))


def assert_nothing_partial(store: ArtifactStore) -> None:
    assert store.partials() == []


def test_a_clean_download_is_verified_and_installed_read_only(tmp_path: Path) -> None:
    loader = downloader(tmp_path)
    reports: list[Progress] = []
    blob = fetch(loader, [MemorySource()], on_progress=reports.append)
    assert blob.read_bytes() == DATA
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert loader.store.blobs() == [MANIFEST.sha256]
    assert_nothing_partial(loader.store)
    assert loader.bytes_fetched == len(DATA)
    done = [report.bytes_done for report in reports]
    assert done == sorted(done)
    assert done[0] == 0
    assert reports[-1].state == "verifying"
    assert reports[-1].bytes_done == reports[-1].bytes_total == len(DATA)
    assert {report.source for report in reports} == {"memory"}
    assert all(report.state == "downloading" for report in reports[:-1])


def test_a_blob_already_present_is_not_fetched_again(tmp_path: Path) -> None:
    loader = downloader(tmp_path)
    fetch(loader, [MemorySource()])
    again = MemorySource()
    assert fetch(loader, [again]).read_bytes() == DATA
    assert again.reads == []


def test_an_empty_artifact_is_installed(tmp_path: Path) -> None:
    manifest = manifest_of_stream([b""], chunk_size=CHUNK)
    blob = fetch(downloader(tmp_path), [MemorySource(b"", manifest=manifest)], manifest)
    assert blob.read_bytes() == b""


def test_a_cut_resumes_from_the_last_verified_chunk(tmp_path: Path) -> None:
    time = FakeTime()
    loader = downloader(tmp_path, time)
    cut_at = 3 * CHUNK + 700
    source = MemorySource(cut_after=cut_at)
    assert fetch(loader, [source]).read_bytes() == DATA
    assert source.reads == [(0, len(DATA)), (3 * CHUNK, len(DATA) - 3 * CHUNK)]
    refetched = loader.bytes_fetched - len(DATA)
    assert 0 < refetched <= CHUNK
    assert refetched == 700
    assert len(time.sleeps) == 1  # one round of one source failed: one backoff wait


def test_a_flipped_byte_discards_that_chunk_and_the_next_source_supplies_it(
    tmp_path: Path,
) -> None:
    loader = downloader(tmp_path)
    liar = MemorySource(name="peer", flip_at=5 * CHUNK + 10)
    honest = MemorySource(name="control plane")
    reports: list[Progress] = []
    assert fetch(loader, [liar, honest], on_progress=reports.append).read_bytes() == DATA
    assert honest.reads == [(5 * CHUNK, len(DATA) - 5 * CHUNK)]
    assert loader.bytes_fetched - len(DATA) <= CHUNK + BLOCK
    assert {r.source for r in reports} == {"peer", "control plane"}


def test_a_source_sending_more_than_declared_fails_and_the_next_one_is_used(
    tmp_path: Path,
) -> None:
    loader = downloader(tmp_path)
    greedy = MemorySource(name="greedy", extra=b"trailing junk")
    honest = MemorySource(name="honest")
    assert fetch(loader, [greedy, honest]).read_bytes() == DATA
    # The block that overran the end also held the end of chunk 9: both came from `honest`.
    assert honest.reads == [(9 * CHUNK, len(DATA) - 9 * CHUNK)]


def test_only_bad_sources_give_up_after_bounded_rounds_naming_chunk_and_errors(
    tmp_path: Path,
) -> None:
    time = FakeTime()
    loader = downloader(tmp_path, time, retry_rounds=3)
    greedy = MemorySource(name="greedy", extra=b"x")
    liar = MemorySource(name="liar", flip_at=10 * CHUNK)
    with pytest.raises(ArtifactError) as error:
        fetch(loader, [greedy, liar])
    message = str(error.value)
    assert f"chunk 10 (bytes {10 * CHUNK}..{len(DATA)})" in message
    assert "greedy: sent more than" in message
    assert "liar: chunk 10 (at byte 10240) does not match its sha256" in message
    assert len(time.sleeps) == 2  # waits between three rounds, none after the last
    assert time.sleeps[1] > time.sleeps[0] * 1.1
    assert loader.store.blobs() == []
    state = loader.store.load_partial(MANIFEST.sha256)
    assert state is not None
    assert state.verified_bytes == 10 * CHUNK  # kept for a later try


def test_an_unreachable_source_is_skipped(tmp_path: Path) -> None:
    class Unreachable:
        name = "down"

        async def manifest(self, sha256: str) -> ArtifactManifest:
            raise ConnectionRefusedError("connection refused")

        def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
            raise ConnectionRefusedError("connection refused")

    loader = downloader(tmp_path)
    path = run(loader.fetch_sha256(MANIFEST.sha256, [Unreachable(), MemorySource()]))
    assert path.read_bytes() == DATA


def test_a_wrong_manifest_is_refused(tmp_path: Path) -> None:
    other = manifest_of_stream([b"something else"], chunk_size=CHUNK)
    impostor = MemorySource(name="impostor", manifest=other)
    with pytest.raises(ArtifactError, match="impostor: sent the manifest of " + other.sha256):
        run(resolve_manifest(MANIFEST.sha256, [impostor]))
    with pytest.raises(ArtifactError, match=f"expected {len(DATA) - 1}"):
        run(resolve_manifest(MANIFEST.sha256, [MemorySource()], size_bytes=len(DATA) - 1))
    good = run(resolve_manifest(MANIFEST.sha256, [impostor, MemorySource()]))
    assert good == MANIFEST
    loader = downloader(tmp_path)
    with pytest.raises(ArtifactError, match="no usable manifest"):
        run(loader.fetch_sha256(MANIFEST.sha256, [impostor]))
    assert loader.store.blobs() == []
    assert_nothing_partial(loader.store)


def test_a_manifest_inconsistent_with_its_chunks_is_caught_before_adoption(
    tmp_path: Path,
) -> None:
    lying = replace(MANIFEST, sha256=hashlib.sha256(b"another file").hexdigest())
    loader = downloader(tmp_path)
    with pytest.raises(ArtifactError, match="whole file's sha256"):
        fetch(loader, [MemorySource(manifest=lying)], lying)
    assert loader.store.blobs() == []
    assert_nothing_partial(loader.store)


def test_a_restart_resumes_from_what_is_on_disk(tmp_path: Path) -> None:
    first = downloader(tmp_path, retry_rounds=1)
    with pytest.raises(ArtifactError, match="connection reset"):
        fetch(first, [MemorySource(cut_after=4 * CHUNK + 50)])
    state = first.store.load_partial(MANIFEST.sha256)
    assert state is not None
    assert state.verified_bytes == 4 * CHUNK

    second = downloader(tmp_path)  # a new process: new store and downloader on the same root
    source = MemorySource()
    assert fetch(second, [source]).read_bytes() == DATA
    assert source.reads == [(4 * CHUNK, len(DATA) - 4 * CHUNK)]
    assert second.bytes_fetched == len(DATA) - 4 * CHUNK


def test_resume_re_verifies_the_disk_and_truncates_at_the_first_bad_chunk(tmp_path: Path) -> None:
    first = downloader(tmp_path, retry_rounds=1)
    with pytest.raises(ArtifactError):
        fetch(first, [MemorySource(cut_after=6 * CHUNK)])
    data_path = first.store.partial_data_path(MANIFEST.sha256)
    assert data_path.stat().st_size == 6 * CHUNK
    with data_path.open("r+b") as handle:  # bit rot in chunk 2
        handle.seek(2 * CHUNK + 5)
        handle.write(b"\x00" if DATA[2 * CHUNK + 5] else b"\x01")

    second = downloader(tmp_path)
    source = MemorySource()
    assert fetch(second, [source]).read_bytes() == DATA
    assert source.reads == [(2 * CHUNK, len(DATA) - 2 * CHUNK)]


def test_a_chunk_written_before_its_state_was_saved_is_kept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    partial = store.open_partial(MANIFEST.sha256)
    partial.append(DATA[: 3 * CHUNK + 10])  # three whole chunks and a torn fourth
    partial.close()
    store.save_partial(MANIFEST, CHUNK)  # the state lagged behind (crash between the two)
    loader = downloader(tmp_path)
    source = MemorySource()
    assert fetch(loader, [source]).read_bytes() == DATA
    assert source.reads == [(3 * CHUNK, len(DATA) - 3 * CHUNK)]


def test_a_complete_partial_left_by_a_crash_is_installed_without_fetching(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    partial = store.open_partial(MANIFEST.sha256)
    partial.append(DATA)
    partial.close()
    store.save_partial(MANIFEST, len(DATA))
    loader = downloader(tmp_path)
    source = MemorySource()
    assert fetch(loader, [source]).read_bytes() == DATA
    assert source.reads == []
    assert loader.bytes_fetched == 0
    assert_nothing_partial(loader.store)


def test_a_data_file_without_state_is_not_trusted(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    partial = store.open_partial(MANIFEST.sha256)
    partial.append(DATA[: 2 * CHUNK])
    partial.close()
    source = MemorySource()
    assert fetch(downloader(tmp_path), [source]).read_bytes() == DATA
    assert source.reads == [(0, len(DATA))]


def test_cancellation_leaves_a_consistent_partial_that_resumes(tmp_path: Path) -> None:
    store_root = tmp_path
    stalling = MemorySource(stall_after=5 * CHUNK + 400)

    async def cancel_mid_transfer() -> None:
        loader = downloader(store_root)
        task = asyncio.create_task(loader.fetch(MANIFEST, [stalling]))
        await stalling.stalled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_mid_transfer())
    store = ArtifactStore(store_root)
    state = store.load_partial(MANIFEST.sha256)
    assert state is not None
    assert state.verified_bytes == 5 * CHUNK
    assert store.partial_data_path(MANIFEST.sha256).stat().st_size == 5 * CHUNK
    assert store.blobs() == []

    loader = downloader(store_root)
    source = MemorySource()
    assert fetch(loader, [source]).read_bytes() == DATA
    assert loader.bytes_fetched == len(DATA) - 5 * CHUNK


def test_the_bandwidth_limit_paces_the_transfer(tmp_path: Path) -> None:
    time = FakeTime()
    rate = 2000
    loader = downloader(tmp_path, time, rate_limit_bytes_per_s=rate)
    reports: list[Progress] = []
    fetch(loader, [MemorySource()], on_progress=reports.append)
    # A burst of one second's bytes, then the rest at `rate`.
    assert sum(time.sleeps) == pytest.approx((len(DATA) - rate) / rate)
    assert reports[-1].rate_bytes_per_s == pytest.approx(len(DATA) / sum(time.sleeps), rel=0.01)
    assert max(time.sleeps) <= BLOCK / rate + 1e-9


def test_no_limit_never_sleeps(tmp_path: Path) -> None:
    time = FakeTime()
    fetch(downloader(tmp_path, time), [MemorySource()])
    assert time.sleeps == []


class DiskFills(PartialFile):
    """Accepts `room` bytes, then writes half of what it is given and fails with ENOSPC."""

    room = 2 * CHUNK

    def append(self, data: bytes) -> None:
        if self.size() + len(data) > self.room:
            super().append(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().append(data)


def test_disk_full_while_writing_removes_the_partial_and_leaves_blobs_alone(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    serving = store.staging_dir() / "serving"
    serving.write_bytes(b"the model being served")
    serving_sha = hashlib.sha256(b"the model being served").hexdigest()
    store.adopt(serving_sha, serving)

    store.partial_file_type = DiskFills
    loader = Downloader(store, sleep=FakeTime().sleep)
    second = MemorySource(name="second")
    with pytest.raises(ArtifactError, match=f"disk full while downloading {MANIFEST.sha256}"):
        fetch(loader, [MemorySource(), second])
    assert_nothing_partial(store)
    assert store.blobs() == [serving_sha]
    assert store.blob_path(serving_sha).read_bytes() == b"the model being served"
    assert second.reads == []  # a full disk is not the source's fault: no other is tried


def test_too_little_free_space_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    class SmallDisk(ArtifactStore):
        def free_bytes(self) -> int:
            return len(DATA) - 1

    loader = Downloader(SmallDisk(tmp_path))
    source = MemorySource()
    with pytest.raises(ArtifactError) as error:
        fetch(loader, [source])
    assert f"{len(DATA)} bytes still to download, {len(DATA) - 1} bytes free" in str(error.value)
    assert source.reads == []
    assert_nothing_partial(loader.store)


def test_the_free_space_check_counts_what_is_already_verified(tmp_path: Path) -> None:
    first = downloader(tmp_path, retry_rounds=1)
    with pytest.raises(ArtifactError):
        fetch(first, [MemorySource(cut_after=4 * CHUNK)])

    class JustEnough(ArtifactStore):
        def free_bytes(self) -> int:
            return len(DATA) - 4 * CHUNK

    assert fetch(Downloader(JustEnough(tmp_path)), [MemorySource()]).read_bytes() == DATA


def test_no_sources_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no source"):
        fetch(downloader(tmp_path), [])


def test_a_failing_progress_callback_does_not_fail_the_download(tmp_path: Path) -> None:
    def broken(progress: Progress) -> None:
        raise RuntimeError("observer bug")

    source = MemorySource()
    assert fetch(downloader(tmp_path), [source], on_progress=broken).read_bytes() == DATA
    assert len(source.reads) == 1


def test_concurrent_fetches_of_one_artifact_download_it_once(tmp_path: Path) -> None:
    loader = downloader(tmp_path)
    source = MemorySource()

    async def both() -> list[Path]:
        return list(await asyncio.gather(*(loader.fetch(MANIFEST, [source]) for _ in range(2))))

    first, second = run(both())
    assert first == second
    assert first.read_bytes() == DATA
    assert loader.bytes_fetched == len(DATA)
