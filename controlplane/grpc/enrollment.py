"""EnrollmentService: join token + CSR in, client certificate out; and where to connect next."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc

from common.control import Enrollment
from common.errors import InvalidArgument
from common.proto_convert import enrollment_to_pb
from controlplane.fleet import AgentAlreadyExists
from controlplane.pki import CertificateAuthority, CsrError
from controlplane.services import ControlPlaneServices
from controlplane.settings import ControlPlaneSettings
from controlplane.tokens import InvalidJoinToken
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 253
MAX_CSR_BYTES = 16 * 1024
MAX_TOKEN_CHARS = 256


class EnrollmentServicer(cpb_grpc.EnrollmentServiceServicer):
    def __init__(
        self,
        services: ControlPlaneServices,
        ca: CertificateAuthority,
        settings: ControlPlaneSettings,
        mtls_port: int,
        bundle_public_key_pem: bytes = b"",
    ) -> None:
        """`bundle_public_key_pem`: handed to each enrolling agent, which pins it to verify
        offline bundles later."""
        self._services = services
        self._ca = ca
        self._settings = settings
        self._mtls_port = mtls_port
        self._bundle_public_key_pem = bundle_public_key_pem

    async def Discover(
        self, request: cpb.DiscoverRequest, context: grpc.aio.ServicerContext
    ) -> cpb.DiscoverResponse:
        return cpb.DiscoverResponse(mtls_port=self._mtls_port)

    async def Enroll(
        self, request: cpb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> cpb.EnrollResponse:
        peer = context.peer()
        try:
            enrollment = await asyncio.to_thread(self._enroll, request)
        except InvalidJoinToken as exc:
            await self._deny(peer, "enroll", f"join token {exc.reason}")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"join token is {exc.reason}")
        except (CsrError, InvalidArgument) as exc:
            await self._deny(peer, "enroll", str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except AgentAlreadyExists as exc:
            await self._deny(peer, "enroll", str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info("agent %s enrolled (%s)", enrollment.agent_id, request.name)
        return enrollment_to_pb(enrollment)

    def _enroll(self, request: cpb.EnrollRequest) -> Enrollment:
        if not request.join_token or len(request.join_token) > MAX_TOKEN_CHARS:
            raise InvalidJoinToken("malformed")
        if len(request.csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument(f"CSR is larger than {MAX_CSR_BYTES} bytes")
        name = request.name.strip()
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidArgument(f"name must be 1 to {MAX_NAME_CHARS} printable characters")
        agent_id, certificate = self._ca.sign_agent_csr(
            request.csr_pem,
            expected_agent_id=None,
            valid_for=self._settings.agent_certificate_ttl,
        )
        services = self._services
        with services.db.session() as session:
            grant = services.tokens.consume(
                session, request.join_token, agent_id=agent_id, now=datetime.now(UTC)
            )
            services.fleet.enroll(
                session, agent_id=agent_id, name=name, grant=grant, certificate=certificate
            )
        return Enrollment(
            agent_id=agent_id,
            certificate_pem=certificate.pem,
            ca_certificate_pem=self._ca.certificate_pem,
            mtls_port=self._mtls_port,
            bundle_public_key_pem=self._bundle_public_key_pem,
        )

    async def _deny(self, peer: str, action: str, reason: str) -> None:
        log.warning("refused %s from %s: %s", action, peer, reason)
        await asyncio.to_thread(
            self._services.audit.record_now,
            actor=f"peer:{peer}",
            action=action,
            target="enrollment",
            outcome="denied",
            detail={"reason": reason},
        )
