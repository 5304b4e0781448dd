"""The console's federated pages over plain HTTP: the jobs and one job with its rounds, starting
a job through the REST API's checks and cancelling one; roles, CSRF and hostile text."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import pytest
from sqlmodel import select

from controlplane.db.models import AuditEvent
from controlplane.federated.job_spec import job_spec_from
from controlplane.federated.job_views import FederatedJobView, RoundReport
from controlplane.federated.runner import FederatedRunner
from controlplane.model_registry import RegisteredModelView
from tests.console_client import ConsoleClient
from tests.console_fleet import add_users, console_control_plane, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.federated_jobs import add_agent, add_model, job_body

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
FRAGMENT = {"X-Outpost-Fragment": "1"}


@pytest.fixture(scope="module")
def console_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    """The console's control plane with its federated runner held still: the tests move the
    jobs through their states themselves (no Flower run is started)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FederatedRunner, "tick", lambda self: None)
        data_dir = tmp_path_factory.mktemp("console-federated")
        with console_control_plane(data_dir, login_failures=1000) as running:
            add_users(running)
            yield running


@pytest.fixture(scope="module")
def model(console_cp: RunningControlPlane) -> RegisteredModelView:
    return add_model(services_of(console_cp))


@pytest.fixture(scope="module")
def agents(console_cp: RunningControlPlane, model: RegisteredModelView) -> dict[str, str]:
    services = services_of(console_cp)
    return {
        "berlin": add_agent(services, "trainer-berlin", site="berlin", model=model),
        "paris": add_agent(services, "trainer-paris", site="paris", model=model),
        "unable": add_agent(
            services, "no-torch", capabilities=("llama.cpp",), site="oslo", model=model
        ),
    }


def create_job(cp: RunningControlPlane, agent_ids: list[str], **spec: object) -> FederatedJobView:
    return services_of(cp).federated_jobs.create(
        job_spec_from(job_body(agent_ids, **spec)), actor="test"
    )


def report(round_number: int, sites: dict[str, float], **fields: object) -> RoundReport:
    return RoundReport(
        round=round_number,
        started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
        participants=tuple(sites),
        sites={
            a: {"train_loss": loss, "heldout_loss": loss + 0.5, "examples": 40}
            for a, loss in sites.items()
        },
        **fields,  # type: ignore[arg-type]
    )


def start_form(user: ConsoleClient, **fields: str) -> dict[str, str]:
    return {"csrf_token": user.page_token("/console/federated/new"), **fields}


def post_pairs(user: ConsoleClient, path: str, pairs: Sequence[tuple[str, str]]) -> httpx.Response:
    """A form whose fields may repeat (the agents multi-select, the targets checkboxes)."""
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    return user.post(path, content=urlencode(pairs), headers=kind)


def fragment(user: ConsoleClient, path: str) -> httpx.Response:
    """As console.js polls: with the fragment header."""
    return user.http.get(
        path, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in user.cookies.items()), **FRAGMENT}
    )


def denied(cp: RunningControlPlane, actor: str) -> list[str]:
    with services_of(cp).db.session() as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.actor == actor, AuditEvent.outcome == "denied")
        ).all()
    return [event.action for event in events]


def test_the_list_and_a_job_with_its_rounds_evaluation_and_chart(
    console_cp: RunningControlPlane,
    viewer: ConsoleClient,
    agents: dict[str, str],
    model: RegisteredModelView,
) -> None:
    jobs = services_of(console_cp).federated_jobs
    berlin, paris = agents["berlin"], agents["paris"]
    job = create_job(
        console_cp,
        [berlin, paris, agents["unable"]],
        rounds=2,
        lora={"rank": 4, "alpha": 8, "targets": ["q_proj", "k_proj"]},
        differential_privacy={"noise_multiplier": 0.5, "clipping_norm": 1.0},
    )
    assert 'href="/console/federated"' in viewer.get("/").text  # the nav entry
    listed = viewer.get("/console/federated")
    assert listed.status_code == 200
    row = re.search(rf'<tr class="fl-job" data-job-id="{job.id}">(.*?)</tr>', listed.text, re.S)
    assert row is not None
    assert "pending" in row.group(1)
    assert "smollm2@1" in row.group(1)
    assert ">0/2<" in row.group(1)  # round, participants
    assert ">2<" in row.group(1)
    assert "by test" in row.group(1)

    jobs.mark_running(job.id, 1)
    jobs.record_round(job.id, report(1, {berlin: 2.25, paris: 2.5}, bytes_down=2 * 1024**2))
    jobs.mark_running(job.id, 2)
    jobs.record_round(
        job.id,
        report(2, {berlin: 1.75}, dropped={paris: "did not answer within 600 s"}, wall_s=30.0),
    )
    table = fragment(viewer, "/console/federated/jobs")
    assert table.status_code == 200
    assert ">2/2<" in table.text
    assert "running" in table.text
    live = fragment(viewer, f"/console/federated/jobs/{job.id}/live")
    assert live.status_code == 200
    assert "trainer-berlin: 1.7500" in live.text

    page = viewer.get(f"/console/federated/jobs/{job.id}").text
    for shown in (
        "smollm2@1",
        "rank 4, alpha 8",
        "q_proj, k_proj",
        "noise 0.5, clipping norm 1",
        "held-out loss drops at least 1 %",
        "fedavg",
        "trainer-berlin",
        "no-torch",
        "did not report the federated-training",
        "2.2500",
        "1.7500",
        "dropped: did not answer within 600 s",
        "2.0 MiB down",
        "30.0 s wall",
        "round 2 of 2",
    ):
        assert shown in page, shown
    assert page.count('class="card fl-round"') == 2
    chart = re.search(r'<figure class="chart" id="fl-loss-chart">(.*?)</figure>', page, re.S)
    assert chart is not None
    assert chart.group(1).count("<polyline") == 2  # one line per site
    assert "trainer-berlin: 1.7500" in chart.group(1)
    assert "Cancel job" not in page  # a viewer

    jobs.mark_evaluating(job.id)
    jobs.record_round(
        job.id,
        RoundReport(
            round=2,
            phase="evaluate",
            started_at=datetime.now(UTC),
            participants=(berlin,),
            dropped={paris: "no held-out data"},
            sites={berlin: {"heldout_loss": 1.5, "base_heldout_loss": 2.0, "examples": 10}},
            aggregate={"heldout_loss_drop_pct": 25.0},
        ),
    )
    adapter = add_model(services_of(console_cp), "fl-adapter", kind="adapter")
    jobs.succeed(job.id, adapter.id)
    page = viewer.get(f"/console/federated/jobs/{job.id}").text
    evaluation = re.search(r'<section class="card" id="fl-evaluation">(.*?)</section>', page, re.S)
    assert evaluation is not None
    assert "held-out loss drop 25.00 %" in evaluation.group(1)
    assert "2.0000" in evaluation.group(1)
    assert "1.5000" in evaluation.group(1)
    assert "not evaluated: no held-out data" in evaluation.group(1)
    assert f">{adapter.ref}</a>" in page
    assert f">{adapter.ref}</a>" in viewer.get("/console/federated").text


def test_hostile_text_is_shown_escaped(
    console_cp: RunningControlPlane, admin: ConsoleClient, model: RegisteredModelView
) -> None:
    services = services_of(console_cp)
    hostile = add_agent(services, HOSTILE, site="evil", model=model)
    job = create_job(console_cp, [hostile])
    services.federated_jobs.mark_running(job.id, 1)
    services.federated_jobs.record_round(job.id, report(1, {}, dropped={hostile: HOSTILE}))
    services.federated_jobs.fail(job.id, f"the run broke: {HOSTILE}")
    for path in ("/console/federated", f"/console/federated/jobs/{job.id}"):
        page = admin.get(path).text
        assert ESCAPED in page
        assert HOSTILE not in page
    refused = admin.post(
        "/console/federated/new",
        start_form(admin, model="smollm2", participants="agents", agents=hostile, dataset=HOSTILE),
    )
    assert refused.status_code == 400
    assert "a dataset name" in refused.text
    assert ESCAPED in refused.text
    assert HOSTILE not in refused.text


def test_an_operator_starts_a_job_from_the_form(
    console_cp: RunningControlPlane, operator: ConsoleClient, agents: dict[str, str]
) -> None:
    form = operator.get("/console/federated/new").text
    assert 'id="fl-start"' in form
    assert 'value="smollm2@1"' in form
    assert "fl-adapter" not in form  # adapters are no base model
    fields = start_form(operator, model="smollm2@1", participants="site", site="berlin")
    fields |= {"dataset": "support", "rounds": "4", "local_steps": "7", "rank": "16"}
    fields |= {"alpha": "32", "learning_rate": "2e-4", "aggregation": "frozen-a"}
    fields |= {"min_participants": "1", "gate": "2.5", "dp_noise": "0.8", "dp_clip": "2"}
    pairs = [*fields.items(), ("targets", "q_proj"), ("targets", "o_proj")]
    started = post_pairs(operator, "/console/federated/new", pairs)
    assert started.status_code == 303, started.text
    job_id = started.headers["location"].rsplit("/", 1)[1]
    job = services_of(console_cp).federated_jobs.get(job_id)
    spec = job.spec
    assert (job.state, job.created_by, spec.site, spec.dataset) == (
        "pending",
        "otto",
        "berlin",
        "support",
    )
    assert (spec.rounds, spec.local_steps, spec.lora.rank, spec.lora.alpha) == (4, 7, 16, 32.0)
    assert (spec.learning_rate, spec.aggregation, spec.min_participants) == (2e-4, "frozen-a", 1)
    assert spec.lora.targets == ("q_proj", "o_proj")
    assert spec.min_heldout_loss_drop_pct == 2.5
    assert spec.differential_privacy is not None
    assert spec.differential_privacy.clipping_norm == 2.0
    assert [p.agent_id for p in job.participants] == [agents["berlin"]]
    assert job_id in operator.get("/console/federated").text


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"rounds": "0"}, 400, "&#39;rounds&#39; must be between 1 and 100, got 0"),
        ({"rounds": "two"}, 400, "&#39;rounds&#39; must be a whole number, got &#39;two&#39;"),
        ({"learning_rate": "0"}, 400, "&#39;learning_rate&#39; must be more than 0"),
        ({"dp_noise": "1"}, 400, "&#39;differential_privacy.clipping_norm&#39; is required"),
        ({"aggregation": "median"}, 400, "&#39;aggregation&#39; must be one of fedavg, frozen-a"),
        ({"min_participants": "3"}, 400, "no-torch"),  # too few can train: the skipped named
        ({"model": "nothing-here"}, 404, "nothing-here"),
        ({"participants": "labels", "labels": "zone"}, 400, "&#39;zone&#39; is not key=value"),
    ],
)
def test_a_refused_job_is_shown_in_the_form_with_the_input_kept(
    console_cp: RunningControlPlane,
    operator: ConsoleClient,
    agents: dict[str, str],
    fields: dict[str, str],
    status: int,
    message: str,
) -> None:
    before = len(services_of(console_cp).federated_jobs.list())
    base = {"model": "smollm2@1", "participants": "agents", "dataset": "kept-dataset"}
    body = {**start_form(operator, **base), **fields}
    pairs = [*body.items(), ("agents", agents["paris"]), ("agents", agents["unable"])]
    pairs.append(("targets", "v_proj"))
    refused = post_pairs(operator, "/console/federated/new", pairs)
    assert refused.status_code == status, refused.text
    shown = re.search(r'id="fl-start-error">(.*?)</p>', refused.text, re.S)
    assert shown is not None
    assert message in shown.group(1)
    assert 'value="kept-dataset"' in refused.text
    for agent in (agents["paris"], agents["unable"]):
        assert f'value="{agent}" selected' in refused.text
    assert 'value="v_proj" checked' in refused.text
    assert 'value="q_proj" checked' not in refused.text
    for name, value in fields.items():
        if name not in ("model", "participants", "aggregation"):
            assert f'name="{name}" value="{value}"' in refused.text
    assert len(services_of(console_cp).federated_jobs.list()) == before


def test_an_operator_cancels_a_job_and_a_second_cancel_is_refused(
    console_cp: RunningControlPlane, operator: ConsoleClient, agents: dict[str, str]
) -> None:
    job = create_job(console_cp, [agents["berlin"]])
    path = f"/console/federated/jobs/{job.id}"
    page = operator.get(path).text
    assert "Cancel job" in page
    assert "data-confirm=" in page
    token = operator.page_token(path)
    cancelled = operator.post(f"{path}/cancel", {"csrf_token": token})
    assert (cancelled.status_code, cancelled.headers["location"]) == (303, path)
    job = services_of(console_cp).federated_jobs.get(job.id)
    assert (job.state, job.reason) == ("cancelled", "cancelled by otto")
    page = operator.get(path).text
    assert "Cancel job" not in page
    assert "cancelled by otto" in page
    again = operator.post(f"{path}/cancel", {"csrf_token": token})
    assert again.status_code == 409
    assert "is cancelled: it cannot be cancelled" in again.text
    missing = operator.post(
        "/console/federated/jobs/00000000-0000-4000-8000-000000000000/cancel",
        {"csrf_token": token},
    )
    assert missing.status_code == 404
    assert operator.get("/console/federated/jobs/not-a-job").status_code == 400


def test_a_viewer_reads_but_may_not_start_or_cancel(
    console_cp: RunningControlPlane, viewer: ConsoleClient, agents: dict[str, str]
) -> None:
    job = create_job(console_cp, [agents["paris"]])
    path = f"/console/federated/jobs/{job.id}"
    assert viewer.get(path).status_code == 200
    form = viewer.get("/console/federated/new").text
    assert 'id="fl-start"' not in form
    assert "Only operators and administrators may start" in form
    assert "Start a job" not in viewer.get("/console/federated").text
    refused = viewer.post(f"{path}/cancel", {"csrf_token": viewer.page_token(path)})
    assert refused.status_code == 403
    assert "Only operators and administrators" in refused.text
    before = len(services_of(console_cp).federated_jobs.list())
    start = start_form(viewer, model="smollm2", participants="agents", agents=agents["paris"])
    refused = viewer.post("/console/federated/new", {**start, "dataset": "d"})
    assert refused.status_code == 403
    assert services_of(console_cp).federated_jobs.get(job.id).state == "pending"
    assert len(services_of(console_cp).federated_jobs.list()) == before
    assert {"fl_job.cancel", "fl_job.create"} <= set(denied(console_cp, "vera"))


def test_forms_without_a_current_csrf_token_are_refused(
    console_cp: RunningControlPlane, admin: ConsoleClient, agents: dict[str, str]
) -> None:
    job = create_job(console_cp, [agents["paris"]])
    path = f"/console/federated/jobs/{job.id}"
    for token in ({}, {"csrf_token": "stale"}):
        refused = admin.post(f"{path}/cancel", {"job": job.id, **token})
        assert refused.status_code == 403
        assert "security token" in refused.text
        fields = {"model": "smollm2", "participants": "site", "site": "paris", "dataset": "d"}
        refused = admin.post("/console/federated/new", {**fields, **token})
        assert refused.status_code == 403
        assert "security token" in refused.text
    assert services_of(console_cp).federated_jobs.get(job.id).state == "pending"
    assert len(services_of(console_cp).federated_jobs.list(state="pending")) >= 1
    live = admin.http.get(f"{path}/live", headers=FRAGMENT)  # no session cookie
    assert live.status_code == 401
