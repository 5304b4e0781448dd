"""A federated job survives a control-plane restart: the SuperLink comes back on its database,
the job goes on from its last finished round in a new Flower run, and succeeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.federated.flower_env import free_loopback_port
from tests.conftest import seed_torch_cache
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_federated_job import write_dataset

pytestmark = pytest.mark.model


def test_a_job_goes_on_after_a_control_plane_restart(
    tmp_path: Path, demo_model: Path, torch_cache: Path
) -> None:
    # Fixed ports: the agent finds the restarted control plane where it was.
    ports = {
        name: free_loopback_port() for name in ("http_port", "grpc_port", "mtls_port", "fleet_port")
    }
    settings = controlplane_settings(tmp_path / "cp", None, **ports)
    state = tmp_path / "north"
    write_dataset(state / "datasets" / "support", "north")
    seed_torch_cache(torch_cache, state)
    cp = RunningControlPlane(settings).__enter__()
    try:
        token = cp.create_token(site="hq")
        running, companion = managed_agent(state, cp.enroll_address, token, cp.fingerprint)
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                agent_id = api.get("/agents").json()["agents"][0]["id"]
            cp.assign_demo_model(demo_model, agent_id)
            with cp.api() as api:
                created = api.post(
                    "/fl/jobs",
                    json={
                        "model": "smollm2",
                        "agents": [agent_id],
                        "dataset": "support",
                        "rounds": 2,
                        "local_steps": 2,
                        "batch_size": 2,
                        "max_seq_len": 32,
                        "learning_rate": 0.005,
                        "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj"]},
                        "gate": {"min_heldout_loss_drop_pct": 0},
                        "training": {"threads": 1, "nice": 0},
                    },
                )
                assert created.status_code == 201, created.text
                job_id = created.json()["id"]

                def job() -> dict[str, Any]:
                    found: dict[str, Any] = api.get(f"/fl/jobs/{job_id}").json()
                    return found

                wait_until(lambda: len(job()["round_reports"]) >= 1, "round 1 ends", 240)
                before = job()
            cp.__exit__(None, None, None)  # the SuperLink and the ServerApp stop with it
            cp = RunningControlPlane(settings).__enter__()
            with cp.api() as api:
                wait_until(lambda: job()["state"] in ("succeeded", "failed"), "the job ends", 420)
                after = job()
    finally:
        cp.__exit__(None, None, None)
    assert before["state"] == "running"
    assert after["state"] == "succeeded", after["reason"]
    assert after["flower_run_id"] != before["flower_run_id"]  # it went on in a new run
    train = sorted(r["round"] for r in after["round_reports"] if r["phase"] == "train")
    assert train == [1, 2]
    assert after["adapter_model_id"] is not None
