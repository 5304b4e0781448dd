"""Liveness: ready, degraded, unreachable after the grace periods, revoked; fleet-wide silence."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from common.telemetry import Metric, Sample
from controlplane.db.models import Agent
from controlplane.liveness import Liveness, LivenessPolicy, assess, assess_fleet

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(hours=1)
POLICY = LivenessPolicy(grace=timedelta(seconds=60), restart_grace=timedelta(seconds=120))


def agent(state: str = "connected", seen_ago: float = 1, **fields: Any) -> Agent:
    return Agent(
        id=str(uuid.uuid4()),
        name="edge",
        state=state,
        enrolled_at=NOW - timedelta(days=1),
        last_seen_at=NOW - timedelta(seconds=seen_ago),
        **fields,
    )


def health_of(
    a: Agent, latest: Sample | None = None, started_at: datetime = STARTED
) -> tuple[Liveness, str]:
    h = assess(a, now=NOW, started_at=started_at, latest=latest, policy=POLICY)
    return h.state, h.reason


def test_connected_agent_is_ready() -> None:
    assert health_of(agent()) == (Liveness.READY, "connected")


def test_failed_model_degrades() -> None:
    failed = agent(
        status_items=[{"kind": "model", "name": "smol", "state": "failed", "error": "no file"}]
    )
    assert health_of(failed) == (Liveness.DEGRADED, "model smol failed: no file")


def test_hot_gpu_degrades() -> None:
    hot = Sample(
        collected_at=NOW,
        metrics=(Metric("outpost_gpu_temperature_celsius", 93.0, {"gpu": "0", "name": "L4"}),),
    )
    cool = Sample(
        collected_at=NOW,
        metrics=(Metric("outpost_gpu_temperature_celsius", 60.0, {"gpu": "0", "name": "L4"}),),
    )
    assert health_of(agent(), hot) == (Liveness.DEGRADED, "GPU 0 (L4) at 93 °C")
    assert health_of(agent(), cool)[0] is Liveness.READY


def test_disconnected_agent_is_unreachable_only_after_the_grace_period() -> None:
    assert health_of(agent("disconnected", seen_ago=30))[0] is Liveness.READY
    assert health_of(agent("disconnected", seen_ago=61)) == (
        Liveness.UNREACHABLE,
        "no contact for 61 s",
    )


def test_restart_grace_protects_agents_after_a_control_plane_start() -> None:
    long_gone = agent("disconnected", seen_ago=3600)
    assert health_of(long_gone, started_at=NOW - timedelta(seconds=90))[0] is Liveness.READY
    assert health_of(long_gone, started_at=NOW - timedelta(seconds=130))[0] is Liveness.UNREACHABLE


def test_revoked_is_revoked() -> None:
    assert health_of(agent("revoked", revoked_at=NOW))[0] is Liveness.REVOKED


def test_fleet_wide_silence_is_named_a_fleet_fault() -> None:
    silent = [agent("disconnected", seen_ago=300) for _ in range(3)]
    fine = agent()
    health = assess_fleet([*silent, fine], now=NOW, started_at=STARTED, latest={}, policy=POLICY)
    assert all(health[a.id].state is Liveness.UNREACHABLE for a in silent)
    assert all("control-plane or network fault" in health[a.id].reason for a in silent)
    assert health[fine.id].state is Liveness.READY


def test_a_few_silent_agents_are_their_own_fault() -> None:
    silent = agent("disconnected", seen_ago=300)
    others = [agent() for _ in range(4)]
    health = assess_fleet([silent, *others], now=NOW, started_at=STARTED, latest={}, policy=POLICY)
    assert health[silent.id] == health[silent.id].__class__(
        Liveness.UNREACHABLE, "no contact for 300 s"
    )
