"""Chunked, verified, resumable downloads of artifacts from one or more sources, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from agent.artifacts.partial_download import DiskWriteError, PartialDownload
from agent.artifacts.store import ArtifactError, ArtifactStore
from agent.control.backoff import Backoff
from common.artifacts import ArtifactManifest

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
DEFAULT_RETRY_ROUNDS = 3
DEFAULT_RETRY_DELAY_S = 1.0


class ChunkSource(Protocol):
    """Somewhere the bytes of artifacts can be read from (the control plane, a peer)."""

    name: str

    async def manifest(self, sha256: str) -> ArtifactManifest: ...

    def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """The `length` bytes from `offset`, in blocks, in order; raises when the transfer is
        cut. The downloader counts and checks every byte: sending more is that source's fault."""
        ...


@dataclass(frozen=True)
class Progress:
    """A download's state, reported after every chunk written and once before installing."""

    sha256: str
    bytes_done: int  # verified and on disk
    bytes_total: int
    rate_bytes_per_s: float
    state: Literal["downloading", "verifying"]
    source: str


class _SourceFailed(Exception):
    """The current source sent something wrong (a bad chunk, too many bytes, too few)."""


class TokenBucket:
    """Limits a byte rate: a burst of one second's bytes, then `rate` bytes per second."""

    def __init__(self, rate_bytes_per_s: int, clock: Clock, sleep: Sleep) -> None:
        self.rate = rate_bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(rate_bytes_per_s)
        self._stamp = clock()

    async def take(self, count: int) -> None:
        """Spends `count` bytes; sleeps while the bucket is in debt. No-op when unlimited."""
        if self.rate <= 0:
            return
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= count
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate)


@dataclass
class _Job:
    """One fetch in progress."""

    disk: PartialDownload
    started_at: float
    resumed_bytes: int
    on_progress: Callable[[Progress], None] | None
    source: str = ""


async def _complete_even_if_cancelled(work: Awaitable[T]) -> T:
    """Awaits `work` (a disk write in a thread); a cancellation waits for it to finish first,
    so the partial download on disk is never left half-recorded."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def resolve_manifest(
    sha256: str, sources: Sequence[ChunkSource], *, size_bytes: int | None = None
) -> ArtifactManifest:
    """The manifest of `sha256` from the first source that has a consistent one.

    A manifest of another artifact, or (when `size_bytes` is given) of another size, is
    refused; ArtifactError with every source's reason when none has it.
    """
    errors: list[str] = []
    for source in sources:
        try:
            manifest = await source.manifest(sha256)
        except Exception as exc:
            errors.append(f"{source.name}: {exc}")
            continue
        if manifest.sha256 != sha256:
            errors.append(f"{source.name}: sent the manifest of {manifest.sha256}, not {sha256}")
        elif size_bytes is not None and manifest.size_bytes != size_bytes:
            errors.append(
                f"{source.name}: manifest says {manifest.size_bytes} bytes, expected {size_bytes}"
            )
        else:
            return manifest
    reasons = "; ".join(errors) or "no sources"
    raise ArtifactError(f"no usable manifest for {sha256}: {reasons}")


class Downloader:
    """Fetches artifacts into an ArtifactStore, verifying every chunk before writing it.

    Progress survives a cut, a cancellation and a restart: the partial file holds only
    verified chunks (re-verified at resume), so at most one chunk is ever fetched twice.
    The next chunk is received while the previous one is written and fsynced, so at most
    two chunks are in memory.
    """

    def __init__(
        self,
        store: ArtifactStore,
        *,
        rate_limit_bytes_per_s: int = 0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        retry_rounds: int = DEFAULT_RETRY_ROUNDS,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    ) -> None:
        if rate_limit_bytes_per_s < 0 or retry_rounds < 1 or retry_delay_s <= 0:
            raise ValueError("need rate limit >= 0, retry rounds >= 1, retry delay > 0")
        self.store = store
        self.bytes_fetched = 0  # received from sources, including chunks that were discarded
        self._clock = clock
        self._sleep = sleep
        self._bucket = TokenBucket(rate_limit_bytes_per_s, clock, sleep)
        self._retry_rounds = retry_rounds
        self._retry_delay_s = retry_delay_s
        self._locks: dict[str, asyncio.Lock] = {}

    async def fetch_sha256(
        self,
        sha256: str,
        sources: Sequence[ChunkSource],
        *,
        size_bytes: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Path:
        """Like fetch, asking the sources for the manifest first (unless the blob is here)."""
        if self.store.has(sha256):
            return self.store.blob_path(sha256)
        manifest = await resolve_manifest(sha256, sources, size_bytes=size_bytes)
        return await self.fetch(manifest, sources, on_progress)

    async def fetch(
        self,
        manifest: ArtifactManifest,
        sources: Sequence[ChunkSource],
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Path:
        """The blob of `manifest`, downloaded (or resumed) and verified; its path in the store."""
        sha256 = manifest.sha256
        async with self._locks.setdefault(sha256, asyncio.Lock()):
            if self.store.has(sha256):
                self.store.discard_partial(sha256)
                return self.store.blob_path(sha256)
            if not sources:
                raise ArtifactError(f"no source to download {sha256} from")
            disk = PartialDownload(self.store, manifest)
            try:
                resumed = await _complete_even_if_cancelled(asyncio.to_thread(disk.resume))
                if resumed:
                    log.info("resuming %s at byte %d of %d", sha256, resumed, manifest.size_bytes)
                job = _Job(disk, self._clock(), resumed, on_progress, sources[0].name)
                await self._download(job, sources)
                self._report(job, "verifying")
                return await _complete_even_if_cancelled(asyncio.to_thread(disk.install))
            except DiskWriteError:
                disk.discard()
                raise
            finally:
                disk.close()

    async def _download(self, job: _Job, sources: Sequence[ChunkSource]) -> None:
        """Fetches the missing chunks, moving to the next source when one fails; after every
        source failed on the same chunk, waits (backoff) and tries them all again."""
        manifest = job.disk.manifest
        backoff = Backoff(base=self._retry_delay_s, max_delay=max(30.0, self._retry_delay_s))
        attempts = 0  # failed tries at the current chunk
        errors: list[str] = []
        index = 0
        self._report(job, "downloading")
        while job.disk.next_chunk < manifest.chunk_count:
            source = sources[index]
            job.source = source.name
            chunk_before = job.disk.next_chunk
            try:
                await self._pull(job, source)
                continue
            except DiskWriteError:
                raise
            except Exception as exc:  # the source failed: cut, bad data, unreachable
                if job.disk.next_chunk != chunk_before:  # it got further this time
                    attempts, errors = 0, []
                    backoff.reset()
                attempts += 1
                errors.append(f"{source.name}: {exc}")
                log.warning("%s: chunk %d from %s failed: %s", manifest.sha256,
                            job.disk.next_chunk, source.name, exc)  # fmt: skip
            index = (index + 1) % len(sources)
            if attempts % len(sources) == 0:
                if attempts // len(sources) >= self._retry_rounds:
                    offset, length = manifest.chunk_span(job.disk.next_chunk)
                    raise ArtifactError(
                        f"chunk {job.disk.next_chunk} (bytes {offset}..{offset + length}) of "
                        f"{manifest.sha256} could not be fetched: " + "; ".join(errors)
                    )
                index = 0
                await self._sleep(backoff.next_delay())

    async def _pull(self, job: _Job, source: ChunkSource) -> None:
        """Reads the rest of the artifact from `source`: each chunk is verified, then written
        while the next one arrives. Raises when the source fails; the chunk being received
        is then discarded (the ones before it are on disk)."""
        disk, manifest = job.disk, job.disk.manifest
        receiving = disk.next_chunk
        start = manifest.chunk_span(receiving)[0]
        wanted = manifest.size_bytes - start
        received = held = 0
        parts: list[bytes] = []
        writing: asyncio.Future[None] | None = None
        blocks = source.read(manifest.sha256, start, wanted)
        try:
            async for block in blocks:
                self.bytes_fetched += len(block)
                received += len(block)
                if received > wanted:
                    raise _SourceFailed(
                        f"sent more than the {manifest.size_bytes} bytes the manifest declares"
                    )
                await self._bucket.take(len(block))
                parts.append(block)
                held += len(block)
                while receiving < manifest.chunk_count:
                    length = manifest.chunk_span(receiving)[1]
                    if held < length:
                        break
                    joined = parts[0] if len(parts) == 1 else b"".join(parts)
                    chunk, rest = joined[:length], joined[length:]
                    parts, held = ([rest] if rest else []), len(rest)
                    if not await asyncio.to_thread(disk.chunk_matches, receiving, chunk):
                        offset = manifest.chunk_span(receiving)[0]
                        raise _SourceFailed(
                            f"chunk {receiving} (at byte {offset}) does not match its sha256"
                        )
                    pending, writing = writing, None
                    if pending is not None:
                        await self._settle(job, pending)
                    writing = asyncio.ensure_future(asyncio.to_thread(disk.append_chunk, chunk))
                    receiving += 1
                if receiving >= manifest.chunk_count:
                    return
        finally:
            close = getattr(blocks, "aclose", None)  # an async generator: stop it (its RPC) now
            if close is not None:
                await close()
            if writing is not None:
                await self._settle(job, writing)
        raise _SourceFailed(f"the transfer ended early, at byte {start + received}")

    async def _settle(self, job: _Job, writing: asyncio.Future[None]) -> None:
        """Waits for a chunk's write (also when cancelled: the disk stays consistent)."""
        await _complete_even_if_cancelled(writing)
        self._report(job, "downloading")

    def _report(self, job: _Job, state: Literal["downloading", "verifying"]) -> None:
        if job.on_progress is None:
            return
        elapsed = self._clock() - job.started_at
        done = job.disk.done_bytes
        rate = (done - job.resumed_bytes) / elapsed if elapsed > 0 else 0.0
        progress = Progress(
            job.disk.manifest.sha256, done, job.disk.manifest.size_bytes, rate, state, job.source
        )
        try:
            job.on_progress(progress)
        except Exception:  # a broken observer must not look like a failed source
            log.exception("progress callback failed for %s", job.disk.manifest.sha256)
