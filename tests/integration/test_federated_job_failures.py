"""Federated jobs that cannot finish, on real Flower processes: too few usable sites (the job
waits, then fails naming each site's problem), and a job cancelled mid-round (its Flower run
and SuperNodes stop, and nothing is registered)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.federated.run_plan import FINAL_ADAPTER, NODES_FILE
from tests.conftest import seed_torch_cache
from tests.controlplane_harness import (
    ObservedManagedAgent,
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_federated_job import write_dataset

pytestmark = pytest.mark.model


@dataclass(frozen=True)
class Fleet:
    cp: RunningControlPlane
    with_data: str  # an agent holding the dataset
    without_data: str  # an agent whose dataset directory does not exist
    companions: dict[str, ObservedManagedAgent]


@pytest.fixture(scope="module")
def fleet(
    demo_model: Path, torch_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("federated-failures")
    settings = controlplane_settings(root / "cp", None)
    with RunningControlPlane(settings) as cp, ExitStack() as stack:
        companions: dict[str, ObservedManagedAgent] = {}
        ids: list[str] = []
        for site in ("north", "south"):
            state = root / site
            if site == "north":
                write_dataset(state / "datasets" / "support", site)
            seed_torch_cache(torch_cache, state)
            running, companion = managed_agent(
                state, cp.enroll_address, cp.create_token(site="hq"), cp.fingerprint
            )
            stack.enter_context(running)
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, f"the {site} agent is connected")
            with cp.api() as api:
                listed = [a["id"] for a in api.get("/agents").json()["agents"]]
            ids.append(next(i for i in listed if i not in ids))
            companions[ids[-1]] = companion
        cp.assign_demo_model(demo_model, site="hq")
        yield Fleet(cp, ids[0], ids[1], companions)


def start_job(api: httpx.Client, **fields: Any) -> str:
    body = {
        "model": "smollm2",
        "dataset": "support",
        "rounds": 1,
        "local_steps": 2,
        "batch_size": 2,
        "max_seq_len": 32,
        "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj"]},
        "training": {"threads": 1, "nice": 0},
        **fields,
    }
    created = api.post("/fl/jobs", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def job_state(api: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/fl/jobs/{job_id}").json()
    return job


def test_too_few_usable_sites_fail_the_job_with_each_sites_reason(fleet: Fleet) -> None:
    with fleet.cp.api() as api:
        job_id = start_job(
            api,
            agents=[fleet.with_data, fleet.without_data],
            min_participants=2,
            participant_wait_s=30,  # long enough for both SuperNodes to answer on a busy machine
        )
        wait_until(
            lambda: job_state(api, job_id)["state"] == "failed", "the job fails", timeout=240
        )
        job = job_state(api, job_id)
    assert "of the required 2 participants are ready after 30 s" in job["reason"]
    assert fleet.without_data in job["reason"]
    assert "dataset 'support'" in job["reason"]
    assert job["adapter_model_id"] is None
    for companion in fleet.companions.values():  # the tasks are taken back
        stopped = companion.federated.statuses
        wait_until(lambda: not stopped(), "the SuperNodes stop", 60)  # noqa: B023


def test_a_job_cancelled_mid_round_stops_and_registers_nothing(fleet: Fleet) -> None:
    job_dir = fleet.cp.settings.data_dir / "federated" / "jobs"
    with fleet.cp.api() as api:
        # Many steps: the round is still training when it is cancelled.
        job_id = start_job(api, agents=[fleet.with_data], local_steps=5000)
        wait_until(
            lambda: (job_dir / job_id / NODES_FILE).is_file(),
            "the round starts (the site answered)",
            timeout=240,
        )
        assert job_state(api, job_id)["state"] == "running"
        cancelled = api.post(f"/fl/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        companion = fleet.companions[fleet.with_data]
        wait_until(lambda: not companion.federated.statuses(), "the SuperNode stops", 60)
        job = job_state(api, job_id)
        adapters = api.get("/models", params={"kind": "adapter"}).json()["models"]
    assert job["state"] == "cancelled"
    assert job["adapter_model_id"] is None
    assert adapters == []
    assert not (job_dir / job_id / FINAL_ADAPTER).exists()
