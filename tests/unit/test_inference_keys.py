"""Inference keys on the control plane: create, revoke, list, audit, pushed to every agent."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from sqlmodel import select

from common.control import DesiredState, InferenceKeyGrant, ModelAssignment
from common.errors import InvalidArgument, NotFound, ResourceExhausted
from common.policy.document import parse_policy
from controlplane import inference_keys as inference_keys_module
from controlplane.auth import hash_key
from controlplane.db.database import Database
from controlplane.db.models import DesiredStateRecord
from controlplane.inference_keys import INFERENCE_KEY_PATTERN
from controlplane.services import ControlPlaneServices
from tests.policy_documents import MINIMAL
from tests.unit.test_controlplane_api import enroll


@pytest.fixture
def services(database: Database) -> ControlPlaneServices:
    return ControlPlaneServices.build(database)


def keys_of(states: Mapping[str, DesiredState]) -> dict[str, list[str] | None]:
    return {
        agent: None if s.inference_keys is None else [k.key_id for k in s.inference_keys]
        for agent, s in states.items()
    }


def test_a_key_is_shown_once_and_stored_by_hash(services: ControlPlaneServices) -> None:
    created = services.inference_keys.create("app-1", "developer", "search", actor="alice")
    assert INFERENCE_KEY_PATTERN.fullmatch(created.key)
    record = created.record
    assert (record.name, record.role, record.team, record.created_by) == (
        "app-1",
        "developer",
        "search",
        "alice",
    )
    assert record.prefix == created.key[:8]
    assert record.revoked_at is None
    with services.db.session() as session:
        grants = inference_keys_module.live_inference_keys(session)
    assert grants == (
        InferenceKeyGrant(str(record.id), hash_key(created.key), "developer", "search"),
    )
    other = services.inference_keys.create("app-2", "analyst", "bi", actor="alice")
    assert other.key != created.key
    assert [k.id for k in services.inference_keys.list()] == [record.id, other.record.id]
    events = [(e.action, e.target) for e in services.audit.list()]
    assert ("inference_key.create", f"inference_key:{record.id}") in events
    assert all(created.key not in str(e.detail) for e in services.audit.list())


def test_a_role_the_live_policy_lacks_is_allowed_with_a_warning(
    services: ControlPlaneServices,
) -> None:
    first = services.inference_keys.create("a", "here-role", "t", actor="alice")
    assert first.warnings
    assert "no routing policy" in first.warnings[0]
    services.policies.apply(MINIMAL, actor="alice")
    role = parse_policy(MINIMAL).roles[0].name
    assert services.inference_keys.create("b", role, "t", actor="alice").warnings == ()
    missing = services.inference_keys.create("c", "nobody", "t", actor="alice").warnings
    assert len(missing) == 1
    assert "'nobody'" in missing[0]
    assert "version 1" in missing[0]


@pytest.mark.parametrize(
    ("name", "role", "team"),
    [
        ("", "r", "t"),
        ("a" * 64, "r", "t"),
        ("ok", "has space", "t"),
        ("ok", "r", "t/../x"),
        ("ok", "r", "\u00e9quipe"),
        ("ok", None, "t"),
        ("ok", "r", "x\n"),
    ],
)
def test_names_roles_and_teams_must_be_identifiers(
    services: ControlPlaneServices, name: object, role: object, team: object
) -> None:
    with pytest.raises(InvalidArgument):
        services.inference_keys.create(name, role, team, actor="alice")  # type: ignore[arg-type]
    assert services.inference_keys.list(include_revoked=True) == []


def test_revoke_is_audited_idempotent_and_drops_the_key_from_the_set(
    services: ControlPlaneServices,
) -> None:
    kept = services.inference_keys.create("kept", "r", "t", actor="alice").record
    gone = services.inference_keys.create("gone", "r", "t", actor="alice").record
    revoked = services.inference_keys.revoke(gone.id, actor="bob")
    assert revoked.revoked_at is not None
    assert services.inference_keys.revoke(gone.id, actor="bob") == revoked  # no-op
    assert [k.id for k in services.inference_keys.list()] == [kept.id]
    assert [k.id for k in services.inference_keys.list(include_revoked=True)] == [kept.id, gone.id]
    revokes = [e for e in services.audit.list() if e.action == "inference_key.revoke"]
    assert [(e.actor, e.target) for e in revokes] == [("bob", f"inference_key:{gone.id}")]
    with pytest.raises(NotFound):
        services.inference_keys.revoke(gone.id + 100, actor="bob")
    for bad in (0, -1, True, 2**63, "1"):
        with pytest.raises(InvalidArgument):
            services.inference_keys.revoke(bad, actor="bob")  # type: ignore[arg-type]


def test_every_live_agent_gets_the_set_in_a_new_generation(
    services: ControlPlaneServices,
) -> None:
    pushed: list[dict[str, list[str] | None]] = []
    services.desired.add_listener(lambda states: pushed.append(keys_of(states)))
    agent = enroll(services, "edge", site="hq")
    with services.db.session() as session:
        services.desired.set_models(
            session, agent, [ModelAssignment("smol", "/models/smol.gguf")], actor="t"
        )
    dead = enroll(services, "dead")
    services.fleet.revoke(dead, actor="t")
    before = services.desired.current(agent)
    assert before.inference_keys == ()
    pushed.clear()

    key = services.inference_keys.create("app", "r", "t", actor="alice").record
    after = services.desired.current(agent)
    assert after.generation == before.generation + 1
    assert after.models == before.models
    assert pushed == [{agent: [str(key.id)]}]  # once, after the commit; not the revoked agent
    pushed.clear()
    services.inference_keys.revoke(key.id, actor="alice")
    assert pushed == [{agent: []}]
    assert services.desired.current(agent).generation == after.generation + 1
    # Only a revision marker is stored per agent, never the keys.
    with services.db.session() as session:
        specs = [r.spec for r in session.exec(select(DesiredStateRecord)).all()]
    assert all("key_hash" not in str(spec) for spec in specs)
    assert max(spec.get("inference_keys_revision", 0) for spec in specs) == 2


def test_an_agent_enrolled_later_starts_with_the_live_set(
    services: ControlPlaneServices,
) -> None:
    key = services.inference_keys.create("app", "r", "t", actor="alice").record
    late = enroll(services, "late")
    keys = services.desired.current(late).inference_keys
    assert keys is not None
    assert [k.key_id for k in keys] == [str(key.id)]
    with services.db.session() as session:  # nothing to refresh now
        assert services.desired.refresh_policy(session, late, actor="t") is None


def test_the_live_count_is_bounded(
    services: ControlPlaneServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference_keys_module, "MAX_INFERENCE_KEYS", 2)
    first = services.inference_keys.create("a", "r", "t", actor="alice").record
    services.inference_keys.create("b", "r", "t", actor="alice")
    with pytest.raises(ResourceExhausted):
        services.inference_keys.create("c", "r", "t", actor="alice")
    services.inference_keys.revoke(first.id, actor="alice")
    services.inference_keys.create("c", "r", "t", actor="alice")
    assert len(services.inference_keys.list()) == 2
    # Had creates raced past the bound, agents would still get a set they accept.
    monkeypatch.setattr(inference_keys_module, "MAX_INFERENCE_KEYS", 1)
    with services.db.session() as session:
        (only,) = inference_keys_module.live_inference_keys(session)
    assert only.key_id == str(min(k.id for k in services.inference_keys.list()))
