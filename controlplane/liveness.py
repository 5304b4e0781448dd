"""Agent liveness, derived when asked: ready, degraded, unreachable (after a grace period) or
revoked, each with a reason; a fleet that goes silent at once is named as such."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from common.telemetry import Sample
from controlplane.db.models import Agent, AgentState


class Liveness(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"
    UNREACHABLE = "unreachable"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Health:
    state: Liveness
    reason: str


@dataclass(frozen=True)
class LivenessPolicy:
    grace: timedelta = timedelta(seconds=60)  # silence tolerated before "unreachable"
    restart_grace: timedelta = timedelta(seconds=120)  # after the control plane starts
    gpu_hot_celsius: float = 90.0
    # When at least this share of a fleet of at least `mass_silence_min_agents` is silent at
    # once, the fault is the control plane's or the network's, and the reason says so.
    mass_silence_ratio: float = 0.5
    mass_silence_min_agents: int = 3


def _degradation(agent: Agent, latest: Sample | None, policy: LivenessPolicy) -> str | None:
    failed = [i for i in agent.status_items if i.get("state") == "failed"]
    if failed:
        item = failed[0]
        return f"{item.get('kind', 'item')} {item.get('name', '?')} failed: {item.get('error', '')}"
    if latest is not None:
        for metric in latest.metrics:
            if (
                metric.name == "outpost_gpu_temperature_celsius"
                and metric.value >= policy.gpu_hot_celsius
            ):
                gpu = f"GPU {metric.labels.get('gpu', '?')} ({metric.labels.get('name', '?')})"
                return f"{gpu} at {metric.value:.0f} °C"
    return None


def assess(
    agent: Agent,
    *,
    now: datetime,
    started_at: datetime,
    latest: Sample | None,
    policy: LivenessPolicy,
) -> Health:
    """One agent, on its own (see `assess_fleet` for the fleet-wide view)."""
    if agent.revoked_at is not None or agent.state == AgentState.REVOKED:
        return Health(Liveness.REVOKED, "revoked by an administrator")
    if agent.state != AgentState.CONNECTED:
        silent_since = max(agent.last_seen_at or agent.enrolled_at, started_at)
        silent_for = now - silent_since
        in_restart_grace = now - started_at < policy.restart_grace
        if silent_for >= policy.grace and not in_restart_grace:
            return Health(
                Liveness.UNREACHABLE, f"no contact for {int(silent_for.total_seconds())} s"
            )
    degraded = _degradation(agent, latest, policy)
    if degraded is not None:
        return Health(Liveness.DEGRADED, degraded)
    if agent.state != AgentState.CONNECTED:
        return Health(Liveness.READY, "not connected, within the grace period")
    return Health(Liveness.READY, "connected")


def assess_fleet(
    agents: Sequence[Agent],
    *,
    now: datetime,
    started_at: datetime,
    latest: Mapping[str, Sample],
    policy: LivenessPolicy,
) -> dict[str, Health]:
    health = {
        a.id: assess(a, now=now, started_at=started_at, latest=latest.get(a.id), policy=policy)
        for a in agents
    }
    live = [h for h in health.values() if h.state is not Liveness.REVOKED]
    silent = [a for a, h in health.items() if h.state is Liveness.UNREACHABLE]
    if len(live) >= policy.mass_silence_min_agents and len(
        silent
    ) >= policy.mass_silence_ratio * len(live):
        reason = (
            f"{len(silent)} of {len(live)} agents went silent together: most likely a "
            "control-plane or network fault, not these agents"
        )
        for agent_id in silent:
            health[agent_id] = Health(Liveness.UNREACHABLE, reason)
    return health
