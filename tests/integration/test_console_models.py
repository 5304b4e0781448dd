"""The console's models page: operators assign and unassign, viewers are refused, bad forms."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from controlplane.db.models import AuditEvent
from tests.console_client import ConsoleClient
from tests.console_fleet import enroll_agent, logged_in, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.unit.test_gguf_info import write_gguf


@pytest.fixture(scope="module")
def console_cp(
    console_cp: RunningControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> RunningControlPlane:
    """The shared console control plane with the model "tiny" and an agent at site plant-3."""
    model = write_gguf(tmp_path_factory.mktemp("console-models") / "tiny.gguf")
    services_of(console_cp).models.import_file(model, name="tiny", actor="test")
    enroll_agent(console_cp, "shop-floor", site="plant-3")
    return console_cp


def assigned(console_cp: RunningControlPlane) -> list[tuple[str, str, str]]:
    return [(a.model.name, a.target, a.alias) for a in services_of(console_cp).assignments.list()]


def assign_form(user: ConsoleClient, **fields: str) -> dict[str, str]:
    base = {"model": "tiny", "kind": "site", "target": "plant-3", "alias": "", "context": ""}
    return {**base, **fields, "csrf_token": user.page_token("/console/models")}


def test_an_operator_assigns_a_model_to_a_site_and_sees_it_roll_out(
    console_cp: RunningControlPlane, operator: ConsoleClient
) -> None:
    page = operator.get("/console/models")
    assert "tiny@" in page.text
    response = operator.post("/console/models/assign", assign_form(operator, alias="smol"))
    assert response.status_code == 303
    assert assigned(console_cp) == [("tiny", "plant-3", "smol")]
    page = operator.get("/console/models")
    assert 'class="rollout"' in page.text
    assert "shop-floor" in page.text
    assert "pending" in page.text
    assignment_id = str(services_of(console_cp).assignments.list()[0].id)
    token = operator.page_token("/console/models")
    removed = operator.post(
        "/console/models/unassign", {"csrf_token": token, "assignment_id": assignment_id}
    )
    assert removed.status_code == 303
    assert assigned(console_cp) == []


def test_a_viewer_may_look_but_not_assign(console_cp: RunningControlPlane) -> None:
    viewer = logged_in(console_cp, "vera")
    page = viewer.get("/console/models")
    assert page.status_code == 200
    assert "Only operators and administrators may assign" in page.text
    response = viewer.post("/console/models/assign", assign_form(viewer))
    assert response.status_code == 403
    assert assigned(console_cp) == []
    with services_of(console_cp).db.session() as session:
        denied = session.exec(
            select(AuditEvent).where(AuditEvent.actor == "vera", AuditEvent.outcome == "denied")
        ).all()
    assert [event.action for event in denied] == ["model.assign"]
    viewer.close()


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"model": "missing-model"}, 404, "missing-model"),
        ({"kind": "planet"}, 400, "The target kind must be one of"),
        ({"target": ""}, 400, "The target is required"),
        ({"kind": "selector", "target": "no-equals-sign"}, 400, "key=value"),
        ({"kind": "agent", "target": "not-a-uuid"}, 400, "UUID"),
        ({"context": "abc"}, 400, "context length must be a number"),
        ({"context": "99999999"}, 400, "context length must be a number"),
        ({"alias": "<script>alert(1)</script>"}, 400, "&lt;script&gt;"),
    ],
)
def test_bad_assignments_are_refused_with_a_reason(
    console_cp: RunningControlPlane,
    operator: ConsoleClient,
    fields: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = operator.post("/console/models/assign", assign_form(operator, **fields))
    assert response.status_code == status
    assert message in response.text
    assert "<script>alert(1)</script>" not in response.text
    assert assigned(console_cp) == []


def test_unassign_needs_a_number(console_cp: RunningControlPlane, operator: ConsoleClient) -> None:
    token = operator.page_token("/console/models")
    for value in ("", "x1", "-3"):
        response = operator.post(
            "/console/models/unassign", {"csrf_token": token, "assignment_id": value}
        )
        assert response.status_code == 400
    missing = operator.post(
        "/console/models/unassign", {"csrf_token": token, "assignment_id": "999999"}
    )
    assert missing.status_code == 404


def test_the_registry_lists_what_was_imported(console_cp: RunningControlPlane) -> None:
    viewer = logged_in(console_cp, "vera")
    page = viewer.get("/console/models")
    models = services_of(console_cp).models.list()
    assert page.text.count('class="registry-model"') == len(models) >= 1
    for model in models:
        assert f"{model.sha256[:12]}…" in page.text
    viewer.close()


def upload(user: ConsoleClient, content: bytes, token: str | None, **query: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/octet-stream"}
    if token is not None:
        headers["X-CSRF-Token"] = token
    response = user.post("/console/models/import", content=content, headers=headers, params=query)
    return response.status_code, response.text


def test_an_operator_uploads_a_model_file(
    console_cp: RunningControlPlane, operator: ConsoleClient, tmp_path: Path
) -> None:
    data = write_gguf(tmp_path / "second.gguf", context_length=512).read_bytes()
    token = operator.page_token("/console/models")
    status, page = upload(operator, data, token, filename="second.gguf")
    assert status == 200
    assert "Imported second@1" in page
    names = {m.name for m in services_of(console_cp).models.list()}
    assert "second" in names
    status, page = upload(operator, b"not a gguf file at all", token, name="junk")
    assert status == 400
    assert "junk" not in {m.name for m in services_of(console_cp).models.list()}


def test_uploads_need_the_token_the_role_and_a_raw_body(
    console_cp: RunningControlPlane, operator: ConsoleClient, tmp_path: Path
) -> None:
    data = write_gguf(tmp_path / "third.gguf", context_length=1024).read_bytes()
    before = len(services_of(console_cp).models.list())
    status, page = upload(operator, data, None, name="third")
    assert status == 403
    assert "security token" in page
    status, _ = upload(operator, data, "stale-token", name="third")
    assert status == 403
    token = operator.page_token("/console/models")
    as_form = operator.post(
        "/console/models/import",
        {"file": "x"},
        headers={"X-CSRF-Token": token},
    )
    assert as_form.status_code == 400
    assert "needs JavaScript" in as_form.text
    viewer = logged_in(console_cp, "vera")
    status, page = upload(viewer, data, viewer.page_token("/console/models"), name="third")
    assert status == 403
    viewer.close()
    assert len(services_of(console_cp).models.list()) == before
