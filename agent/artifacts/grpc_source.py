"""A ChunkSource over gRPC ArtifactService: the control plane or a peer agent of the site."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from agent.artifacts.store import ArtifactError
from common.artifacts import MESSAGE_BYTES, ArtifactManifest
from common.errors import InvalidArgument
from common.proto_convert import manifest_from_pb
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

MANIFEST_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 60.0  # a Fetch stream that sends nothing this long counts as cut
# A manifest of MAX_CHUNKS digests is ~4.5 MB: more than gRPC's default 4 MiB receive limit.
MAX_RECEIVE_MESSAGE_BYTES = 8 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
)


class GrpcChunkSource:
    """Reads manifests and byte ranges from one ArtifactService; every failure (status,
    stall, out-of-order data) is an ArtifactError naming this source's `name`.

    Create the channel with CHANNEL_OPTIONS so the largest manifests fit in one message.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        name: str,
        metadata: tuple[tuple[str, str], ...] = (),
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._stub = cpb_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]
        self._metadata = metadata
        self._idle_timeout_s = idle_timeout_s

    async def manifest(self, sha256: str) -> ArtifactManifest:
        try:
            reply = await self._stub.GetManifest(
                cpb.ManifestRequest(sha256=sha256),
                metadata=self._metadata,
                timeout=MANIFEST_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise ArtifactError(f"{self.name}: {_describe(exc)}") from exc
        try:
            manifest = manifest_from_pb(reply)
        except InvalidArgument as exc:
            raise ArtifactError(f"{self.name} sent an invalid manifest: {exc}") from exc
        if manifest.sha256 != sha256:
            raise ArtifactError(
                f"{self.name} sent the manifest of {manifest.sha256} when asked for {sha256}"
            )
        return manifest

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """The bytes [offset, offset + length), in order, as the messages arrive."""
        call = self._stub.Fetch(
            cpb.FetchRequest(sha256=sha256, offset=offset, length=length),
            metadata=self._metadata,
        )
        expected = offset
        try:
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), self._idle_timeout_s)
                except TimeoutError:
                    raise ArtifactError(
                        f"{self.name}: nothing received for {self._idle_timeout_s:g} s "
                        f"at byte {expected}"
                    ) from None
                except grpc.aio.AioRpcError as exc:
                    raise ArtifactError(f"{self.name}: {_describe(exc)}") from exc
                if message is grpc.aio.EOF:
                    return
                if message.offset != expected:
                    raise ArtifactError(
                        f"{self.name} sent bytes at offset {message.offset}, expected {expected}"
                    )
                if len(message.data) > MESSAGE_BYTES:
                    raise ArtifactError(
                        f"{self.name} sent a message of {len(message.data)} bytes "
                        f"(at most {MESSAGE_BYTES})"
                    )
                expected += len(message.data)
                yield message.data
        finally:
            call.cancel()


def _describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"
