"""`FederatedJobs` on SQLite and PostgreSQL: planning (who takes part, who is skipped and
why), the states a job moves through, round reports, and the audit trail."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from common.control import Hardware, Hello
from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.db.database import Database
from controlplane.db.models import FederatedRoundRecord
from controlplane.federated.job_planning import MAX_SKIP_REASON_CHARS
from controlplane.federated.job_spec import job_spec_from
from controlplane.federated.job_views import TRANSITIONS, JobState, RoundReport
from controlplane.federated.jobs import FederatedJobs
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices
from tests.federated_jobs import add_agent, add_model, job_body

T = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def services(database: Database) -> ControlPlaneServices:
    return ControlPlaneServices.build(database)


@pytest.fixture
def model(services: ControlPlaneServices) -> RegisteredModelView:
    return add_model(services)


def jobs(services: ControlPlaneServices) -> FederatedJobs:
    return services.federated_jobs


def start(services: ControlPlaneServices, agents: list[str], **overrides: object) -> str:
    spec = job_spec_from(job_body(agents, **overrides))
    return jobs(services).create(spec, actor="alice").id


# -- planning ------------------------------------------------------------------------------


def test_planning_keeps_capable_agents_and_skips_the_others_with_their_reasons(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", site="berlin", model=model)
    no_torch = add_agent(
        services,
        "no-torch",
        capabilities=("llama.cpp", "no-federated-training: torch is not installed"),
        model=model,
    )
    silent = add_agent(services, "silent", capabilities=("llama.cpp",), model=model)
    no_model = add_agent(services, "no-model")
    spec = job_spec_from(
        job_body([able, no_torch, silent, no_model], datasets={"berlin": "tickets_de"})
    )
    job = jobs(services).create(spec, actor="alice")
    assert job.state == "pending"
    assert [(p.agent_id, p.name, p.site, p.dataset) for p in job.participants] == [
        (able, "able", "berlin", "tickets_de")
    ]
    reasons = {s.name: s.reason for s in job.skipped}
    assert reasons == {
        "no-torch": "cannot train: torch is not installed",
        "silent": "did not report the federated-training capability",
        "no-model": "its desired state does not include the base model smollm2@1 "
        f"(sha256:{model.sha256[:12]}…)",
    }
    assert job.min_participants == 1  # by default: every agent that can take part
    assert (job.model.name, job.model.version, job.model.sha256) == ("smollm2", "1", model.sha256)
    assert job.spec.adapter_name == f"fl-{job.id[:8]}"
    assert job.created_by == "alice"
    event = services.audit.list(target=f"fl_job:{job.id}")[0]
    assert (event.action, event.actor, event.outcome) == ("fl_job.create", "alice", "ok")
    assert event.detail["skipped"][no_torch] == "cannot train: torch is not installed"


def test_too_few_participants_is_refused_naming_each_skipped_agent(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    unable = add_agent(
        services, "unable", capabilities=("no-federated-training: no peft",), model=model
    )
    with pytest.raises(InvalidArgument) as caught:
        start(services, [able, unable], min_participants=2)
    message = str(caught.value)
    assert "needs at least 2 participant(s) but only 1 can take part" in message
    assert f"unable ({unable}): cannot train: no peft" in message
    with pytest.raises(InvalidArgument, match="only 0 can take part"):
        start(services, [unable])
    assert jobs(services).list() == []


def test_a_long_reported_reason_is_clipped(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    chatty = add_agent(
        services, "chatty", capabilities=("no-federated-training: " + "x" * 5000,), model=model
    )
    assert len(services.fleet.get(chatty).capabilities[0]) == 200  # stored clipped already
    job = jobs(services).get(start(services, [able, chatty]))
    assert len(job.skipped[0].reason) <= MAX_SKIP_REASON_CHARS
    assert job.skipped[0].reason.startswith("cannot train: xxx")


def test_hello_capabilities_are_bounded(services: ControlPlaneServices) -> None:
    agent = add_agent(services, "a", capabilities=())
    hello = Hello(agent, "1", Hardware(), capabilities=tuple(f"c{i}\x00" for i in range(100)))
    services.fleet.record_hello(agent, hello)
    stored = services.fleet.get(agent).capabilities
    assert len(stored) == 64
    assert stored[0] == "c0\N{REPLACEMENT CHARACTER}"


def test_participants_by_site_and_by_labels(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    berlin = add_agent(services, "b1", site="berlin", labels={"tier": "gpu"}, model=model)
    add_agent(services, "p1", site="paris", labels={"tier": "nuc"}, model=model)
    by_site = jobs(services).create(
        job_spec_from({"model": "smollm2@1", "site": "berlin", "dataset": "d"}), actor="a"
    )
    assert [p.agent_id for p in by_site.participants] == [berlin]
    by_label = jobs(services).create(
        job_spec_from(
            {"model": f"sha256:{model.sha256}", "labels": {"tier": "gpu"}, "dataset": "d"}
        ),
        actor="a",
    )
    assert [p.agent_id for p in by_label.participants] == [berlin]
    with pytest.raises(InvalidArgument, match="no enrolled agent matches site rome"):
        jobs(services).create(
            job_spec_from({"model": "smollm2", "site": "rome", "dataset": "d"}), actor="a"
        )
    with pytest.raises(InvalidArgument, match="no enrolled agent matches labels tier=tpu"):
        jobs(services).create(
            job_spec_from({"model": "smollm2", "labels": {"tier": "tpu"}, "dataset": "d"}),
            actor="a",
        )


def test_revoked_unknown_agents_and_bad_models(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    gone = add_agent(services, "gone", model=model)
    services.fleet.revoke(gone, actor="admin")
    job = jobs(services).get(start(services, [able, gone]))
    assert [(s.agent_id, s.reason) for s in job.skipped] == [(gone, "the agent is revoked")]
    with pytest.raises(NotFound, match="no agent 00000000-0000-4000-8000-000000000000"):
        start(services, [able, "00000000-0000-4000-8000-000000000000"])
    with pytest.raises(NotFound, match="no registered model"):
        start(services, [able], model="missing")
    add_model(services, "sql-lora", kind="adapter")
    with pytest.raises(InvalidArgument, match="is a LoRA adapter"):
        start(services, [able], model="sql-lora")
    with pytest.raises(InvalidArgument, match="actor"):
        jobs(services).create(job_spec_from(job_body([able])), actor="")


# -- states --------------------------------------------------------------------------------


def test_a_job_runs_round_by_round_to_success(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    job_id = start(services, [able], rounds=2)
    service = jobs(services)
    assert [j.id for j in service.active()] == [job_id]
    running = service.mark_running(job_id, 1, flower_run_id=2**64 - 1)
    assert (running.state, running.current_round, running.flower_run_id) == (
        "running",
        1,
        str(2**64 - 1),
    )
    assert running.started_at is not None
    assert service.mark_running(job_id, 2).flower_run_id == str(2**64 - 1)  # kept
    with pytest.raises(InvalidArgument, match="cannot go back to 1"):
        service.mark_running(job_id, 1)
    with pytest.raises(InvalidArgument, match="round must be between 1 and 2"):
        service.mark_running(job_id, 3)
    with pytest.raises(Conflict, match="is running: it cannot be succeeded"):
        service.succeed(job_id, 7)
    assert service.mark_evaluating(job_id).state == "evaluating"
    with pytest.raises(Conflict, match="is evaluating: it cannot be running"):
        service.mark_running(job_id, 2)
    done = service.succeed(job_id, 7, {"heldout_loss_drop_pct": 4.5, "nan": math.nan})
    assert (done.state, done.adapter_model_id, done.finished_at is not None) == (
        "succeeded",
        7,
        True,
    )
    assert done.metrics == {"heldout_loss_drop_pct": 4.5, "nan": None}
    assert service.active() == []
    assert not service.is_cancelled(job_id)
    with pytest.raises(Conflict, match="is succeeded: it cannot be cancelled"):
        service.cancel(job_id, actor="bob")
    with pytest.raises(Conflict, match="is succeeded: it cannot be failed"):
        service.fail(job_id, "late")
    actions = [e.action for e in services.audit.list(target=f"fl_job:{job_id}")]
    assert actions == ["fl_job.succeed", "fl_job.create"]


def test_failure_and_cancellation_are_final(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    service = jobs(services)
    failed = start(services, [able])
    view = service.fail(failed, "only 0 of 1 participants connected within 300 s\x00" + "y" * 2000)
    assert view.state == "failed"
    assert len(view.reason) == 1000
    assert "\x00" not in view.reason
    with pytest.raises(Conflict, match="is failed: it cannot be running"):
        service.mark_running(failed, 1)
    with pytest.raises(InvalidArgument, match="needs a reason"):
        service.fail(start(services, [able]), " ")

    cancelled = start(services, [able])
    service.mark_running(cancelled, 1)
    view = service.cancel(cancelled, actor="bob")
    assert (view.state, view.reason) == ("cancelled", "cancelled by bob")
    assert service.is_cancelled(cancelled)
    with pytest.raises(Conflict, match="is cancelled: it cannot be cancelled"):
        service.cancel(cancelled, actor="bob")
    with pytest.raises(Conflict, match="is cancelled: it cannot be evaluating"):
        service.mark_evaluating(cancelled)
    with pytest.raises(Conflict, match="is cancelled: it cannot be given round reports"):
        service.record_round(cancelled, RoundReport(round=1, started_at=T))
    event = services.audit.list(target=f"fl_job:{cancelled}")[0]
    assert (event.action, event.actor, event.detail["state"]) == ("fl_job.cancel", "bob", "running")


def test_transition_table_keeps_terminal_states_final() -> None:
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert TRANSITIONS[state] == frozenset()
    assert JobState.SUCCEEDED not in TRANSITIONS[JobState.PENDING]
    assert JobState.SUCCEEDED not in TRANSITIONS[JobState.RUNNING]
    assert set(TRANSITIONS) == set(JobState)


def test_unknown_and_malformed_job_ids(services: ControlPlaneServices) -> None:
    with pytest.raises(NotFound, match="no federated job"):
        jobs(services).get("00000000-0000-4000-8000-000000000000")
    for bad in ("x", "../etc", "00000000-0000-4000-8000-00000000000G", ""):
        with pytest.raises(InvalidArgument, match="job id is a UUID"):
            jobs(services).cancel(bad, actor="a")


# -- rounds --------------------------------------------------------------------------------


def test_round_reports_are_upserted_checked_and_bounded(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    a = add_agent(services, "a", model=model)
    b = add_agent(services, "b", model=model)
    service = jobs(services)
    job_id = start(services, [a, b], rounds=2)
    service.mark_running(job_id, 1)
    first = RoundReport(
        round=1,
        started_at=T,
        participants=(a, b),
        sites={a: {"train_loss": 2.5, "heldout_loss": math.inf, "examples": 12}},
        bytes_down=1000,
    )
    service.record_round(job_id, first)
    final = RoundReport(
        round=1,
        started_at=T,
        finished_at=T,
        participants=(a,),
        dropped={b: "connection lost\x00" + "z" * 900},
        sites={a: {"train_loss": 2.0, "heldout_loss": 2.2, "examples": 12}},
        bytes_down=2000,
        bytes_up=500,
        wall_s=12.5,
        train_s=10,
        aggregate={"train_loss": 2.0},
    )
    stored = service.record_round(job_id, final)
    assert stored.participants == (a,)
    assert len(stored.dropped[b]) == 500
    service.record_round(
        job_id,
        RoundReport(round=1, phase="evaluate", started_at=T, sites={a: {"heldout_loss": 2.1}}),
    )
    rounds = service.rounds(job_id)
    assert [(r.round, r.phase) for r in rounds] == [(1, "train"), (1, "evaluate")]
    assert rounds[0].sites[a] == {
        "train_loss": 2.0,
        "heldout_loss": 2.2,
        "base_heldout_loss": None,
        "examples": 12,
    }
    assert (rounds[0].bytes_down, rounds[0].bytes_up, rounds[0].train_s) == (2000, 500, 10.0)
    assert rounds[1].sites[a] == {
        "train_loss": None,
        "heldout_loss": 2.1,
        "base_heldout_loss": None,
        "examples": 0,
    }
    with services.db.session() as session:
        assert len(session.exec(select(FederatedRoundRecord)).all()) == 2

    stranger = "00000000-0000-4000-8000-000000000000"
    for bad, message in [
        (RoundReport(round=3, started_at=T), "round 3 is not between 0 and 2"),
        (RoundReport(round=1, phase="test", started_at=T), "phase is one of train, evaluate"),
        (RoundReport(round=1, started_at=T, participants=(stranger,)), "not a participant"),
        (RoundReport(round=1, started_at=T, dropped={stranger: "x"}), "not a participant"),
        (RoundReport(round=1, started_at=T, bytes_up=-1), "bytes_up must be a whole number"),
        (RoundReport(round=1, started_at=T, wall_s=math.nan), "wall_s must be between"),
        (RoundReport(round=1, started_at=datetime(2030, 1, 1)), "timezone-aware"),
        (RoundReport(round="1", started_at=T), "is not between"),  # type: ignore[arg-type]
        (RoundReport(round=1, started_at=T, sites={a: 2.0}), "each site's metrics"),  # type: ignore[dict-item]
        (
            RoundReport(round=1, started_at=T, aggregate={f"m{i}": 1 for i in range(40)}),
            "at most 32 metrics",
        ),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            service.record_round(job_id, bad)


def test_list_filters_by_state_newest_first(
    services: ControlPlaneServices, model: RegisteredModelView
) -> None:
    able = add_agent(services, "able", model=model)
    first = start(services, [able])
    second = start(services, [able])
    jobs(services).cancel(first, actor="a")
    assert {j.id for j in jobs(services).list()} == {first, second}
    assert [j.id for j in jobs(services).list(state="cancelled")] == [first]
    assert [j.id for j in jobs(services).list(state="pending")] == [second]
    assert len(jobs(services).list(limit=1)) == 1
    with pytest.raises(InvalidArgument, match="a job state is one of"):
        jobs(services).list(state="done")
    with pytest.raises(InvalidArgument, match="limit"):
        jobs(services).list(limit=0)
