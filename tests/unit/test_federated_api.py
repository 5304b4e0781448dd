"""REST routes of federated jobs over the real app and database (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from controlplane.auth import Role
from controlplane.federated.job_spec import MAX_SPEC_BYTES
from controlplane.federated.job_views import RoundReport
from tests.federated_jobs import add_agent, add_model, job_body
from tests.unit.test_controlplane_api import Api, api, error

__all__ = ["api"]  # the fixture, shared

JOB_KEYS = {
    *("id", "state", "round", "rounds", "reason", "model", "participants", "skipped"),
    *("min_participants", "adapter_model_id", "flower_run_id", "metrics", "spec"),
    *("created_by", "created_at", "started_at", "finished_at", "updated_at"),
}


def create(api: Api, body: object, role: Role = Role.OPERATOR) -> Any:
    return api.call("POST", "/fl/jobs", role, content=json.dumps(body).encode())


def test_an_operator_creates_a_job_that_lists_shows_and_cancels(api: Api) -> None:
    model = add_model(api.services)
    able = add_agent(api.services, "able", site="berlin", model=model)
    unable = add_agent(
        api.services, "unable", capabilities=("no-federated-training: no torch",), model=model
    )
    response = create(api, job_body([able, unable], rounds=2))
    assert response.status_code == 201, response.text
    job = response.json()
    assert set(job) == JOB_KEYS
    assert (job["state"], job["round"], job["rounds"], job["created_by"]) == (
        "pending",
        0,
        2,
        "operator-user",
    )
    assert job["model"]["ref"] == "smollm2@1"
    assert job["model"]["digest"] == f"sha256:{model.sha256}"
    assert job["participants"] == [
        {"agent_id": able, "name": "able", "site": "berlin", "dataset": "support"}
    ]
    assert job["skipped"] == [
        {"agent_id": unable, "name": "unable", "site": "", "reason": "cannot train: no torch"}
    ]
    assert job["spec"]["deploy"]["adapter_name"] == f"fl-{job['id'][:8]}"
    assert job["created_at"].endswith("Z")

    listed = api.call("GET", "/fl/jobs", Role.VIEWER).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert api.call("GET", "/fl/jobs?state=pending", Role.VIEWER).json()["jobs"] == listed
    assert api.call("GET", "/fl/jobs?state=running", Role.VIEWER).json() == {"jobs": []}
    assert "a job state is one of" in error(api.call("GET", "/fl/jobs?state=nope"), 400)

    api.services.federated_jobs.mark_running(job["id"], 1)
    api.services.federated_jobs.record_round(
        job["id"],
        RoundReport(
            round=1,
            started_at=datetime.now(UTC),
            participants=(able,),
            sites={able: {"train_loss": 1.5, "heldout_loss": 1.7, "examples": 8}},
            bytes_down=10,
            bytes_up=20,
        ),
    )
    shown = api.call("GET", f"/fl/jobs/{job['id']}", Role.VIEWER).json()
    assert (shown["state"], shown["round"]) == ("running", 1)
    assert [(r["round"], r["phase"]) for r in shown["round_reports"]] == [(1, "train")]
    assert shown["round_reports"][0]["sites"][able] == {
        "train_loss": 1.5,
        "heldout_loss": 1.7,
        "base_heldout_loss": None,
        "examples": 8,
    }
    assert (shown["round_reports"][0]["bytes_down"], shown["round_reports"][0]["bytes_up"]) == (
        10,
        20,
    )

    cancelled = api.call("POST", f"/fl/jobs/{job['id']}/cancel", Role.OPERATOR)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["state"], cancelled.json()["reason"]) == (
        "cancelled",
        "cancelled by operator-user",
    )
    again = api.call("POST", f"/fl/jobs/{job['id']}/cancel")
    assert "is cancelled: it cannot be cancelled" in error(again, 409)
    actions = [e.action for e in api.services.audit.list(target=f"fl_job:{job['id']}")]
    assert actions == ["fl_job.cancel", "fl_job.create"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ANALYST])
def test_readers_cannot_create_or_cancel_and_the_denial_is_audited(api: Api, role: Role) -> None:
    model = add_model(api.services)
    able = add_agent(api.services, "able", model=model)
    assert "operator or admin only" in error(create(api, job_body([able]), role), 403)
    job_id = create(api, job_body([able]), Role.ADMIN).json()["id"]
    assert error(api.call("POST", f"/fl/jobs/{job_id}/cancel", role), 403)
    denied = [e for e in api.services.audit.list() if e.outcome == "denied"]
    assert [(e.action, e.target) for e in denied] == [
        ("fl_job.cancel", f"fl_job:{job_id}"),
        ("fl_job.create", "fl_jobs"),
    ]
    assert api.call("GET", f"/fl/jobs/{job_id}", role).json()["state"] == "pending"


def test_bad_bodies_and_too_few_participants_are_400(api: Api) -> None:
    model = add_model(api.services)
    able = add_agent(api.services, "able", model=model)
    silent = add_agent(api.services, "silent", capabilities=("llama.cpp",), model=model)
    message = error(create(api, job_body([able, silent], min_participants=2)), 400)
    assert f"silent ({silent}): did not report the federated-training capability" in message
    assert "'rounds' must be between 1 and 100" in error(
        create(api, job_body([able], rounds=0)), 400
    )
    assert "unknown field 'epochs'" in error(create(api, job_body([able], epochs=1)), 400)
    # The app bounds every body (16 KiB in these tests); the job's own bound is checked in
    # test_federated_job_spec.
    body = api.call("POST", "/fl/jobs", Role.ADMIN, content=b" " * (MAX_SPEC_BYTES + 1))
    assert "request body is too large" in error(body, 413)
    assert "not valid JSON" in error(api.call("POST", "/fl/jobs", content=b"{"), 400)
    assert "no registered model" in error(create(api, job_body([able], model="nope")), 404)
    assert api.call("GET", "/fl/jobs").json() == {"jobs": []}


def test_unknown_and_malformed_job_ids(api: Api) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert "no federated job" in error(api.call("GET", f"/fl/jobs/{missing}"), 404)
    assert "no federated job" in error(api.call("POST", f"/fl/jobs/{missing}/cancel"), 404)
    assert "job id is a UUID" in error(api.call("GET", "/fl/jobs/not-a-uuid"), 400)
    assert error(api.call("GET", "/fl/jobs/" + "a" * 100), 400)


def test_agents_show_their_capabilities(api: Api) -> None:
    agent = add_agent(api.services, "a", capabilities=("llama.cpp", "federated-training"))
    shown = api.call("GET", f"/agents/{agent}", Role.VIEWER).json()
    assert shown["capabilities"] == ["llama.cpp", "federated-training"]
