"""The control plane's ArtifactService: registry blobs (models and their LoRA adapters), each only
for agents assigned it."""

from __future__ import annotations

import asyncio

import grpc

from common.artifact_servicer import ArtifactServicer
from controlplane.grpc.agent_auth import AgentAuthenticator
from controlplane.services import ControlPlaneServices


def registry_artifacts(
    services: ControlPlaneServices, auth: AgentAuthenticator
) -> ArtifactServicer:
    """Serves the model registry's blobs over the mutual-TLS port. An agent may fetch an
    artifact only while its current desired state names it: as a model or as an adapter of
    one."""

    def assigned(agent_id: str, sha256: str) -> bool:
        return any(
            m.sha256 == sha256 or any(a.sha256 == sha256 for a in m.adapters)
            for m in services.desired.current(agent_id).models
        )

    async def authorize(context: grpc.aio.ServicerContext, sha256: str) -> None:
        caller = await auth.authenticate(context, "fetch-artifact")
        if not await asyncio.to_thread(assigned, caller.agent_id, sha256):
            reason = f"artifact {sha256[:12]}… is not assigned to agent {caller.agent_id}"
            await auth.deny(context, "fetch-artifact", reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    return ArtifactServicer(services.models, authorize)
