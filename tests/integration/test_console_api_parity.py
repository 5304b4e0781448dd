"""What the REST API does that the console must do too: agent labels, deleting a registry model
and the routing policy's version history; each with the REST route's role rule and CSRF."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from controlplane.db.models import AuditEvent
from controlplane.model_assignments import ServingParameters
from tests.console_client import ConsoleClient
from tests.console_fleet import GOOD_POLICY, enroll_agent, logged_out, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.unit.test_gguf_info import write_gguf

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def agent_id(console_cp: RunningControlPlane) -> str:
    agent = enroll_agent(console_cp, "labelled", site="plant-9")
    services_of(console_cp).fleet.set_labels(agent, {"zone": "a"}, actor="test")
    return agent


def labels_of(cp: RunningControlPlane, agent: str) -> dict[str, str]:
    return dict(services_of(cp).fleet.get(agent).labels)


def post_labels(user: ConsoleClient, agent: str, text: str, token: str = "") -> tuple[int, str]:
    path = f"/console/agents/{agent}"
    form = {"csrf_token": token or user.page_token(path), "labels": text}
    response = user.post(f"{path}/labels", form)
    return response.status_code, response.text


def denied_actions(cp: RunningControlPlane, actor: str) -> list[str]:
    with services_of(cp).db.session() as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.actor == actor, AuditEvent.outcome == "denied")
        ).all()
    return [event.action for event in events]


def test_an_operator_replaces_an_agents_labels(
    console_cp: RunningControlPlane, operator: ConsoleClient, agent_id: str
) -> None:
    page = operator.get(f"/console/agents/{agent_id}")
    assert 'id="labels-editor"' in page.text
    assert "zone=a\n</textarea>" in page.text
    status, _ = post_labels(operator, agent_id, "zone=b\r\n\r\n  gpu = a100 \nrack=r-7\n")
    assert status == 303
    assert labels_of(console_cp, agent_id) == {"gpu": "a100", "rack": "r-7", "zone": "b"}
    page = operator.get(f"/console/agents/{agent_id}")
    assert "gpu=a100 rack=r-7 zone=b" in page.text
    assert "agent.set_labels" in page.text  # the agent's recent events
    status, _ = post_labels(operator, agent_id, "")
    assert status == 303
    assert labels_of(console_cp, agent_id) == {}
    services_of(console_cp).fleet.set_labels(agent_id, {"zone": "a"}, actor="test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zone=a\nno-equals-sign\n", "Line 2 is not key=value"),
        ("=value", "Line 1 is not key=value"),
        ("zone=a\nzone=b", "the label &#39;zone&#39; is given twice"),
        ("zone=", "the value of label zone must be 1 to 63 characters"),
        (f"zone={'x' * 64}", "must be 1 to 63 characters"),
        (f"{'k' * 64}=v", "a label key must be 1 to 63 characters"),
        ("".join(f"k{i}=v\n" for i in range(33)), "at most 32 labels are allowed"),
        ("x" * 5000, "The labels is longer than 4096 characters"),
        (f"zone={HOSTILE}", ESCAPED),
        (f"{HOSTILE}=a", ESCAPED),
        ("zone=a\x07", "holds control characters"),
    ],
)
def test_bad_labels_are_refused_on_the_agent_page_and_nothing_changes(
    console_cp: RunningControlPlane,
    operator: ConsoleClient,
    agent_id: str,
    text: str,
    message: str,
) -> None:
    status, page = post_labels(operator, agent_id, text)
    assert status == 400
    assert 'id="labels-error"' in page
    assert message in page
    assert HOSTILE not in page
    assert labels_of(console_cp, agent_id) == {"zone": "a"}


def test_a_viewer_may_not_label_an_agent(
    console_cp: RunningControlPlane, viewer: ConsoleClient, agent_id: str
) -> None:
    page = viewer.get(f"/console/agents/{agent_id}")
    assert 'id="labels-editor"' not in page.text
    status, page_text = post_labels(viewer, agent_id, "zone=viewer")
    assert status == 403
    assert "Only operators and administrators" in page_text
    assert labels_of(console_cp, agent_id) == {"zone": "a"}
    assert "agent.set_labels" in denied_actions(console_cp, "vera")


def test_labels_need_a_current_csrf_token(
    console_cp: RunningControlPlane, admin: ConsoleClient, agent_id: str
) -> None:
    stale = admin.page_token(f"/console/agents/{agent_id}")
    admin.post("/logout", {"csrf_token": stale})
    admin.login("ada", "a long test password")
    status, page = post_labels(admin, agent_id, "zone=stale", token=stale)
    assert status == 403
    assert "security token" in page
    status, _ = post_labels(admin, agent_id, "zone=stale", token="x")
    assert status == 403
    assert labels_of(console_cp, agent_id) == {"zone": "a"}


def test_labels_of_an_unknown_or_revoked_agent(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    token = admin.page_token("/console/models")
    missing = admin.post(
        "/console/agents/00000000-0000-4000-8000-000000000000/labels",
        {"csrf_token": token, "labels": "zone=a"},
    )
    assert missing.status_code == 404
    revoked = enroll_agent(console_cp, "gone")
    services_of(console_cp).fleet.revoke(revoked, actor="test")
    assert 'id="labels-editor"' not in admin.get(f"/console/agents/{revoked}").text
    status, page = post_labels(admin, revoked, "zone=a", token=token)
    assert status == 409
    assert "is revoked" in page
    assert labels_of(console_cp, revoked) == {}


def import_model(cp: RunningControlPlane, folder: Path, name: str, context_length: int) -> str:
    model = write_gguf(folder / f"{name}.gguf", context_length=context_length)
    return services_of(cp).models.import_file(model, name=name, actor="test").ref


def refs(cp: RunningControlPlane) -> set[str]:
    return {m.ref for m in services_of(cp).models.list()}


def delete(user: ConsoleClient, ref: str, token: str = "") -> tuple[int, str]:
    form = {"csrf_token": token or user.page_token("/console/models"), "model": ref}
    response = user.post("/console/models/delete", form)
    return response.status_code, response.text


def test_an_operator_deletes_an_unassigned_model(
    console_cp: RunningControlPlane, operator: ConsoleClient, tmp_path: Path
) -> None:
    ref = import_model(console_cp, tmp_path, "doomed", 256)
    page = operator.get("/console/models").text
    assert f'name="model" value="{ref}"' in page
    status, page = delete(operator, ref)
    assert status == 200
    assert f"Deleted {ref}." in page
    assert ref not in refs(console_cp)
    assert f'name="model" value="{ref}"' not in page


def test_an_assigned_model_is_kept_with_the_registrys_reason(
    console_cp: RunningControlPlane, admin: ConsoleClient, agent_id: str, tmp_path: Path
) -> None:
    ref = import_model(console_cp, tmp_path, "busy", 384)
    assignment = services_of(console_cp).assignments.assign(
        ref,
        target_kind="site",
        target="plant-9",
        parameters=ServingParameters(context_length=256),
        actor="test",
    )
    status, page = delete(admin, ref)
    assert status == 409
    assert 'id="models-error"' in page
    assert f"model {ref} is assigned (site plant-9 as busy); remove those assignments" in page
    assert ref in refs(console_cp)
    services_of(console_cp).assignments.unassign(assignment.id, actor="test")
    assert delete(admin, ref)[0] == 200
    assert ref not in refs(console_cp)


@pytest.mark.parametrize(
    ("ref", "status", "message"),
    [
        ("nothing-here@1", 404, "nothing-here@1"),
        (HOSTILE, 400, ESCAPED),
        ("", 400, "The model is required"),
        ("m" * 201, 400, "The model is longer than 200 characters"),
        ("tab\there", 400, "holds control characters"),
    ],
)
def test_deleting_an_unknown_or_malformed_model_is_refused(
    console_cp: RunningControlPlane, operator: ConsoleClient, ref: str, status: int, message: str
) -> None:
    before = refs(console_cp)
    answered, page = delete(operator, ref)
    assert answered == status
    assert message in page
    assert HOSTILE not in page
    assert refs(console_cp) == before


def test_a_viewer_may_not_delete_a_model_nor_a_stale_form(
    console_cp: RunningControlPlane, viewer: ConsoleClient, admin: ConsoleClient, tmp_path: Path
) -> None:
    ref = import_model(console_cp, tmp_path, "kept", 320)
    assert 'action="/console/models/delete"' not in viewer.get("/console/models").text
    status, page = delete(viewer, ref)
    assert status == 403
    assert "Only operators and administrators" in page
    assert "model.delete" in denied_actions(console_cp, "vera")
    stale = admin.page_token("/console/models")
    admin.post("/logout", {"csrf_token": stale})
    admin.login("ada", "a long test password")
    status, page = delete(admin, ref, token=stale)
    assert status == 403
    assert "security token" in page
    assert ref in refs(console_cp)


def apply_versions(cp: RunningControlPlane, count: int) -> list[int]:
    """`count` new policy versions, each a different document; answers their numbers."""
    store = services_of(cp).policies
    numbers = []
    for _ in range(count):
        n = len(store.versions(1000)) + 1
        model = f"model: smol-{n}"
        document = f"{GOOD_POLICY.replace('model: smol', model)}# revision {n}: {HOSTILE}\n"
        numbers.append(store.apply(document, actor="ada", source="test").policy.version)
    return numbers


def test_the_policy_page_lists_recent_versions_and_one_versions_document(
    console_cp: RunningControlPlane, viewer: ConsoleClient
) -> None:
    first, second = apply_versions(console_cp, 2)
    store = services_of(console_cp).policies
    page = viewer.get("/console/policy").text
    assert 'id="policy-versions"' in page
    for number in (first, second):
        version = store.get(number)
        assert f'<a href="/console/policy/versions/{number}">{number}</a>' in page
        assert f"<code>{version.digest[:12]}…</code>" in page
    assert page.count('class="policy-version"') == len(store.versions(10))
    assert ">ada<" in page
    shown = viewer.get(f"/console/policy/versions/{first}")
    assert shown.status_code == 200
    assert store.get(first).digest in shown.text
    assert f"# revision {first}: {ESCAPED}" in shown.text
    assert HOSTILE not in shown.text
    assert 'id="version-diff"' in shown.text  # the live version is `second`
    assert f"-# revision {second}: {ESCAPED}" in shown.text
    live = viewer.get(f"/console/policy/versions/{second}").text
    assert "live</span>" in live
    assert 'id="version-diff"' not in live


def test_the_history_page_pages_through_every_version(
    console_cp: RunningControlPlane, operator: ConsoleClient
) -> None:
    apply_versions(console_cp, 11 - len(services_of(console_cp).policies.versions(1000)) + 1)
    total = len(services_of(console_cp).policies.versions(1000))
    assert total > 10
    assert 'id="all-versions"' in operator.get("/console/policy").text
    everything = operator.get("/console/policy/versions").text
    assert everything.count('class="policy-version"') == total
    assert 'id="older-versions"' not in everything
    skipped = operator.get("/console/policy/versions?offset=3").text
    assert skipped.count('class="policy-version"') == total - 3
    assert 'id="newer-versions"' in skipped
    far = operator.get("/console/policy/versions?offset=5000")
    assert far.status_code == 200
    assert "No versions this far back" in far.text
    assert operator.get("/console/policy/versions?offset=-1").status_code == 400
    assert operator.get("/console/policy/versions?offset=x").status_code == 400


@pytest.mark.parametrize(
    ("version", "status", "message"),
    [
        ("99999", 404, "no policy version 99999"),
        ("0", 400, "a policy version is a whole number from 1"),
        ("abc", 400, "a policy version is a whole number from 1"),
        ("-1", 400, "a policy version is a whole number from 1"),
        ("99999999999", 400, "a policy version is a whole number from 1"),
        ("1" * 13, 400, ""),
    ],
)
def test_a_version_that_does_not_exist_is_refused_with_a_reason(
    console_cp: RunningControlPlane,
    viewer: ConsoleClient,
    version: str,
    status: int,
    message: str,
) -> None:
    response = viewer.get(f"/console/policy/versions/{version}")
    assert response.status_code == status
    assert message in response.text
    assert 'id="policy-document"' not in response.text


def test_the_history_needs_a_login(console_cp: RunningControlPlane) -> None:
    visitor = logged_out(console_cp)
    for path in ("/console/policy/versions", "/console/policy/versions/1"):
        response = visitor.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
    visitor.close()


def test_an_old_version_opens_in_the_editor_but_is_not_published(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    first, second = apply_versions(console_cp, 2)
    store = services_of(console_cp).policies
    page = admin.get(f"/console/policy/versions/{first}").text
    form = {
        "csrf_token": admin.page_token(f"/console/policy/versions/{first}"),
        "action": "validate",
        "document": store.get(first).document,
    }
    assert 'action="/console/policy/edit"' in page
    validated = admin.post("/console/policy/edit", form)
    assert validated.status_code == 200
    assert "not published" in validated.text
    assert f"+# revision {first}: {ESCAPED}" in validated.text
    live = store.live()
    assert live is not None
    assert live.version == second
    admin.post("/logout", {"csrf_token": form["csrf_token"]})
    admin.login("ada", "a long test password")
    stale = admin.post("/console/policy/edit", {**form, "action": "publish"})
    assert stale.status_code == 403
    assert "security token" in stale.text
    live = store.live()
    assert live is not None
    assert live.version == second
