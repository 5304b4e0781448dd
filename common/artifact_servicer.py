"""ArtifactService server side: manifests and byte ranges of verified blobs, for any holder."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO, Protocol

import grpc

from common.artifacts import MESSAGE_BYTES, ArtifactManifest, check_sha256
from common.errors import InvalidArgument
from common.proto_convert import manifest_to_pb
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

# Aborts the RPC (context.abort) to refuse the caller; returns to let it through.
Authorize = Callable[[grpc.aio.ServicerContext, str], Awaitable[None]]


class BlobSource(Protocol):
    """Verified blobs this process can hand out (the registry, an agent's store)."""

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        """None: not held here."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """The verified blob, opened for reading."""
        ...


class ArtifactServicer(cpb_grpc.ArtifactServiceServicer):
    """Serves blobs in messages of MESSAGE_BYTES; file and lookup work runs off the loop."""

    def __init__(self, blobs: BlobSource, authorize: Authorize | None = None) -> None:
        self._blobs = blobs
        self._authorize = authorize

    async def GetManifest(
        self, request: cpb.ManifestRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ArtifactManifest:
        manifest = await self._admit(request.sha256, context)
        return manifest_to_pb(manifest)

    async def Fetch(
        self, request: cpb.FetchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.ArtifactChunk]:
        manifest = await self._admit(request.sha256, context)
        size = manifest.size_bytes
        if request.offset > size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is past the end of {manifest.sha256} ({size} bytes)",
            )
        end = size if request.length == 0 else request.offset + request.length
        if end > size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"bytes {request.offset}..{end} reach past the end of {manifest.sha256} "
                f"({size} bytes)",
            )
        try:
            handle = await asyncio.to_thread(self._blobs.open, manifest.sha256)
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{manifest.sha256} is not held here")
        except OSError as exc:
            log.warning("cannot open blob %s: %s", manifest.sha256, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read {manifest.sha256}")
        try:
            offset = request.offset
            await asyncio.to_thread(handle.seek, offset)
            while offset < end:
                data = await asyncio.to_thread(handle.read, min(MESSAGE_BYTES, end - offset))
                if not data:
                    log.error(
                        "blob %s is shorter than its manifest (%d bytes)", manifest.sha256, size
                    )
                    await context.abort(
                        grpc.StatusCode.DATA_LOSS,
                        f"{manifest.sha256} ends at byte {offset}, before its declared {size}",
                    )
                yield cpb.ArtifactChunk(offset=offset, data=data)
                offset += len(data)
        finally:
            await asyncio.to_thread(handle.close)

    async def _admit(self, sha256: str, context: grpc.aio.ServicerContext) -> ArtifactManifest:
        """The manifest of a well-formed, authorized, held sha256; aborts the RPC otherwise."""
        try:
            check_sha256(sha256)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._authorize is not None:
            await self._authorize(context, sha256)
        manifest = await asyncio.to_thread(self._blobs.manifest, sha256)
        if manifest is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"artifact {sha256} is not held here")
        assert manifest is not None  # context.abort raises
        return manifest


def add_artifact_service(server: grpc.aio.Server, servicer: ArtifactServicer) -> None:
    cpb_grpc.add_ArtifactServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
