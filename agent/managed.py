"""A managed agent: applies its persisted desired state, enrolls, follows the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path

from agent.control.client import ControlLink, ControlLinkSettings
from agent.control.identity import IdentityStore
from agent.control.state_store import DesiredStateError, DesiredStateStore
from agent.inventory import build_hello, capabilities
from agent.model_pool import ModelPool
from agent.settings import ModelSettings
from agent.telemetry.agent_metrics import AgentMetrics
from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.uplink import TelemetryUplink
from common.control import AgentStatus, DesiredState, Hello

log = logging.getLogger(__name__)


class ManagedAgent:
    """The AgentServer companion of `outpost-agent run`."""

    def __init__(
        self,
        state_dir: Path,
        link: ControlLinkSettings,
        model_defaults: ModelSettings,
        *,
        telemetry_interval_s: float = 5.0,
    ) -> None:
        self._identities = IdentityStore(state_dir)
        self._desired = DesiredStateStore(state_dir)
        self._defaults = model_defaults
        self._pool: ModelPool | None = None
        self._metrics: AgentMetrics | None = None
        self._apply_lock = asyncio.Lock()
        self._capabilities = capabilities()
        self._telemetry_interval_s = telemetry_interval_s
        self.telemetry = TelemetryBuffer(state_dir)
        self._uplink = TelemetryUplink(self.telemetry)
        self.link = ControlLink(
            link, self._identities, self._desired, self.apply, self._hello, telemetry=self._uplink
        )

    async def prepare(self, pool: ModelPool, metrics: AgentMetrics) -> None:
        """Serves what the last desired state asked for before the control plane answers."""
        self._pool = pool
        self._metrics = metrics
        try:
            stored = await asyncio.to_thread(self._desired.load)
        except DesiredStateError as exc:  # the control plane sends the state again
            log.error("ignoring the stored desired state: %s", exc)
            stored = None
        if stored is not None:
            log.info("applying the stored desired state (generation %d)", stored.generation)
            status = await self.apply(stored)
            self.link.observed_generation = status.observed_generation

    async def run(self, stop: asyncio.Event) -> None:
        sampler = asyncio.create_task(self._sample(stop))
        try:
            identity = await self.link.ensure_identity(stop)
            if identity is not None:
                await self.link.run(identity, stop)
        finally:
            sampler.cancel()
            self.telemetry.close()

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
        assert self._pool is not None, "prepare() runs first"
        models = [
            replace(
                self._defaults,
                alias=m.alias,
                path=Path(m.path),
                context_length=m.context_length or self._defaults.context_length,
                gpu_layers=m.gpu_layers,
                queue_depth=m.queue_depth,
            )
            for m in desired.models
        ]
        async with self._apply_lock:
            items = await self._pool.apply(models)
        return AgentStatus(observed_generation=desired.generation, items=tuple(items))

    def _hello(self, agent_id: str, observed_generation: int) -> Hello:
        paths = self._pool.model_paths() if self._pool else []
        return build_hello(agent_id, observed_generation, paths, self._capabilities)
