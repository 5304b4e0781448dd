"""What the console tests share: a control plane with a console user of each role, agents."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from pathlib import Path

from agent.control.identity import build_csr, generate_key
from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings
from tests.console_client import ConsoleClient
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.integration.test_control_plane_bad_input import enroll
from tests.policy_documents import MINIMAL

PASSWORD = "a long test password"
USERS = {"ada": "admin", "otto": "operator", "vera": "viewer"}
GOOD_POLICY = MINIMAL
BAD_POLICY = MINIMAL.replace("{name: all, targets: [here]}", "{name: all, targets: [nowhere]}")


def console_control_plane(data_dir: Path, **console: object) -> RunningControlPlane:
    """A control plane (not started) whose console settings are the defaults but `console`."""
    settings = controlplane_settings(
        data_dir,
        None,
        console=ConsoleSettings(**console),  # type: ignore[arg-type]
    )
    return RunningControlPlane(settings)


def services_of(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


def add_users(cp: RunningControlPlane) -> None:
    for name, role in USERS.items():
        services_of(cp).users.create(name, role, PASSWORD, actor="test")


def logged_out(cp: RunningControlPlane) -> ConsoleClient:
    """A console user over plain HTTP who has not logged in."""
    return ConsoleClient(f"http://127.0.0.1:{cp.ports.http}")


def logged_in(cp: RunningControlPlane, name: str) -> ConsoleClient:
    """A console user logged in as `name` (one of USERS)."""
    user = logged_out(cp)
    assert user.login(name, PASSWORD).status_code == 303
    return user


def enroll_agent(cp: RunningControlPlane, name: str, site: str = "") -> str:
    """Enrolls an agent through the real enrollment service; answers its id."""
    agent_id = str(uuid.uuid4())
    token = cp.create_token(site=site) if site else cp.create_token()
    enroll(cp, token, build_csr(generate_key(), agent_id), name=name)
    return agent_id


def live_version(cp: RunningControlPlane) -> int | None:
    live = services_of(cp).policies.live()
    return live.version if live is not None else None


def add_telemetry(cp: RunningControlPlane, agent_id: str, minutes: int = 30) -> None:
    """A sample a minute for the last `minutes`: CPU, memory, a GPU and a model's numbers."""
    telemetry = services_of(cp).telemetry
    now = telemetry.now()
    gpu = {"gpu": "0", "name": "Test GPU"}
    samples = []
    for seq in range(1, minutes + 1):
        wave = (1 + math.sin(seq / 4)) / 2
        metrics = (
            Metric("outpost_cpu_utilization_ratio", 0.2 + 0.6 * wave, {"cpu": "total"}),
            Metric("outpost_memory_used_bytes", 6e9 + 2e9 * wave),
            Metric("outpost_memory_total_bytes", 16e9),
            Metric("outpost_gpu_utilization_ratio", wave, gpu),
            Metric("outpost_gpu_temperature_celsius", 50 + 20 * wave, gpu),
            Metric("outpost_model_tokens_per_second", 60 + 30 * wave, {"model": "smol"}),
            Metric("outpost_model_queue_depth", round(3 * wave), {"model": "smol"}),
        )
        at = now - timedelta(minutes=minutes - seq, seconds=1)
        samples.append(SequencedSample(seq, Sample(at, metrics)))
    telemetry.ingest(agent_id, TelemetryBatch(tuple(samples)))
