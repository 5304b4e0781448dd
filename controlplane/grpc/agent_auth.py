"""Who is calling on the mutual-TLS port: the agent of the client certificate, if current."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from common.errors import NotFound
from controlplane.pki import CertificateAuthority, CertificateError
from controlplane.services import ControlPlaneServices
from controlplane.settings import ControlPlaneSettings

log = logging.getLogger(__name__)

INSECURE_AGENT_HEADER = "x-outpost-agent-id"


@dataclass(frozen=True)
class Caller:
    agent_id: str
    serial: str | None  # None in the demo's plain-text mode


class AgentAuthenticator:
    """Checks the caller's client certificate (or, in plain-text demo mode, its id header)
    against the fleet; denials are audited and abort the call."""

    def __init__(
        self,
        services: ControlPlaneServices,
        ca: CertificateAuthority,
        settings: ControlPlaneSettings,
    ) -> None:
        self._services = services
        self._ca = ca
        self._settings = settings

    async def authenticate(self, context: grpc.aio.ServicerContext, action: str) -> Caller:
        """The caller; aborts with UNAUTHENTICATED or PERMISSION_DENIED when it is not current."""
        if self._settings.insecure:
            metadata = dict(context.invocation_metadata() or ())
            caller = Caller(str(metadata.get(INSECURE_AGENT_HEADER, "")), None)
        else:
            pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
            try:
                identity = self._ca.verify_agent_certificate(pem)
            except CertificateError as exc:
                await self.deny(context, action, str(exc))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            caller = Caller(identity.agent_id, identity.serial)
        current = await asyncio.to_thread(self._is_current, caller)
        if not current:
            reason = f"agent {caller.agent_id or '(none)'} is unknown or revoked"
            await self.deny(context, action, reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return caller

    def _is_current(self, caller: Caller) -> bool:
        fleet = self._services.fleet
        if caller.serial is not None:
            return fleet.certificate_is_current(caller.agent_id, caller.serial)
        try:  # plain-text demo mode: the agent id header is all there is
            return fleet.get(caller.agent_id).revoked_at is None
        except NotFound:
            return False

    async def deny(self, context: grpc.aio.ServicerContext, action: str, reason: str) -> None:
        log.warning("refused %s from %s: %s", action, context.peer(), reason)
        await asyncio.to_thread(
            self._services.audit.record_now,
            actor=f"peer:{context.peer()}",
            action=action,
            target="control-stream",
            outcome="denied",
            detail={"reason": reason},
        )
