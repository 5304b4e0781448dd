"""Policy versions in the control plane: apply, no-op re-apply, refusals, desired states."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from common.control import DesiredState, ModelAssignment, PolicyDocument
from common.errors import InvalidArgument, NotFound
from common.policy.document import MAX_DOCUMENT_BYTES, PolicyError, parse_policy
from controlplane.db.database import Database
from controlplane.services import ControlPlaneServices
from tests.policy_documents import CLOUD, EXAMPLE, MINIMAL
from tests.unit.test_controlplane_api import enroll

UNKNOWN_LEVEL = MINIMAL.replace("max_level: internal", "max_level: secretish")


@pytest.fixture
def services(database: Database) -> ControlPlaneServices:
    return ControlPlaneServices.build(database)


def audit_actions(services: ControlPlaneServices) -> list[tuple[str, str, str]]:
    return [(e.action, e.target, e.outcome) for e in reversed(services.audit.list())]


def test_no_policy_before_the_first_apply(services: ControlPlaneServices) -> None:
    assert services.policies.live() is None
    assert services.policies.versions() == []
    with pytest.raises(NotFound, match="no policy version 1"):
        services.policies.get(1)


def test_each_new_policy_is_the_next_version_and_live(services: ControlPlaneServices) -> None:
    first = services.policies.apply(MINIMAL, actor="alice")
    assert first.created
    assert (first.policy.version, first.policy.created_by) == (1, "alice")
    assert first.policy.digest == parse_policy(MINIMAL).digest
    assert first.policy.document == MINIMAL  # as written, comments and layout kept
    example = EXAMPLE.read_text(encoding="utf-8")
    second = services.policies.apply(example, actor="bob")
    assert (second.created, second.policy.version) == (True, 2)
    live = services.policies.live()
    assert live is not None
    assert (live.version, live.document) == (2, example)
    assert [v.version for v in services.policies.versions()] == [2, 1]
    assert services.policies.get(1).document == MINIMAL
    assert [v.version for v in services.policies.versions(limit=1, offset=1)] == [1]
    assert ("policy.apply", "policy:2", "ok") in audit_actions(services)


def test_reapplying_the_live_digest_is_a_no_op(services: ControlPlaneServices) -> None:
    services.policies.apply(MINIMAL, actor="alice")
    # The same policy in another layout (JSON flow style, a comment) has the same digest.
    reformatted = "# again\n" + MINIMAL.replace("[here]", "[ here ]")
    again = services.policies.apply(reformatted, actor="bob")
    assert (again.created, again.policy.version, again.policy.document) == (False, 1, MINIMAL)
    assert [v.version for v in services.policies.versions()] == [1]
    # An older version applied again is a new version: it becomes live.
    services.policies.apply(CLOUD, actor="alice")
    back = services.policies.apply(MINIMAL, actor="alice")
    assert (back.created, back.policy.version) == (True, 3)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (UNKNOWN_LEVEL, "secretish"),
        ("version: 1\nroles: [\n", None),
        ("", None),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        ("version: 1\n# " + "x" * MAX_DOCUMENT_BYTES, "more than"),
        ("version: 1\nroles: {dev: {max_level: public, targets: ['*']}}\x00", None),
        ("- a\n- b\n", None),
    ],
)
def test_an_invalid_document_changes_nothing(
    services: ControlPlaneServices, document: str | bytes, message: str | None
) -> None:
    services.policies.apply(MINIMAL, actor="alice")
    agent = enroll(services, "edge")
    before = services.desired.current(agent)
    with pytest.raises(PolicyError, match=message) as caught:
        services.policies.apply(document, actor="mallory")
    assert caught.value.problems
    live = services.policies.live()
    assert live is not None
    assert (live.version, live.document) == (1, MINIMAL)
    assert services.desired.current(agent) == before
    assert audit_actions(services)[-1] == ("policy.apply", "policy", "error")


def test_an_actor_is_required(services: ControlPlaneServices) -> None:
    with pytest.raises(InvalidArgument, match="actor"):
        services.policies.apply(MINIMAL, actor="")
    with pytest.raises(InvalidArgument, match="version"):
        services.policies.get(0)


def policies_of(states: Mapping[str, DesiredState]) -> dict[str, int | None]:
    return {a: s.policy.version if s.policy else None for a, s in states.items()}


def test_every_agent_gets_the_live_policy_in_a_new_generation(
    services: ControlPlaneServices,
) -> None:
    pushed: list[dict[str, int | None]] = []
    services.desired.add_listener(lambda states: pushed.append(policies_of(states)))
    old = enroll(services, "old", site="hq")
    with services.db.session() as session:
        services.desired.set_models(
            session, old, [ModelAssignment("smol", "/models/smol.gguf")], actor="t"
        )
    revoked = enroll(services, "gone")
    services.fleet.revoke(revoked, actor="t")
    before = services.desired.current(old)
    pushed.clear()

    applied = services.policies.apply(MINIMAL, actor="alice").policy
    expected = PolicyDocument(1, applied.digest, MINIMAL)
    after = services.desired.current(old)
    assert after.generation == before.generation + 1
    assert (after.models, after.labels, after.policy) == (before.models, before.labels, expected)
    assert pushed == [{old: 1}]  # once, after the commit; never to a revoked agent
    assert services.desired.current(revoked).policy is None
    # A no-op apply writes no generation.
    services.policies.apply(MINIMAL, actor="alice")
    assert services.desired.current(old).generation == after.generation
    # An agent enrolled later starts with it; later changes keep it.
    new = enroll(services, "new", site="hq")
    assert services.desired.current(new).policy == expected
    with services.db.session() as session:
        services.desired.set_labels(session, new, {"zone": "a"}, actor="t")
        services.desired.set_models_for_site(
            session, "hq", [ModelAssignment("m", "/models/m.gguf")], actor="t"
        )
    assert services.desired.current(new).policy == expected
    assert services.desired.current(old).policy == expected
    services.policies.apply(CLOUD, actor="alice")
    assert services.desired.current(new).policy == PolicyDocument(
        2, parse_policy(CLOUD).digest, CLOUD
    )
    assert services.desired.current(new).labels == {"zone": "a"}
    assert [m.alias for m in services.desired.current(new).models] == ["m"]
