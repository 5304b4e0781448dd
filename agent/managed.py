"""A managed agent: applies its persisted desired state, enrolls, follows the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc

from agent.alert_event_buffer import AlertEventBuffer
from agent.artifacts.blobs import StoreBlobs
from agent.artifacts.download import Downloader
from agent.artifacts.store import ArtifactStore
from agent.control.client import ControlLink, ControlLinkSettings
from agent.control.identity import IdentityStore
from agent.control.lookups import ControlLookups
from agent.control.site_agents import SiteAgentDirectory
from agent.control.state_store import DesiredStateError, DesiredStateStore
from agent.federated.participation import FederatedParticipation
from agent.inference_keys import InferenceKeyState
from agent.inventory import build_hello, capabilities
from agent.model_pool import ModelPool
from agent.model_rollout import ModelRollout
from agent.policy_state import PolicyState
from agent.server import BoundPorts
from agent.settings import ModelSettings
from agent.telemetry.agent_metrics import AgentMetrics
from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.uplink import SequencedUplink
from agent.usage_buffer import UsageBuffer, month_start
from agent.usage_recorder import AlertEventRecorder, UsageRecorder
from common.artifact_servicer import ArtifactServicer, add_artifact_service
from common.control import AgentStatus, DesiredState, Hello
from common.policy.alert_notify import AlertEvent
from common.policy.budgets import SettledUsage
from common.policy.forwarding import ServingAgent
from common.policy.ledger_record import LedgerRecord
from common.policy.routing import Caller, PolicyEngine

log = logging.getLogger(__name__)

USAGE_BATCH_RECORDS = 200
USAGE_BATCH_BYTES = 1024 * 1024  # of stored rows: a batch stays well inside a 4 MiB message


class ManagedAgent:
    """The AgentServer companion of `outpost-agent run`."""

    def __init__(
        self,
        state_dir: Path,
        link: ControlLinkSettings,
        model_defaults: ModelSettings,
        *,
        telemetry_interval_s: float = 5.0,
        peer_address: str = "",
        inference_address: str = "",
        download_rate_limit: int = 0,
        datasets_dir: Path | None = None,
    ) -> None:
        self._identities = IdentityStore(state_dir)
        self._desired_store = DesiredStateStore(state_dir)
        self.policy = PolicyState(state_dir)
        self.inference_keys = InferenceKeyState(state_dir)  # who may call the OpenAI endpoints
        self._link_settings = link
        self._defaults = model_defaults
        self._pool: ModelPool | None = None
        self._metrics: AgentMetrics | None = None
        self._apply_lock = asyncio.Lock()
        self._capabilities = capabilities()
        self._telemetry_interval_s = telemetry_interval_s
        self._desired: DesiredState | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.telemetry = TelemetryBuffer(state_dir)
        self._uplink = SequencedUplink(self.telemetry)
        self.usage = UsageBuffer(state_dir)  # the ledger rows the control plane lacks
        self._usage_uplink = SequencedUplink(
            self.usage, batch_items=USAGE_BATCH_RECORDS, max_bytes=USAGE_BATCH_BYTES
        )
        self._usage_recorder = UsageRecorder(self.usage, self._usage_uplink.ready.set)
        self.alert_events = AlertEventBuffer(state_dir)  # firings and clearings, until acked
        self._alert_uplink = SequencedUplink(self.alert_events, batch_items=USAGE_BATCH_RECORDS)
        self._alert_recorder = AlertEventRecorder(
            self.alert_events, self._alert_uplink.ready.set, what="alert events"
        )
        self.link = ControlLink(
            link,
            self._identities,
            self._desired_store,
            self.apply,
            self._hello,
            telemetry=self._uplink,
            usage=self._usage_uplink,
            alert_events=self._alert_uplink,
        )
        self.link.peer_address = peer_address
        self._inference_address = inference_address
        self.lookups = ControlLookups(self.link)
        self._site_agents = SiteAgentDirectory(self.lookups.find_site_agent)
        self.artifacts = ArtifactStore(state_dir / "artifacts")
        self.federated = FederatedParticipation(
            state_dir,
            datasets_dir or state_dir / "datasets",
            self.artifacts.blob_path,
            self._identities,
            insecure=link.insecure,
        )
        self.rollout = ModelRollout(
            state_dir,
            self.artifacts,
            Downloader(self.artifacts, rate_limit_bytes_per_s=download_rate_limit),
            self.lookups.artifact_sources,
            changed=self._artifact_ready,
            report=self._publish_status,
        )

    def current_engine(self) -> PolicyEngine:
        """The routing policy in force (the last one received, kept across restarts): what
        the agent's endpoints classify and route each request with. Never blocks."""
        return self.policy.current_engine()

    def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller an `Authorization: Bearer <inference key>` value names, from the keys of
        the last desired state (kept across restarts); None for anything else."""
        return self.inference_keys.authenticate(authorization)

    def record_usage(self, record: LedgerRecord) -> None:
        """The policy gate's ledger sink: keeps the row on disk (written in the background,
        never blocking) until the control plane acknowledges it; rows made while the control
        plane is unreachable are sent when it is back."""
        self._usage_recorder.record(record)

    def record_alert_event(self, event: AlertEvent) -> None:
        """RequestAlerts' `record`: keeps each firing and clearing on disk (written in the
        background, never blocking) until the control plane acknowledges it."""
        self._alert_recorder.record(event)

    def settled_usage(self) -> list[SettledUsage]:
        """The requests settled this UTC month, from the usage buffer (acked or not): what a
        restarted agent's budgets count again."""
        return self.usage.settled_since(month_start(datetime.now(UTC)))

    async def find_site_agents(self, agent: str) -> tuple[ServingAgent, ...]:
        """Where the site's agent of that id or name takes forwarded requests (asked of the
        control plane, cached; the last answer while it is unreachable)."""
        return await self._site_agents.find(agent)

    def register_services(self, server: grpc.aio.Server) -> None:
        """Serves this agent's verified artifacts to its site's peers, when configured to."""
        if self.link.peer_address:
            add_artifact_service(server, ArtifactServicer(StoreBlobs(self.artifacts)))

    async def prepare(self, pool: ModelPool, metrics: AgentMetrics, ports: BoundPorts) -> None:
        """Serves what the last desired state asked for before the control plane answers."""
        self.link.peer_address = _bound(self.link.peer_address, ports.grpc)
        self._inference_address = _bound(self._inference_address, ports.http)
        self._pool = pool
        self._metrics = metrics
        await asyncio.to_thread(self.policy.load)  # enforced before the control plane answers
        await asyncio.to_thread(self.inference_keys.load)  # callers known while it is down
        try:
            stored = await asyncio.to_thread(self._desired_store.load)
        except DesiredStateError as exc:  # the control plane sends the state again
            log.error("ignoring the stored desired state: %s", exc)
            stored = None
        if stored is not None:
            log.info("applying the stored desired state (generation %d)", stored.generation)
            self.link.publish_status(await self.apply(stored))

    async def run(self, stop: asyncio.Event) -> None:
        sampler = asyncio.create_task(self._sample(stop))
        recorders = [
            asyncio.create_task(self._usage_recorder.run(stop)),
            asyncio.create_task(self._alert_recorder.run(stop)),
        ]
        federated_watch = asyncio.create_task(self.federated.watch(stop))
        try:
            enrolled = await asyncio.to_thread(self._identities.load) is not None
            if not self._link_settings.control_plane and not enrolled:
                log.warning(
                    "no control plane configured and not enrolled: serving the last desired "
                    "state (from offline bundles) on its own"
                )
                await stop.wait()
                return
            identity = await self.link.ensure_identity(stop)
            if identity is not None:
                await self.link.run(identity, stop)
        finally:
            sampler.cancel()
            federated_watch.cancel()
            await self.federated.close()  # SuperNodes stop with the agent
            for recorder in recorders:
                if not stop.is_set():  # failed: the recorders stop too (and write their queue)
                    recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder
            self.rollout.close()
            self.telemetry.close()
            self.usage.close()
            self.alert_events.close()

    async def _sample(self, stop: asyncio.Event) -> None:
        """Collects telemetry into the disk buffer, connected or not (it is replayed later)."""
        assert self._metrics is not None, "prepare() runs first"
        while not stop.is_set():
            sample = await asyncio.to_thread(self._metrics.sample)
            await asyncio.to_thread(self.telemetry.append, sample)
            self._uplink.ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._telemetry_interval_s)

    async def apply(self, desired: DesiredState) -> AgentStatus:
        """Reconciles the pool to `desired`: path models as given; registry models once their
        verified file is here, the previous version serving meanwhile and after a failure."""
        pool = self._pool
        assert pool is not None, "prepare() runs first"
        async with self._apply_lock:
            self._desired = desired
            await asyncio.to_thread(self.policy.apply, desired.policy)
            await asyncio.to_thread(self.inference_keys.apply, desired.inference_keys)
            for _ in range(2):  # a second pass falls back to the previous version
                await pool.apply(self.rollout.plan(desired, self._defaults))
                if not self.rollout.settle(desired, pool):
                    break
            await asyncio.to_thread(self.rollout.retain, desired)
            await self.federated.apply(desired.federated_tasks)
            return self._status(desired)

    def _status(self, desired: DesiredState) -> AgentStatus:
        assert self._pool is not None
        registry = {m.alias for m in desired.models if m.sha256}
        items = [i for i in self._pool.item_statuses() if i.name not in registry]
        items += self.rollout.statuses(desired, self._pool)
        policy = self.policy.status_item()
        if policy is not None:
            items.append(policy)
        keys = self.inference_keys.status_item()
        if keys is not None:
            items.append(keys)
        items += self.federated.statuses()
        return AgentStatus(observed_generation=desired.generation, items=tuple(items))

    def _publish_status(self) -> None:
        if self._desired is not None and self._pool is not None:
            self.link.publish_status(self._status(self._desired))

    def _artifact_ready(self) -> None:
        """A download finished: apply the desired state again to load it."""
        task = asyncio.get_running_loop().create_task(self._reapply())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reapply(self) -> None:
        if self._desired is not None:
            self.link.publish_status(await self.apply(self._desired))

    def _hello(self, agent_id: str, observed_generation: int) -> Hello:
        paths = self._pool.model_paths() if self._pool else []
        hello = build_hello(agent_id, observed_generation, paths, self._capabilities)
        return replace(
            hello, peer_address=self.link.peer_address, inference_address=self._inference_address
        )


def _bound(address: str, port_bound: int) -> str:
    """HOST:0 made HOST:`port_bound` (the port the server bound); any other value as is."""
    host, _, port = address.rpartition(":")
    return f"{host}:{port_bound}" if port.isdigit() and int(port) == 0 else address
