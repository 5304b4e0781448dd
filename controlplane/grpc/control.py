"""ControlService: each agent's long-lived stream (Hello, Status, telemetry, usage, alerts in)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf.message import DecodeError

from common.artifacts import check_sha256
from common.control import DesiredState, Hello
from common.errors import InvalidArgument
from common.proto_convert import (
    alert_event_batch_from_pb,
    desired_state_to_pb,
    hello_from_pb,
    status_from_pb,
    telemetry_batch_from_pb,
    usage_batch_from_pb,
)
from controlplane.grpc.agent_auth import AgentAuthenticator, Caller
from controlplane.grpc.hub import AgentLink, Hub
from controlplane.pki import CertificateAuthority, CsrError
from controlplane.services import ControlPlaneServices
from controlplane.settings import ControlPlaneSettings
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

MALFORMED = "malformed message: not an outpost.v1.AgentMessage"
MAX_PEER_ANSWERS = 8


class ControlServicer(cpb_grpc.ControlServiceServicer):
    def __init__(
        self,
        services: ControlPlaneServices,
        ca: CertificateAuthority,
        hub: Hub,
        settings: ControlPlaneSettings,
    ) -> None:
        self._services = services
        self._ca = ca
        self._hub = hub
        self._settings = settings
        self._auth = AgentAuthenticator(services, ca, settings)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        return await self._auth.authenticate(context, "connect")

    async def _deny(self, context: grpc.aio.ServicerContext, action: str, reason: str) -> None:
        await self._auth.deny(context, action, reason)

    async def FindPeers(
        self, request: cpb.FindPeersRequest, context: grpc.aio.ServicerContext
    ) -> cpb.FindPeersResponse:
        caller = await self._auth.authenticate(context, "find-peers")
        try:
            sha256 = check_sha256(request.sha256)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        addresses = await asyncio.to_thread(
            self._services.fleet.peers_holding, caller.agent_id, sha256
        )
        return cpb.FindPeersResponse(addresses=addresses[:MAX_PEER_ANSWERS])

    async def FindSiteAgent(
        self, request: cpb.FindSiteAgentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.FindSiteAgentResponse:
        caller = await self._auth.authenticate(context, "find-site-agent")
        try:
            found = await asyncio.to_thread(
                self._services.fleet.site_agent, caller.agent_id, request.agent
            )
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no connected agent {request.agent!r} of this site takes forwarded requests",
            )
            return cpb.FindSiteAgentResponse()  # abort raises; this satisfies the type checker
        return cpb.FindSiteAgentResponse(agent_id=found[0], inference_address=found[1])

    async def RenewCertificate(
        self, request: cpb.RenewRequest, context: grpc.aio.ServicerContext
    ) -> cpb.RenewResponse:
        caller = await self._authenticate(context)
        try:
            _, certificate = self._ca.sign_agent_csr(
                request.csr_pem,
                expected_agent_id=caller.agent_id,
                valid_for=self._settings.agent_certificate_ttl,
            )
        except CsrError as exc:
            await self._deny(context, "renew", str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        await asyncio.to_thread(self._services.fleet.add_certificate, caller.agent_id, certificate)
        log.info("renewed the certificate of agent %s", caller.agent_id)
        return cpb.RenewResponse(certificate_pem=certificate.pem)

    async def Connect(
        self,
        request_iterator: object,
        context: grpc.aio.ServicerContext,
    ) -> None:
        caller = await self._authenticate(context)
        agent_id = caller.agent_id
        hello = await self._read_hello(context, agent_id)
        await asyncio.to_thread(self._services.fleet.record_hello, agent_id, hello)
        link = self._hub.register(agent_id)
        reader: asyncio.Task[str] | None = None
        log.info("agent %s connected (observed generation %d)", agent_id, hello.observed_generation)
        try:
            # The current state goes out before anything the agent sends is read, so it is
            # always the first reply of a stream.
            state = await asyncio.to_thread(self._services.desired.current, agent_id)
            await context.write(cpb.ControlMessage(desired_state=desired_state_to_pb(state)))
            reader = asyncio.create_task(self._read_agent(context, link))
            await self._push_desired_states(context, link, reader, state)
        finally:
            if reader is not None:
                reader.cancel()
            self._hub.unregister(link)
            if not self._hub.is_connected(agent_id):
                # Not awaited: a cancelled handler (client gone) may be cancelled again here.
                recorded = asyncio.get_running_loop().run_in_executor(
                    None, self._services.fleet.mark_disconnected, agent_id
                )
                recorded.add_done_callback(_log_failure)
            log.info("agent %s disconnected", agent_id)

    async def _read_hello(self, context: grpc.aio.ServicerContext, agent_id: str) -> Hello:
        try:
            first = await asyncio.wait_for(context.read(), self._settings.hello_timeout_s)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within the deadline")
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        hello = hello_from_pb(first.hello)
        if hello.agent_id != agent_id:
            reason = f"Hello names agent {hello.agent_id!r} but the certificate is {agent_id}"
            await self._deny(context, "connect", reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return hello

    async def _read_agent(self, context: grpc.aio.ServicerContext, link: AgentLink) -> str:
        """Records Status, stores telemetry and usage rows (acking them) until the agent closes
        its side; returns why it stopped."""
        while True:
            try:
                message = await context.read()
            except DecodeError:
                return MALFORMED
            if message is grpc.aio.EOF:
                return "agent closed the stream"
            if message.WhichOneof("body") in ("telemetry", "usage", "alert_events"):
                reply = await self._store(link.agent_id, message)
                async with link.write_lock:
                    await context.write(reply)
                continue
            if not message.HasField("status"):
                return "only Status, telemetry, usage and alert events may follow Hello"
            try:
                status = status_from_pb(message.status)
            except InvalidArgument as exc:
                return str(exc)
            await asyncio.to_thread(self._services.fleet.record_status, link.agent_id, status)

    async def _store(self, agent_id: str, message: cpb.AgentMessage) -> cpb.ControlMessage:
        """Stores a telemetry, usage or alert event batch; the ack that lets the agent forget
        it."""
        if message.HasField("telemetry"):
            batch = telemetry_batch_from_pb(message.telemetry)
            stored = await asyncio.to_thread(self._services.telemetry.ingest, agent_id, batch)
            return cpb.ControlMessage(telemetry_ack=cpb.TelemetryAck(acked_seq=stored.acked_seq))
        if message.HasField("alert_events"):
            events = alert_event_batch_from_pb(message.alert_events)
            stored_events = await asyncio.to_thread(
                self._services.alert_events.record_batch, agent_id, events
            )
            return cpb.ControlMessage(
                alert_event_ack=cpb.AlertEventAck(acked_seq=stored_events.acked_seq)
            )
        usage = usage_batch_from_pb(message.usage)
        recorded = await asyncio.to_thread(self._services.usage.record_batch, agent_id, usage)
        return cpb.ControlMessage(usage_ack=cpb.UsageAck(acked_seq=recorded.acked_seq))

    async def _push_desired_states(
        self,
        context: grpc.aio.ServicerContext,
        link: AgentLink,
        reader: asyncio.Task[str],
        state: DesiredState,
    ) -> None:
        """Writes each state newer than `state` (already sent) until the agent's side ends or
        the hub cuts the link. One event wakes it for all three."""
        reader.add_done_callback(lambda _: link.changed.set())
        sent = state.generation
        while True:
            link.changed.clear()
            if link.latest is not None and link.latest.generation > state.generation:
                state = link.latest
            if state.generation != sent:
                message = cpb.ControlMessage(desired_state=desired_state_to_pb(state))
                async with link.write_lock:
                    await context.write(message)
                sent = state.generation
            if link.cut_reason is not None:
                await context.abort(link.cut_code, link.cut_reason)
            if reader.done():
                reason = reader.result()
                if reason != "agent closed the stream":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
                return
            await link.changed.wait()


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not record a disconnection: %s", future.exception())
