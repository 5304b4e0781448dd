"""Federated jobs over a real control plane (`outpost serve` in a thread, SQLite): REST over
HTTP and `outpost fl start|status|list|cancel`. No model is loaded: agents are enrolled and
say hello through the services, as the control stream would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from controlplane.auth import Role
from controlplane.federated.job_views import RoundReport
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices
from tests.cli_calls import NOWHERE, admin, run
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.federated_jobs import add_agent, add_model, job_body


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    root = tmp_path_factory.mktemp("cp")
    with RunningControlPlane(controlplane_settings(root, None)) as running:
        yield running


@pytest.fixture(scope="module")
def services(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


@pytest.fixture(scope="module")
def model(services: ControlPlaneServices) -> RegisteredModelView:
    return add_model(services)


def test_rest_create_get_list_cancel_and_refusals(
    cp: RunningControlPlane, services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "rest-able", site="berlin", model=model)
    unable = add_agent(
        services,
        "rest-unable",
        capabilities=("no-federated-training: transformers is not installed",),
        model=model,
    )
    viewer = services.api_keys.create("fl-viewer", Role.VIEWER)[0]
    with cp.api() as api, cp.api(viewer) as reader:
        refused = reader.post("/fl/jobs", json=job_body([able]))
        assert refused.status_code == 403, refused.text
        few = api.post("/fl/jobs", json=job_body([able, unable], min_participants=2))
        assert few.status_code == 400, few.text
        assert "rest-unable" in few.json()["error"]["message"]
        assert "transformers is not installed" in few.json()["error"]["message"]

        created = api.post("/fl/jobs", json=job_body([able, unable]))
        assert created.status_code == 201, created.text
        job = created.json()
        assert [p["agent_id"] for p in job["participants"]] == [able]
        assert job["skipped"][0]["reason"] == "cannot train: transformers is not installed"
        assert job["id"] in [j["id"] for j in reader.get("/fl/jobs").json()["jobs"]]
        shown = reader.get(f"/fl/jobs/{job['id']}")
        assert (shown.status_code, shown.json()["round_reports"]) == (200, [])
        assert reader.post(f"/fl/jobs/{job['id']}/cancel").status_code == 403

        services.federated_jobs.mark_running(job["id"], 1)
        services.federated_jobs.mark_evaluating(job["id"])
        services.federated_jobs.succeed(job["id"], model.id)
        finished = api.post(f"/fl/jobs/{job['id']}/cancel")
        assert finished.status_code == 409, finished.text
        assert "is succeeded" in finished.json()["error"]["message"]
        assert api.get(f"/fl/jobs/{job['id']}").json()["adapter_model_id"] == model.id


def test_cli_start_status_list_and_cancel(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    model: RegisteredModelView,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a = add_agent(services, "cli-a", site="berlin", model=model)
    b = add_agent(services, "cli-b", site="paris", model=model)
    silent = add_agent(services, "cli-silent", capabilities=("llama.cpp",), model=model)
    argv = admin(
        cp,
        *("fl", "start", "--model", "smollm2@1", "--agents", a, b, silent),
        *("--dataset", "support", "--site-dataset", "paris=tickets_fr", "--rounds", "2"),
        *("--local-steps", "5", "--rank", "4", "--alpha", "8", "--targets", "q_proj,k_proj"),
        *("--participant-wait", "5m", "--dp-noise", "0.5", "--dp-clip", "1.0"),
        *("--threads", "2", "--nice", "15", "--adapter-name", "support-v1"),
    )
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    job_id = out.strip()
    assert "2 participant(s), 2 round(s) on smollm2@1" in err
    assert f"skipped cli-silent ({silent}): did not report the federated-training" in err
    job = services.federated_jobs.get(job_id)
    assert {p.agent_id: p.dataset for p in job.participants} == {a: "support", b: "tickets_fr"}
    spec = job.spec
    assert (spec.rounds, spec.local_steps, spec.lora.rank, spec.lora.alpha) == (2, 5, 4, 8.0)
    assert spec.lora.targets == ("q_proj", "k_proj")
    assert (spec.participant_wait_s, spec.threads, spec.nice) == (300, 2, 15)
    assert spec.differential_privacy is not None
    assert spec.differential_privacy.noise_multiplier == 0.5
    assert spec.adapter_name == "support-v1"

    services.federated_jobs.mark_running(job_id, 1)
    services.federated_jobs.record_round(
        job_id,
        RoundReport(
            round=1,
            started_at=datetime.now(UTC),
            participants=(a,),
            dropped={b: "did not answer within 600 s"},
            sites={a: {"train_loss": 2.25, "heldout_loss": 2.5, "examples": 40}},
            bytes_down=2 * 1024 * 1024,
            bytes_up=1024,
        ),
    )
    status, out, err = run(capsys, *admin(cp, "fl", "status", job_id, "--json"))
    assert status == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["state"], shown["round"], shown["rounds"]) == (
        job_id,
        "running",
        1,
        2,
    )
    assert shown["round_reports"][0]["sites"][a]["train_loss"] == 2.25

    status, out, err = run(capsys, *admin(cp, "fl", "status", job_id))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"job {job_id}: running, round 1/2"
    assert "participants (2, at least 2):" in out
    assert any(line.split() == ["1", "train", "cli-a", "2.2500", "2.5000", "40"] for line in lines)
    assert any(line.split()[:4] == ["1", "train", "cli-b", "dropped"] for line in lines)
    assert "bytes moved: 2.0 MiB down, 1.0 KiB up" in out

    status, out, err = run(capsys, *admin(cp, "fl", "list", "--state", "running"))
    assert status == 0, err
    assert out.splitlines()[0].split() == [
        *("ID", "STATE", "ROUND", "MODEL", "PARTICIPANTS", "CREATED", "BY"),
    ]
    listed = out.splitlines()
    assert any(line.split()[:5] == [job_id, "running", "1/2", "smollm2@1", "2"] for line in listed)
    status, out, _ = run(capsys, *admin(cp, "fl", "list", "--json"))
    assert job_id in [j["id"] for j in json.loads(out)]

    status, out, err = run(capsys, *admin(cp, "fl", "cancel", job_id))
    assert (status, out) == (0, f"cancelled federated job {job_id}\n")
    assert services.federated_jobs.is_cancelled(job_id)
    status, out, err = run(capsys, *admin(cp, "fl", "cancel", job_id))
    assert status == 1
    assert "is cancelled: it cannot be cancelled" in err


def test_cli_refusals(
    cp: RunningControlPlane, services: ControlPlaneServices, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = "00000000-0000-4000-8000-000000000000"
    base = ("fl", "start", "--model", "smollm2", "--dataset", "d")
    status, _, err = run(capsys, *admin(cp, *base))  # no participants
    assert status == 2
    assert "one of the arguments --agents --site --label is required" in err
    status, _, err = run(capsys, *admin(cp, *base, "--site", "s", "--label", "k=v"))
    assert status == 2
    status, _, err = run(capsys, *admin(cp, *base, "--agents", agent, "--dp-noise", "1"))
    assert status == 2
    assert "needs both --dp-noise and --dp-clip" in err
    status, _, err = run(capsys, *admin(cp, *base, "--agents", agent, "--rounds", "0"))
    assert status == 1
    assert "'rounds' must be between 1 and 100" in err
    status, _, err = run(capsys, *admin(cp, *base, "--agents", agent, "--participant-wait", "x"))
    assert status == 2
    status, _, err = run(capsys, *admin(cp, "fl", "status", "../agents"))
    assert (status, "invalid id" in err) == (2, True)
    status, _, err = run(capsys, *NOWHERE, "fl", "list")
    assert status == 1
    assert "cannot reach the control plane" in err
