"""Artifact transfer over real gRPC: ArtifactServicer serving files, GrpcChunkSource fetching."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import grpc
import pytest

from agent.artifacts.download import Downloader
from agent.artifacts.grpc_source import CHANNEL_OPTIONS, GrpcChunkSource
from agent.artifacts.store import ArtifactError, ArtifactStore
from common.artifact_servicer import ArtifactServicer, Authorize, add_artifact_service
from common.artifacts import CHUNK_SIZE, MESSAGE_BYTES, ArtifactManifest, manifest_of_file
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

T = TypeVar("T")
SMALL_CHUNK = 256 * 1024
UNKNOWN_SHA = "0" * 64


class DirectoryBlobs:
    """A BlobSource over files in a directory, each with its manifest computed up front."""

    def __init__(self, files: list[Path], chunk_size: int = CHUNK_SIZE) -> None:
        self.files: dict[str, tuple[Path, ArtifactManifest]] = {}
        for path in files:
            manifest = manifest_of_file(path, chunk_size)
            self.files[manifest.sha256] = (path, manifest)

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        entry = self.files.get(sha256)
        return entry[1] if entry else None

    def open(self, sha256: str) -> BinaryIO:
        return self.files[sha256][0].open("rb")


class CuttingServicer(ArtifactServicer):
    """Aborts the first Fetch stream (UNAVAILABLE) once it has sent `cut_after` bytes."""

    def __init__(self, blobs: DirectoryBlobs, cut_after: int) -> None:
        super().__init__(blobs)
        self.cut_after: int | None = cut_after
        self.fetches: list[tuple[int, int]] = []

    async def Fetch(
        self, request: cpb.FetchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.ArtifactChunk]:
        self.fetches.append((request.offset, request.length))
        sent = 0
        async for message in super().Fetch(request, context):
            if self.cut_after is not None and sent + len(message.data) > self.cut_after:
                self.cut_after = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped")
            sent += len(message.data)
            yield message


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


async def start_server(servicer: ArtifactServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add_artifact_service(server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def file_of(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "served" / f"artifact-{size}.bin"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_the_demo_model_arrives_byte_for_byte(demo_model: Path, tmp_path: Path) -> None:
    blobs = DirectoryBlobs([demo_model])
    (sha256, (_, manifest)), *_ = blobs.files.items()

    async def transfer() -> tuple[Path, float, Downloader]:
        server, address = await start_server(ArtifactServicer(blobs))
        try:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                source = GrpcChunkSource(channel, "control plane")
                loader = Downloader(ArtifactStore(tmp_path / "artifacts"))
                started = time.perf_counter()
                path = await loader.fetch_sha256(sha256, [source], size_bytes=manifest.size_bytes)
                return path, time.perf_counter() - started, loader
        finally:
            await server.stop(None)

    blob, seconds, loader = run(transfer)
    started = time.perf_counter()
    shutil.copyfile(demo_model, tmp_path / "raw-copy")
    copy_seconds = time.perf_counter() - started
    print(f"gRPC transfer {manifest.size_bytes / seconds / 1e6:.0f} MB/s, "
          f"raw copy {manifest.size_bytes / copy_seconds / 1e6:.0f} MB/s")  # fmt: skip
    assert blob.read_bytes() == demo_model.read_bytes()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256
    assert loader.bytes_fetched == manifest.size_bytes
    assert loader.store.partials() == []


def test_a_server_side_cut_is_resumed_within_one_chunk(tmp_path: Path) -> None:
    chunk = 2 * MESSAGE_BYTES
    path = file_of(tmp_path, 3 * chunk + 4321)
    blobs = DirectoryBlobs([path], chunk)
    ((_, manifest),) = blobs.files.values()
    servicer = CuttingServicer(blobs, cut_after=5 * MESSAGE_BYTES)  # in the middle of chunk 2

    async def transfer() -> tuple[Path, Downloader]:
        server, address = await start_server(servicer)
        try:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                loader = Downloader(ArtifactStore(tmp_path / "a"), retry_delay_s=0.01)
                blob = await loader.fetch(manifest, [GrpcChunkSource(channel, "cp")])
                return blob, loader
        finally:
            await server.stop(None)

    blob, loader = run(transfer)
    assert blob.read_bytes() == path.read_bytes()
    assert servicer.fetches == [
        (0, manifest.size_bytes),
        (2 * chunk, manifest.size_bytes - 2 * chunk),
    ]
    assert loader.bytes_fetched - manifest.size_bytes == MESSAGE_BYTES  # at most one chunk


def test_an_agent_restarted_mid_download_resumes_over_grpc(tmp_path: Path) -> None:
    path = file_of(tmp_path, 3 * MESSAGE_BYTES + 17)
    blobs = DirectoryBlobs([path], SMALL_CHUNK)
    ((_, manifest),) = blobs.files.values()
    servicer = CuttingServicer(blobs, cut_after=2 * MESSAGE_BYTES)

    async def two_runs() -> tuple[str, Path, int]:
        server, address = await start_server(servicer)
        try:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                first = Downloader(ArtifactStore(tmp_path / "a"), retry_rounds=1)
                with pytest.raises(ArtifactError) as error:
                    await first.fetch(manifest, [GrpcChunkSource(channel, "cp")])
                second = Downloader(ArtifactStore(tmp_path / "a"))
                blob = await second.fetch(manifest, [GrpcChunkSource(channel, "cp")])
                return str(error.value), blob, second.bytes_fetched
        finally:
            await server.stop(None)

    message, blob, refetched = run(two_runs)
    assert "cp: UNAVAILABLE: link dropped" in message
    assert blob.read_bytes() == path.read_bytes()
    assert servicer.fetches[1][0] == 2 * MESSAGE_BYTES
    assert refetched == manifest.size_bytes - 2 * MESSAGE_BYTES


def test_an_unreachable_peer_falls_back_to_the_next_source(tmp_path: Path) -> None:
    path = file_of(tmp_path, SMALL_CHUNK + 1)
    blobs = DirectoryBlobs([path], SMALL_CHUNK)
    (sha256, _), *_ = blobs.files.items()

    async def transfer() -> Path:
        server, address = await start_server(ArtifactServicer(blobs))
        dead = grpc.aio.insecure_channel("127.0.0.1:1")
        try:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                sources = [GrpcChunkSource(dead, "peer"), GrpcChunkSource(channel, "cp")]
                loader = Downloader(ArtifactStore(tmp_path / "a"), retry_delay_s=0.01)
                return await loader.fetch_sha256(sha256, sources)
        finally:
            await dead.close()
            await server.stop(None)

    assert run(transfer).read_bytes() == path.read_bytes()


class MisbehavingServicer(ArtifactServicer):
    """Sends the wrong manifest, skips bytes, or stalls after its first message."""

    def __init__(self, blobs: DirectoryBlobs, how: str) -> None:
        super().__init__(blobs)
        self.how = how

    async def GetManifest(
        self, request: cpb.ManifestRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ArtifactManifest:
        reply = await super().GetManifest(request, context)
        if self.how == "wrong manifest":
            reply.sha256 = UNKNOWN_SHA
        return reply

    async def Fetch(
        self, request: cpb.FetchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.ArtifactChunk]:
        async for message in super().Fetch(request, context):
            if self.how == "skip":
                message.offset += 1
            yield message
            if self.how == "stall":
                await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("wrong manifest", f"sent the manifest of {UNKNOWN_SHA}"),
        ("skip", "sent bytes at offset 1, expected 0"),
        ("stall", f"nothing received for 0.3 s at byte {MESSAGE_BYTES}"),
    ],
)
def test_a_misbehaving_server_is_a_failed_source(tmp_path: Path, how: str, expected: str) -> None:
    blobs = DirectoryBlobs([file_of(tmp_path, 2 * MESSAGE_BYTES)], chunk_size=SMALL_CHUNK)
    (sha256, (_, manifest)), *_ = blobs.files.items()

    async def attempt() -> str:
        server, address = await start_server(MisbehavingServicer(blobs, how))
        try:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                source = GrpcChunkSource(channel, "cp", idle_timeout_s=0.3)
                loader = Downloader(ArtifactStore(tmp_path / "a"), retry_rounds=1)
                if how == "wrong manifest":
                    work = loader.fetch_sha256(sha256, [source])
                else:
                    work = loader.fetch(manifest, [source])
                with pytest.raises(ArtifactError) as error:
                    await work
                return str(error.value)
        finally:
            await server.stop(None)

    assert expected in run(attempt)


async def call_rpc(
    address: str,
    request: cpb.ManifestRequest | cpb.FetchRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[cpb.ArtifactChunk] | cpb.ArtifactManifest:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cpb_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]
        if isinstance(request, cpb.ManifestRequest):
            reply: cpb.ArtifactManifest = await stub.GetManifest(request, metadata=metadata)
            return reply
        return [message async for message in stub.Fetch(request, metadata=metadata)]


def rpc_error(
    servicer: ArtifactServicer,
    request: cpb.ManifestRequest | cpb.FetchRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.aio.AioRpcError:
    async def attempt() -> grpc.aio.AioRpcError:
        server, address = await start_server(servicer)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call_rpc(address, request, metadata)
            return error.value
        finally:
            await server.stop(None)

    return run(attempt)


@pytest.fixture
def small_blobs(tmp_path: Path) -> DirectoryBlobs:
    return DirectoryBlobs([file_of(tmp_path, 1000)], chunk_size=256)


@pytest.mark.parametrize("sha", ["", "nothex" * 10 + "abcd", "A" * 64, "../" * 22, "a" * 65])
def test_malformed_sha_is_invalid_argument(small_blobs: DirectoryBlobs, sha: str) -> None:
    for request in (cpb.ManifestRequest(sha256=sha), cpb.FetchRequest(sha256=sha)):
        error = rpc_error(ArtifactServicer(small_blobs), request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "64 lowercase hex" in (error.details() or "")


def test_unknown_sha_is_not_found(small_blobs: DirectoryBlobs) -> None:
    for request in (cpb.ManifestRequest(sha256=UNKNOWN_SHA), cpb.FetchRequest(sha256=UNKNOWN_SHA)):
        error = rpc_error(ArtifactServicer(small_blobs), request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert UNKNOWN_SHA in (error.details() or "")


@pytest.mark.parametrize(("offset", "length"), [(1001, 0), (2**40, 0), (999, 2), (0, 1001)])
def test_a_range_past_the_end_is_out_of_range(
    small_blobs: DirectoryBlobs, offset: int, length: int
) -> None:
    (sha256, _), *_ = small_blobs.files.items()
    request = cpb.FetchRequest(sha256=sha256, offset=offset, length=length)
    error = rpc_error(ArtifactServicer(small_blobs), request)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "past the end" in (error.details() or "")


def test_ranges_inside_the_blob_are_served_exactly(small_blobs: DirectoryBlobs) -> None:
    (sha256, (path, manifest)), *_ = small_blobs.files.items()
    data = path.read_bytes()

    async def ranges() -> list[list[cpb.ArtifactChunk] | cpb.ArtifactManifest]:
        server, address = await start_server(ArtifactServicer(small_blobs))
        try:
            return [
                await call_rpc(address, cpb.ManifestRequest(sha256=sha256)),
                await call_rpc(address, cpb.FetchRequest(sha256=sha256, offset=10, length=20)),
                await call_rpc(address, cpb.FetchRequest(sha256=sha256, offset=900)),
                await call_rpc(address, cpb.FetchRequest(sha256=sha256, offset=1000)),
            ]
        finally:
            await server.stop(None)

    got_manifest, middle, tail, at_end = run(ranges)
    assert isinstance(got_manifest, cpb.ArtifactManifest)
    assert list(got_manifest.chunk_sha256) == list(manifest.chunk_sha256)
    assert isinstance(middle, list)
    assert [(m.offset, m.data) for m in middle] == [(10, data[10:30])]
    assert isinstance(tail, list)
    assert b"".join(m.data for m in tail) == data[900:]
    assert at_end == []


def test_the_authorize_hook_can_refuse(small_blobs: DirectoryBlobs) -> None:
    (sha256, _), *_ = small_blobs.files.items()
    seen: list[str] = []

    async def only_with_token(context: grpc.aio.ServicerContext, sha: str) -> None:
        seen.append(sha)
        if ("x-token", "yes") not in tuple(context.invocation_metadata() or ()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not one of this site's agents")

    authorize: Authorize = only_with_token
    error = rpc_error(ArtifactServicer(small_blobs, authorize), cpb.FetchRequest(sha256=sha256))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert seen == [sha256]

    async def allowed() -> list[cpb.ArtifactChunk] | cpb.ArtifactManifest:
        server, address = await start_server(ArtifactServicer(small_blobs, authorize))
        try:
            return await call_rpc(
                address, cpb.ManifestRequest(sha256=sha256), metadata=(("x-token", "yes"),)
            )
        finally:
            await server.stop(None)

    reply = run(allowed)
    assert isinstance(reply, cpb.ArtifactManifest)
    assert reply.sha256 == sha256
