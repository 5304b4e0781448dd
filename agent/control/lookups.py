"""What an agent asks the control plane besides its stream: artifact peers, site agents."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from agent.artifacts.download import ChunkSource
from agent.artifacts.grpc_source import GrpcChunkSource
from agent.control.client import (
    ARTIFACT_CHANNEL_OPTIONS,
    MAX_PEERS,
    RPC_TIMEOUT_S,
    ControlLink,
    describe_failure,
    is_address,
)
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)


class ControlLookups:
    """Unary calls on the control plane's mutual-TLS port, each on a channel of its own."""

    def __init__(self, link: ControlLink) -> None:
        self._link = link

    @contextlib.asynccontextmanager
    async def artifact_sources(self, sha256: str) -> AsyncIterator[list[ChunkSource]]:
        """Where to fetch an artifact: the site's peers that hold it, then the control plane.
        Empty until the agent has reached the control plane once in this process."""
        opened = self._link.control_channel(ARTIFACT_CHANNEL_OPTIONS)
        if opened is None:
            yield []
            return
        control, metadata = opened
        peer_channels: list[tuple[str, grpc.aio.Channel]] = []
        try:
            for address in await _find_peers(control, metadata, sha256):
                if address != self._link.peer_address:
                    channel = grpc.aio.insecure_channel(address, options=ARTIFACT_CHANNEL_OPTIONS)
                    peer_channels.append((address, channel))
            sources: list[ChunkSource] = [
                GrpcChunkSource(channel, f"peer {address}") for address, channel in peer_channels
            ]
            sources.append(GrpcChunkSource(control, "control plane", metadata=metadata))
            yield sources
        finally:
            for _, channel in peer_channels:
                await channel.close()
            await control.close()

    async def find_site_agent(self, agent: str) -> tuple[str, str] | None:
        """(id, inference address) of the agent of this site the control plane knows by `agent`
        (an id or a name); None when it knows none; ConnectionError when it cannot be asked."""
        opened = self._link.control_channel()
        if opened is None:
            raise ConnectionError("the control plane has not been reached yet")
        channel, metadata = opened
        try:
            stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.FindSiteAgent(
                cpb.FindSiteAgentRequest(agent=agent), timeout=RPC_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise ConnectionError(describe_failure(exc)) from exc
        finally:
            await channel.close()
        address = response.inference_address
        return (response.agent_id, address) if is_address(address) else None


async def _find_peers(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], sha256: str
) -> list[str]:
    stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        response = await stub.FindPeers(
            cpb.FindPeersRequest(sha256=sha256), timeout=RPC_TIMEOUT_S, metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        log.info("no peers for %s: %s", sha256[:12], describe_failure(exc))
        return []
    return [a for a in response.addresses if is_address(a)][:MAX_PEERS]
