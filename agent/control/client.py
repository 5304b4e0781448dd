"""The agent's link to the control plane: enrollment, then one reconnecting control stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from agent.artifacts.grpc_source import CHANNEL_OPTIONS as ARTIFACT_OPTIONS
from agent.bundle_import import PINNED_KEY_FILE, pin_public_key
from agent.control.backoff import Backoff
from agent.control.identity import (
    IdentityStore,
    StoredIdentity,
    build_csr,
    certificate_expiry,
    fetch_pinned_ca,
    generate_key,
)
from agent.control.state_store import DesiredStateStore
from agent.telemetry.buffer import telemetry_batch
from agent.telemetry.sequenced_buffer import Pending
from agent.telemetry.uplink import SequencedUplink
from common.alert_batch import AlertEventBatch, SequencedAlertEvent
from common.control import AgentStatus, DesiredState, Hello
from common.policy.alert_notify import AlertEvent
from common.policy.ledger_record import LedgerRecord
from common.proto_convert import (
    alert_event_batch_to_pb,
    desired_state_from_pb,
    enrollment_from_pb,
    hello_to_pb,
    status_to_pb,
    telemetry_batch_to_pb,
    usage_batch_to_pb,
)
from common.telemetry import Sample
from common.usage_batch import SequencedRecord, UsageBatch
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

INSECURE_AGENT_HEADER = "x-outpost-agent-id"
RPC_TIMEOUT_S = 30.0
MAX_PEERS = 8
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Pings every 10 s with a 10 s timeout: a dead stream is noticed within 30 s.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # grpc-core times out an unanswered ping with this (default 60 s), not keepalive_timeout.
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnection is ours (with our backoff); one attempt per channel.
    ("grpc.enable_retries", 0),
]
# Artifact transfers: a manifest of a very large model is bigger than a control message.
ARTIFACT_CHANNEL_OPTIONS = [
    *(option for option in CHANNEL_OPTIONS if "message_length" not in option[0]),
    *ARTIFACT_OPTIONS,
]
# Renew when less than this share of the certificate's lifetime is left.
RENEW_AT_REMAINING = 1 / 3
# Never end a session for renewal sooner than this after it began (no renewal loops).
MIN_RENEWAL_INTERVAL_S = 60.0


class EnrollmentRefused(Exception):
    """The control plane refused to enroll this agent; retrying will not help."""


@dataclass(frozen=True)
class ControlLinkSettings:
    control_plane: str  # host:port of the control plane's public gRPC port
    join_token: str
    ca_fingerprint: str
    insecure: bool = False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"control plane address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def renewal_time(certificate_pem: bytes) -> datetime:
    """When less than RENEW_AT_REMAINING of the certificate's lifetime is left."""
    not_before, not_after = certificate_expiry(certificate_pem)
    return not_after - (not_after - not_before) * RENEW_AT_REMAINING


class ControlLink:
    """Keeps the agent connected and its models in line with the control plane's wishes.

    `apply` reconciles the agent to a desired state and returns the resulting status; `hello`
    describes the agent for a given observed generation.
    """

    def __init__(
        self,
        settings: ControlLinkSettings,
        identities: IdentityStore,
        desired_states: DesiredStateStore,
        apply: Callable[[DesiredState], Awaitable[AgentStatus]],
        hello: Callable[[str, int], Hello],
        backoff: Backoff | None = None,
        telemetry: SequencedUplink[Sample] | None = None,
        usage: SequencedUplink[LedgerRecord] | None = None,
        alert_events: SequencedUplink[AlertEvent] | None = None,
    ) -> None:
        self._settings = settings
        self._identities = identities
        self._desired_states = desired_states
        self._apply = apply
        self._hello = hello
        self._backoff = backoff or Backoff()
        self._telemetry = telemetry
        self._usage = usage
        self._alert_events = alert_events
        self.observed_generation = 0
        self.connected = asyncio.Event()
        self.peer_address = ""  # this agent's own ArtifactService for peers, if it serves one
        self._status: AgentStatus | None = None
        self._status_changed = asyncio.Event()
        self._session_target: tuple[StoredIdentity, int] | None = None  # identity, mTLS port

    def publish_status(self, status: AgentStatus) -> None:
        """Sends `status` to the control plane now, or as soon as the stream is up (only the
        latest status is kept). Event loop thread only."""
        self._status = status
        self.observed_generation = status.observed_generation
        self._status_changed.set()

    def control_channel(
        self, options: list[tuple[str, int]] = CHANNEL_OPTIONS
    ) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]] | None:
        """A new channel to the control plane's mutual-TLS port and the metadata its calls
        carry; None until the agent has reached the control plane once in this process. The
        caller closes the channel."""
        if self._session_target is None:
            return None
        identity, port = self._session_target
        return self._channel(identity, port, options), self._metadata(identity)

    # -- enrollment -----------------------------------------------------------------------

    async def ensure_identity(self, stop: asyncio.Event) -> StoredIdentity | None:
        """The stored identity, enrolling first when there is none (retrying while the control
        plane is unreachable). None when stopped before enrollment succeeded."""
        identity = await asyncio.to_thread(self._identities.load)
        if identity is not None:
            return identity
        settings = self._settings
        if not settings.join_token or (not settings.ca_fingerprint and not settings.insecure):
            raise EnrollmentRefused(
                "this agent is not enrolled yet: give --control-plane, --join-token and "
                "--ca-fingerprint"
            )
        while not stop.is_set():
            try:
                enrolled, bundle_key = await self._enroll()
            except (OSError, grpc.aio.AioRpcError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise EnrollmentRefused(f"enrollment refused: {exc.details()}") from exc
                delay = self._backoff.next_delay()
                log.warning(
                    "cannot enroll yet (%s); retrying in %.1f s", describe_failure(exc), delay
                )
                await _wait(stop, delay)
                continue
            self._backoff.reset()
            await asyncio.to_thread(self._identities.save, enrolled)
            if bundle_key and not (self._identities.state_dir / PINNED_KEY_FILE).exists():
                # Offline bundles from this control plane verify against it from now on.
                await asyncio.to_thread(pin_public_key, self._identities.state_dir, bundle_key)
            log.info("enrolled as agent %s", enrolled.agent_id)
            return enrolled
        return None

    async def _enroll(self) -> tuple[StoredIdentity, bytes]:
        """The new identity, and the control plane's bundle-signing key (may be empty)."""
        settings = self._settings
        host, port = split_address(settings.control_plane)
        if settings.insecure:
            ca_pem = b""
            channel = grpc.aio.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        else:
            ca_pem = await asyncio.to_thread(fetch_pinned_ca, host, port, settings.ca_fingerprint)
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
            channel = grpc.aio.secure_channel(
                f"{host}:{port}", credentials, options=CHANNEL_OPTIONS
            )
        agent_id = _new_agent_id()
        key_pem = await asyncio.to_thread(generate_key)
        csr_pem = await asyncio.to_thread(build_csr, key_pem, agent_id)
        async with channel:
            stub = cpb_grpc.EnrollmentServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.Enroll(
                cpb.EnrollRequest(
                    join_token=settings.join_token, csr_pem=csr_pem, name=socket.gethostname()
                ),
                timeout=RPC_TIMEOUT_S,
            )
        enrollment = enrollment_from_pb(response)
        if enrollment.agent_id != agent_id:
            raise EnrollmentRefused("the control plane answered for another agent id")
        identity = StoredIdentity(
            agent_id=agent_id,
            control_plane=settings.control_plane,
            mtls_port=enrollment.mtls_port,
            key_pem=key_pem,
            certificate_pem=enrollment.certificate_pem,
            ca_certificate_pem=enrollment.ca_certificate_pem or ca_pem,
        )
        return identity, enrollment.bundle_public_key_pem

    # -- the control stream ---------------------------------------------------------------

    async def run(self, identity: StoredIdentity, stop: asyncio.Event) -> None:
        """Connects and reconnects until `stop` is set."""
        while not stop.is_set():
            try:
                identity = await self._session(identity, stop)
            except (OSError, grpc.aio.AioRpcError) as exc:
                self.connected.clear()
                delay = self._backoff.next_delay()
                log.warning(
                    "control stream down (%s); reconnecting in %.1f s", describe_failure(exc), delay
                )
                await _wait(stop, delay)

    def _credentials(self, identity: StoredIdentity) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=identity.ca_certificate_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.certificate_pem,
        )

    def _channel(
        self,
        identity: StoredIdentity,
        port: int,
        options: list[tuple[str, int]] = CHANNEL_OPTIONS,
    ) -> grpc.aio.Channel:
        host, _ = split_address(identity.control_plane)
        target = f"{host}:{port}"
        if self._settings.insecure:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials(identity), options=options)

    async def _discover(self, identity: StoredIdentity) -> int:
        host, port = split_address(identity.control_plane)
        if self._settings.insecure:
            channel = grpc.aio.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=identity.ca_certificate_pem
            )
            channel = grpc.aio.secure_channel(
                f"{host}:{port}", credentials, options=CHANNEL_OPTIONS
            )
        async with channel:
            stub = cpb_grpc.EnrollmentServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.Discover(cpb.DiscoverRequest(), timeout=RPC_TIMEOUT_S)
        return int(response.mtls_port)

    async def _renew(self, identity: StoredIdentity, port: int) -> StoredIdentity:
        key_pem = await asyncio.to_thread(generate_key)
        csr_pem = await asyncio.to_thread(build_csr, key_pem, identity.agent_id)
        async with self._channel(identity, port) as channel:
            stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.RenewCertificate(
                cpb.RenewRequest(csr_pem=csr_pem),
                timeout=RPC_TIMEOUT_S,
                metadata=self._metadata(identity),
            )
        await asyncio.to_thread(
            self._identities.replace_certificate, key_pem, response.certificate_pem
        )
        log.info("renewed this agent's certificate")
        renewed = await asyncio.to_thread(self._identities.load)
        assert renewed is not None
        return renewed

    def _metadata(self, identity: StoredIdentity) -> tuple[tuple[str, str], ...]:
        return ((INSECURE_AGENT_HEADER, identity.agent_id),) if self._settings.insecure else ()

    async def _session(self, identity: StoredIdentity, stop: asyncio.Event) -> StoredIdentity:
        port = await self._discover(identity)
        secure = not self._settings.insecure
        if secure and renewal_time(identity.certificate_pem) <= datetime.now(UTC):
            identity = await self._renew(identity, port)
        # A session outliving the renewal time ends there; the next one renews first.
        renew_in = (
            (renewal_time(identity.certificate_pem) - datetime.now(UTC)).total_seconds()
            if secure
            else None
        )
        self._session_target = (identity, port)
        async with self._channel(identity, port) as channel:
            stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Connect(metadata=self._metadata(identity))
            write_lock = asyncio.Lock()  # Status, telemetry, usage, alerts: one task each

            async def send(message: cpb.AgentMessage) -> None:
                async with write_lock:
                    await call.write(message)

            async def send_telemetry(batch: Pending[Sample]) -> None:
                message = telemetry_batch_to_pb(telemetry_batch(batch))
                await send(cpb.AgentMessage(telemetry=message))

            async def send_usage(batch: Pending[LedgerRecord]) -> None:
                records = tuple(SequencedRecord(seq, record) for seq, record in batch.items)
                message = usage_batch_to_pb(UsageBatch(records, batch.dropped))
                await send(cpb.AgentMessage(usage=message))

            async def send_alert_events(batch: Pending[AlertEvent]) -> None:
                events = tuple(SequencedAlertEvent(seq, event) for seq, event in batch.items)
                message = alert_event_batch_to_pb(AlertEventBatch(events, batch.dropped))
                await send(cpb.AgentMessage(alert_events=message))

            hello = self._hello(identity.agent_id, self.observed_generation)
            await send(cpb.AgentMessage(hello=hello_to_pb(hello)))
            background = [
                asyncio.create_task(stop.wait()),
                asyncio.create_task(
                    asyncio.sleep(
                        max(renew_in, MIN_RENEWAL_INTERVAL_S) if renew_in is not None else 1e9
                    )
                ),
            ]
            if self._telemetry is not None:
                background.append(asyncio.create_task(self._telemetry.run(send_telemetry)))
            if self._usage is not None:
                background.append(asyncio.create_task(self._usage.run(send_usage)))
            if self._alert_events is not None:
                background.append(asyncio.create_task(self._alert_events.run(send_alert_events)))
            background.append(asyncio.create_task(self._send_statuses(send)))
            try:
                while True:
                    read = asyncio.create_task(call.read())
                    done, _ = await asyncio.wait(
                        {read, *background}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if read not in done:  # stopping, renewal due, or the sender failed
                        read.cancel()
                        call.cancel()
                        for task in done:
                            task.result()  # a failed sender ends the session with its error
                        return identity
                    message = read.result()
                    if message is grpc.aio.EOF:  # an error status would have raised instead
                        raise ConnectionError("the control plane ended the stream")
                    self.connected.set()
                    self._backoff.reset()
                    if message.HasField("telemetry_ack"):
                        if self._telemetry is not None:
                            await self._telemetry.acknowledge(message.telemetry_ack.acked_seq)
                        continue
                    if message.HasField("usage_ack"):
                        if self._usage is not None:
                            await self._usage.acknowledge(message.usage_ack.acked_seq)
                        continue
                    if message.HasField("alert_event_ack"):
                        if self._alert_events is not None:
                            acked = message.alert_event_ack.acked_seq
                            await self._alert_events.acknowledge(acked)
                        continue
                    await self._handle(desired_state_from_pb(message.desired_state))
            finally:
                for task in background:
                    task.cancel()

    async def _handle(self, desired: DesiredState) -> None:
        log.info("desired state generation %d received", desired.generation)
        await asyncio.to_thread(self._desired_states.save, desired)
        self.publish_status(await self._apply(desired))

    async def _send_statuses(self, send: Callable[[cpb.AgentMessage], Awaitable[None]]) -> None:
        """Sends the latest published status whenever it changes (and once per session)."""
        if self._status is not None:
            self._status_changed.set()
        while True:
            await self._status_changed.wait()
            self._status_changed.clear()
            if self._status is not None:
                await send(cpb.AgentMessage(status=status_to_pb(self._status)))


def is_address(text: str) -> bool:
    try:
        split_address(text)
    except ValueError:
        return False
    return len(text) <= 255 and text.isprintable()


def _new_agent_id() -> str:
    return str(uuid.uuid4())


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
