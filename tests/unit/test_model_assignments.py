"""Model assignments to agents, sites and label selectors: precedence, reach, fit, bad input."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from common.control import (
    AgentStatus,
    Hardware,
    Hello,
    ItemState,
    ItemStatus,
    ModelAssignment,
)
from common.errors import InsufficientResources, InvalidArgument, NotFound
from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane.db.database import Database
from controlplane.db.models import (
    AuditEvent,
    DesiredStateRecord,
    ModelAssignmentRecord,
    RegisteredModel,
)
from controlplane.fit_check import DISK_FREE, GPU_TOTAL, GPU_USED, MEMORY_AVAILABLE
from controlplane.model_assignments import AssignmentView, ServingParameters
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
MiB = 1024**2
GiB = 1024**3
SIZE = 98_362_432  # the demo model's bytes
GGUF: dict[str, Any] = {
    "architecture": "llama",
    "parameters": 134_515_008,
    "quantization": "Q4_1",
    "context_length": 8192,
    "chat_template": "{{ messages }}",
    "license": "apache-2.0",
    "size_bytes": SIZE,
    "name": "SmolLM2 135M",
    "block_count": 30,
    "embedding_length": 576,
    "head_count": 9,
    "head_count_kv": 3,
    "key_length": 0,
    "value_length": 0,
}
# At a 4096-token context: 93.8 MiB weights + 90 MiB KV cache + 256 MiB working space.
NEED_4096 = "needs 439.8 MiB of memory (93.8 MiB weights and 90.0 MiB KV cache"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class FakeCertificate:
    serial: str = field(default_factory=lambda: uuid.uuid4().hex)
    not_before: datetime = T0 - timedelta(minutes=5)
    not_after: datetime = T0 + timedelta(days=30)
    pem: str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"


@pytest.fixture
def services(database: Database) -> ControlPlaneServices:
    return ControlPlaneServices.build(database, clock=Clock())


def enroll(
    services: ControlPlaneServices,
    *,
    site: str = "",
    labels: Mapping[str, str] | None = None,
    name: str = "edge",
) -> str:
    token, _ = services.tokens.create(
        site=site, labels=dict(labels or {}), ttl=timedelta(hours=1), created_by="test"
    )
    agent_id = str(uuid.uuid4())
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=agent_id, now=T0)
        services.fleet.enroll(
            session, agent_id=agent_id, name=name, grant=grant, certificate=FakeCertificate()
        )
    return agent_id


def add_model(
    services: ControlPlaneServices, name: str = "smollm2", version: str = "1", size: int = SIZE
) -> RegisteredModelView:
    """A registry row as an import writes it, without the slow header read."""
    sha256 = hashlib.sha256(f"{name}@{version}".encode()).hexdigest()
    with services.db.session() as session:
        record = RegisteredModel(
            name=name,
            version=version,
            sha256=sha256,
            size_bytes=size,
            chunk_size=4 * MiB,
            chunk_sha256=[sha256] * -(-size // (4 * MiB)),
            gguf={**GGUF, "size_bytes": size},
            created_at=T0,
            created_by="test",
        )
        session.add(record)
        session.flush()
        return RegisteredModelView.of(record)


def assign(
    services: ControlPlaneServices,
    ref: str,
    kind: str,
    target: str | Mapping[str, str],
    actor: str = "alice",
    **parameters: Any,
) -> AssignmentView:
    return services.assignments.assign(
        ref,
        target_kind=kind,
        target=target,
        parameters=ServingParameters(**parameters),
        actor=actor,
    )


def served(services: ControlPlaneServices, agent_id: str) -> dict[str, str]:
    """alias -> name@version (registry models) or the path (path models)."""
    models = services.desired.current(agent_id).models
    return {m.alias: f"{m.model_name}@{m.model_version}" if m.sha256 else m.path for m in models}


def generation(services: ControlPlaneServices, agent_id: str) -> int:
    return services.desired.current(agent_id).generation


def assignment_rows(services: ControlPlaneServices) -> list[ModelAssignmentRecord]:
    with services.db.session() as session:
        return list(
            session.exec(select(ModelAssignmentRecord).order_by(col(ModelAssignmentRecord.id)))
        )


def state_rows(services: ControlPlaneServices) -> int:
    with services.db.session() as session:
        return len(session.exec(select(DesiredStateRecord)).all())


def audit(services: ControlPlaneServices, prefix: str = "model.") -> list[AuditEvent]:
    with services.db.session() as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    return [e for e in events if e.action.startswith(prefix)]


def report(services: ControlPlaneServices, agent_id: str, *metrics: Metric, seq: int = 1) -> None:
    result = services.telemetry.ingest(
        agent_id, TelemetryBatch((SequencedSample(seq, Sample(T0, tuple(metrics))),))
    )
    assert result.stored == 1, result


def disk(free: float, path: str = "/var/lib/outpost") -> Metric:
    return Metric(DISK_FREE, free, {"path": path})


def path_model(alias: str, path: str) -> ModelAssignment:
    return ModelAssignment(alias=alias, path=path, context_length=2048)


# -- reaching agents --------------------------------------------------------------------------


def test_an_agent_assignment_becomes_part_of_its_desired_state(
    services: ControlPlaneServices,
) -> None:
    agent = enroll(services, site="hq")
    model = add_model(services)
    heard: list[dict[str, int]] = []
    services.desired.add_listener(
        lambda states: heard.append({a: s.generation for a, s in states.items()})
    )
    view = assign(
        services,
        "smollm2@1",
        "agent",
        agent,
        alias="smol",
        context_length=2048,
        gpu_layers=0,
        threads=4,
        queue_depth=8,
    )
    assert (view.target_kind, view.target, view.alias) == ("agent", agent, "smol")
    assert (view.context_length, view.gpu_layers, view.threads, view.queue_depth) == (2048, 0, 4, 8)
    assert (view.model.sha256, view.created_by, view.created_at) == (model.sha256, "alice", T0)
    assert view.agents == (agent,)
    assert view.fit_unchecked == (agent,)  # no telemetry, no Hello yet
    state = services.desired.current(agent)
    assert state.generation == 1
    assert state.models == (
        ModelAssignment(
            alias="smol",
            context_length=2048,
            gpu_layers=0,
            queue_depth=8,
            sha256=model.sha256,
            size_bytes=SIZE,
            model_name="smollm2",
            model_version="1",
            threads=4,
        ),
    )
    assert heard == [{agent: 1}]  # the hub hears of it after the commit
    assert services.assignments.get(view.id) == replace(view, fit_unchecked=())


def test_the_alias_defaults_to_the_model_name(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services, "qwen2.5-0.5b-instruct")
    view = assign(services, "qwen2.5-0.5b-instruct", "agent", agent)
    assert view.alias == "qwen2.5-0.5b-instruct"
    assert served(services, agent) == {"qwen2.5-0.5b-instruct": "qwen2.5-0.5b-instruct@1"}


def test_the_most_specific_assignment_wins_for_each_alias(services: ControlPlaneServices) -> None:
    pinned = enroll(services, site="hq", labels={"tier": "gold"})
    gold = enroll(services, site="hq", labels={"tier": "gold"})
    plain = enroll(services, site="hq")
    elsewhere = enroll(services, site="branch-1", labels={"tier": "gold"})
    for version in ("1", "2", "3"):
        add_model(services, "chat", version)
    by_site = assign(services, "chat@1", "site", "hq", alias="chat")
    by_selector = assign(services, "chat@2", "selector", {"tier": "gold"}, alias="chat")
    by_agent = assign(services, "chat@3", "agent", pinned, alias="chat")
    assert served(services, pinned) == {"chat": "chat@3"}
    assert served(services, gold) == {"chat": "chat@2"}
    assert served(services, plain) == {"chat": "chat@1"}
    assert served(services, elsewhere) == {"chat": "chat@2"}
    # Listing shows every agent an assignment matches, whether or not it wins there.
    listed = {v.id: set(v.agents) for v in services.assignments.list()}
    assert listed == {
        by_site.id: {pinned, gold, plain},
        by_selector.id: {pinned, gold, elsewhere},
        by_agent.id: {pinned},
    }
    # Removing the winner hands the alias to the next most specific.
    services.assignments.unassign(by_agent.id, actor="alice")
    assert served(services, pinned) == {"chat": "chat@2"}
    services.assignments.unassign(by_selector.id, actor="alice")
    assert served(services, pinned) == {"chat": "chat@1"}
    assert served(services, elsewhere) == {}
    assert served(services, plain) == {"chat": "chat@1"}


def test_different_aliases_add_up(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq", labels={"gpu": "l4"})
    for name in ("chat", "embed", "code"):
        add_model(services, name)
    assign(services, "chat", "site", "hq")
    assign(services, "embed", "selector", {"gpu": "l4"})
    assign(services, "code", "agent", agent)
    assert served(services, agent) == {"chat": "chat@1", "code": "code@1", "embed": "embed@1"}
    assert generation(services, agent) == 4  # its labels at enrollment, then one per assignment


def test_of_two_matching_selectors_the_newer_wins(services: ControlPlaneServices) -> None:
    agent = enroll(services, labels={"tier": "gold", "zone": "eu"})
    add_model(services, "chat", "1")
    add_model(services, "chat", "2")
    assign(services, "chat@1", "selector", {"tier": "gold"}, alias="chat")
    newer = assign(services, "chat@2", "selector", {"zone": "eu"}, alias="chat")
    assert served(services, agent) == {"chat": "chat@2"}
    services.assignments.unassign(newer.id, actor="alice")
    assert served(services, agent) == {"chat": "chat@1"}


def test_a_selector_matches_agents_having_all_its_labels(services: ControlPlaneServices) -> None:
    both = enroll(services, labels={"tier": "gold", "zone": "eu"})
    more = enroll(services, labels={"tier": "gold", "zone": "eu", "gpu": "l4"})
    tier_only = enroll(services, labels={"tier": "gold"})
    wrong_tier = enroll(services, labels={"tier": "silver", "zone": "eu"})
    unlabelled = enroll(services)
    add_model(services)
    view = assign(services, "smollm2", "selector", {"zone": "eu", "tier": "gold"})
    assert view.target == "tier=gold,zone=eu"  # canonical: sorted keys
    assert set(view.agents) == {both, more}
    for agent in (both, more):
        assert served(services, agent) == {"smollm2": "smollm2@1"}
    for agent in (tier_only, wrong_tier, unlabelled):
        assert served(services, agent) == {}


def test_a_selector_given_as_text_is_the_same_target(services: ControlPlaneServices) -> None:
    agent = enroll(services, labels={"tier": "gold", "zone": "eu"})
    add_model(services, "chat", "1")
    add_model(services, "chat", "2")
    first = assign(services, "chat@1", "selector", {"tier": "gold", "zone": "eu"})
    second = assign(services, "chat@2", "selector", "zone=eu,tier=gold")
    assert second.id == first.id
    assert second.target == "tier=gold,zone=eu"
    assert [r.model_id for r in assignment_rows(services)] == [second.model.id]
    assert served(services, agent) == {"chat": "chat@2"}


def test_a_site_assignment_reaches_agents_that_enroll_later(
    services: ControlPlaneServices,
) -> None:
    add_model(services)
    view = assign(services, "smollm2", "site", "branch-7", alias="smol")
    assert (view.agents, view.fit_unchecked) == ((), ())
    plain = enroll(services, site="branch-7")
    labelled = enroll(services, site="branch-7", labels={"tier": "gold"})
    other = enroll(services, site="branch-8")
    no_site = enroll(services)
    for agent in (plain, labelled):
        assert served(services, agent) == {"smol": "smollm2@1"}
        assert generation(services, agent) == 1  # one generation: labels and models together
    assert dict(services.desired.current(labelled).labels) == {"tier": "gold"}
    for agent in (other, no_site):
        assert (served(services, agent), generation(services, agent)) == ({}, 0)
    assert set(services.assignments.get(view.id).agents) == {plain, labelled}


def test_a_selector_assignment_reaches_agents_enrolled_with_its_labels(
    services: ControlPlaneServices,
) -> None:
    add_model(services)
    assign(services, "smollm2", "selector", {"tier": "gold"})
    gold = enroll(services, labels={"tier": "gold", "zone": "eu"})
    silver = enroll(services, labels={"tier": "silver"})
    assert served(services, gold) == {"smollm2": "smollm2@1"}
    assert served(services, silver) == {}


def test_label_changes_add_and_remove_selector_models(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_model(services, "chat")
    add_model(services, "embed")
    with services.db.session() as session:
        services.desired.set_models(
            session, agent, [path_model("local", "/models/local.gguf")], actor="alice"
        )
    assign(services, "chat", "site", "hq")
    assign(services, "embed", "selector", {"tier": "gold"})
    assert served(services, agent) == {"local": "/models/local.gguf", "chat": "chat@1"}
    before = generation(services, agent)

    services.fleet.set_labels(agent, {"tier": "gold"}, actor="bob")
    assert served(services, agent) == {
        "local": "/models/local.gguf",
        "chat": "chat@1",
        "embed": "embed@1",
    }
    assert generation(services, agent) == before + 1
    assert dict(services.desired.current(agent).labels) == {"tier": "gold"}

    services.fleet.set_labels(agent, {"tier": "silver"}, actor="bob")
    assert served(services, agent) == {"local": "/models/local.gguf", "chat": "chat@1"}
    assert generation(services, agent) == before + 2


def test_reassigning_a_target_and_alias_replaces_it(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    old = add_model(services, "chat", "1")
    new = add_model(services, "chat", "2")
    first = assign(services, "chat@1", "agent", agent, alias="chat")
    assert generation(services, agent) == 1
    second = assign(services, "chat@2", "agent", agent, alias="chat", actor="bob")
    assert second.id == first.id
    assert (second.model.id, second.created_by) == (new.id, "bob")
    [row] = assignment_rows(services)
    assert row.model_id == new.id
    assert served(services, agent) == {"chat": "chat@2"}
    assert generation(services, agent) == 2
    # Only the serving parameters change: still one row, one more generation.
    third = assign(services, "chat@2", "agent", agent, alias="chat", context_length=8192)
    assert third.id == first.id
    assert services.desired.current(agent).models[0].context_length == 8192
    assert generation(services, agent) == 3
    # The same assignment again changes no desired state.
    assign(services, "chat@2", "agent", agent, alias="chat", context_length=8192)
    assert generation(services, agent) == 3
    assert len(assignment_rows(services)) == 1
    details = [e.detail for e in audit(services, "model.assign")]
    assert [d["replaced_model_id"] for d in details] == [None, old.id, new.id, new.id]
    assert [d["sha256"] for d in details] == [old.sha256] + [new.sha256] * 3


def test_unassign_removes_the_model_from_desired_states(services: ControlPlaneServices) -> None:
    first, second = enroll(services, site="hq"), enroll(services, site="hq")
    add_model(services, "chat")
    add_model(services, "embed")
    chat = assign(services, "chat", "site", "hq")
    assign(services, "embed", "site", "hq")
    assert served(services, first) == {"chat": "chat@1", "embed": "embed@1"}
    services.assignments.unassign(chat.id, actor="carol")
    for agent in (first, second):
        assert served(services, agent) == {"embed": "embed@1"}
        assert generation(services, agent) == 3
    assert [r.alias for r in assignment_rows(services)] == ["embed"]
    with pytest.raises(NotFound, match=f"no model assignment {chat.id}"):
        services.assignments.unassign(chat.id, actor="carol")
    with pytest.raises(NotFound):
        services.assignments.get(chat.id)
    [event] = audit(services, "model.unassign")
    assert (event.actor, event.target) == ("carol", "site:hq")
    assert event.detail == {"assignment": chat.id, "alias": "chat"}


def test_a_path_model_alias_is_not_displaced(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_model(services, "chat")
    add_model(services, "embed")
    local = path_model("chat", "/models/my-chat.gguf")
    with services.db.session() as session:
        services.desired.set_models(session, agent, [local], actor="alice")
    view = assign(services, "chat", "site", "hq")
    assert view.agents == (agent,)  # it matches; the agent's own file keeps the alias
    assert services.desired.current(agent).models == (local,)
    assert generation(services, agent) == 1
    assign(services, "embed", "agent", agent)
    assert served(services, agent) == {"chat": "/models/my-chat.gguf", "embed": "embed@1"}


def test_setting_path_models_keeps_the_assigned_registry_models(
    services: ControlPlaneServices,
) -> None:
    agent = enroll(services, site="hq")
    add_model(services, "chat")
    assign(services, "chat", "site", "hq")
    with services.db.session() as session:
        services.desired.set_models(
            session, agent, [path_model("local", "/models/local.gguf")], actor="alice"
        )
    assert served(services, agent) == {"local": "/models/local.gguf", "chat": "chat@1"}
    with services.db.session() as session:
        services.desired.set_models(session, agent, [], actor="alice")
    assert served(services, agent) == {"chat": "chat@1"}
    # A path model takes the alias over; removing it hands the alias back.
    with services.db.session() as session:
        services.desired.set_models(
            session, agent, [path_model("chat", "/models/chat.gguf")], actor="alice"
        )
    assert served(services, agent) == {"chat": "/models/chat.gguf"}
    with services.db.session() as session:
        services.desired.set_models(session, agent, [], actor="alice")
    assert served(services, agent) == {"chat": "chat@1"}


def test_site_wide_path_models_keep_the_assigned_registry_models(
    services: ControlPlaneServices,
) -> None:
    agent = enroll(services, site="hq")
    add_model(services, "chat")
    assign(services, "chat", "agent", agent)
    with services.db.session() as session:
        services.desired.set_models_for_site(
            session, "hq", [path_model("local", "/models/local.gguf")], actor="alice"
        )
    assert served(services, agent) == {"local": "/models/local.gguf", "chat": "chat@1"}


def test_revoked_agents_are_not_reached(services: ControlPlaneServices) -> None:
    live = enroll(services, site="hq", labels={"tier": "gold"})
    revoked = enroll(services, site="hq", labels={"tier": "gold"})
    services.fleet.revoke(revoked, actor="admin")
    add_model(services)
    add_model(services, "embed")
    by_site = assign(services, "smollm2", "site", "hq")
    by_selector = assign(services, "embed", "selector", {"tier": "gold"})
    assert by_site.agents == by_selector.agents == (live,)
    assert (served(services, revoked), generation(services, revoked)) == ({}, 1)
    with pytest.raises(NotFound, match="no live agent"):
        assign(services, "smollm2", "agent", revoked)
    assert {v.agents for v in services.assignments.list()} == {(live,)}
    with services.db.session() as session:
        found = services.assignments.models_for_agents(session, [revoked, live, str(uuid.uuid4())])
        assert set(found) == {live}  # revoked and unknown agents get nothing
        assert len(found[live]) == 2


def test_assigning_to_an_unknown_agent_is_not_found(services: ControlPlaneServices) -> None:
    add_model(services)
    with pytest.raises(NotFound, match="no live agent"):
        assign(services, "smollm2", "agent", str(uuid.uuid4()))
    assert assignment_rows(services) == []


def test_changes_are_audited(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    model = add_model(services)
    view = assign(services, "smollm2", "agent", agent, alias="smol", actor="alice")
    services.assignments.unassign(view.id, actor="bob")
    events = audit(services)
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("alice", "model.assign", f"agent:{agent}"),
        ("bob", "model.unassign", f"agent:{agent}"),
    ]
    assert events[0].detail == {
        "model": "smollm2@1",
        "sha256": model.sha256,
        "alias": "smol",
        "adapters": {},
        "replaced_model_id": None,
    }
    changes = [e for e in audit(services, "desired_state.") if e.target == f"agent:{agent}"]
    assert [(e.actor, e.detail["generation"]) for e in changes] == [("alice", 1), ("bob", 2)]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind", "target", "parameters", "message"),
    [
        ("smollm2", "group", "hq", {}, "targets one of agent, site, selector"),
        ("smollm2", "", "hq", {}, "targets one of"),
        ("smollm2", "agent", "not-a-uuid", {}, "an agent id must be a UUID"),
        ("smollm2", "agent", "3F0E1C2A-5B6D-4E7F-8A9B-0C1D2E3F4A5B", {}, "lowercase"),
        ("smollm2", "agent", {"id": "x"}, {}, "names it as a string"),
        ("smollm2", "site", "berlin west", {}, "a site must be"),
        ("smollm2", "site", "", {}, "a site must be"),
        ("smollm2", "site", "x" * 64, {}, "a site must be"),
        ("smollm2", "site", "../etc", {}, "a site must be"),
        ("smollm2", "site", "hq'; DROP TABLE agents; --", {}, "a site must be"),
        ("smollm2", "selector", {}, {}, "at least one key=value"),
        ("smollm2", "selector", "", {}, "key=value"),
        ("smollm2", "selector", "tier", {}, "key=value"),
        ("smollm2", "selector", "tier=gold,zone", {}, "key=value"),
        ("smollm2", "selector", {"tier": "gold plated"}, {}, "the value of label tier"),
        ("smollm2", "selector", {"ti er": "gold"}, {}, "a label key"),
        ("smollm2", "selector", {"tier": ""}, {}, "the value of label tier"),
        ("smollm2", "selector", {"tier": "a=b"}, {}, "the value of label tier"),
        ("smollm2", "selector", {"tier": "gold\n"}, {}, "the value of label tier"),
        ("smollm2", "selector", {f"k{i}": "v" for i in range(33)}, {}, "at most 32 labels"),
        ("smollm2", "site", "hq", {"alias": "a b"}, "a model alias"),
        ("smollm2", "site", "hq", {"alias": "x" * 64}, "a model alias"),
        ("smollm2", "site", "hq", {"context_length": 63}, "context_length must be between"),
        ("smollm2", "site", "hq", {"context_length": 1_048_577}, "context_length"),
        ("smollm2", "site", "hq", {"gpu_layers": -2}, "gpu_layers must be -1"),
        ("smollm2", "site", "hq", {"threads": -1}, "threads must be between 0 and 1024"),
        ("smollm2", "site", "hq", {"threads": 1025}, "threads"),
        ("smollm2", "site", "hq", {"queue_depth": -1}, "queue_depth must be between 0 and"),
        ("smollm2", "site", "hq", {"queue_depth": 1025}, "queue_depth"),
        ("sha256:abc", "site", "hq", {}, "sha256"),
        ("sha256:" + "G" * 64, "site", "hq", {}, "sha256"),
        ("md5:" + "0" * 32, "site", "hq", {}, "sha256"),
        ("", "site", "hq", {}, "non-empty"),
        ("smoll m2", "site", "hq", {}, "a model name"),
        ("smollm2@", "site", "hq", {}, "a model version"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    services: ControlPlaneServices,
    ref: str,
    kind: str,
    target: Any,
    parameters: dict[str, Any],
    message: str,
) -> None:
    agent = enroll(services, site="hq", labels={"tier": "gold"})
    add_model(services)
    with pytest.raises(InvalidArgument, match=None) as refused:
        assign(services, ref, kind, target, **parameters)
    assert message in str(refused.value)
    assert assignment_rows(services) == []
    assert generation(services, agent) == 1  # the enrollment's labels only
    assert audit(services) == []


@pytest.mark.parametrize("ref", ["nosuch", "smollm2@9", "sha256:" + "0" * 64])
def test_an_unknown_model_is_not_found(services: ControlPlaneServices, ref: str) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    with pytest.raises(NotFound, match="no registered model"):
        assign(services, ref, "site", "hq")
    assert (assignment_rows(services), generation(services, agent)) == ([], 0)


def test_a_bad_actor_is_refused(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    for actor in ("", "line\nbreak", "x" * 256):
        with pytest.raises(InvalidArgument, match="an actor"):
            assign(services, "smollm2", "agent", agent, actor=actor)
    view = assign(services, "smollm2", "agent", agent)
    with pytest.raises(InvalidArgument, match="an actor"):
        services.assignments.unassign(view.id, actor="")
    assert len(assignment_rows(services)) == 1


# -- the fit check ---------------------------------------------------------------------------


def refused(services: ControlPlaneServices, *args: Any, **kwargs: Any) -> str:
    rows, states = assignment_rows(services), state_rows(services)
    with pytest.raises(InsufficientResources) as refusal:
        assign(services, *args, **kwargs)
    assert assignment_rows(services) == rows  # no row, no new generation
    assert state_rows(services) == states
    return str(refusal.value)


def test_too_little_memory_is_refused_with_the_numbers(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq", name="till-3")
    add_model(services)
    report(services, agent, Metric(MEMORY_AVAILABLE, 300 * MiB), disk(50 * GiB))
    message = refused(services, "smollm2", "agent", agent)
    assert message.startswith("model smollm2@1 with a 4096-token context does not fit: ")
    assert f"agent {agent} (till-3): {NEED_4096}" in message
    assert "plus 256.0 MiB working space) but 300.0 MiB is available" in message
    assert "disk" not in message
    # A shorter context needs a smaller KV cache, but not small enough.
    shorter = refused(services, "smollm2", "agent", agent, context_length=512)
    assert "with a 512-token context" in shorter
    assert "11.2 MiB KV cache" in shorter
    assert audit(services) == []


def test_enough_memory_is_accepted_and_checked(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    report(services, agent, Metric(MEMORY_AVAILABLE, 440 * MiB), disk(94 * MiB))
    view = assign(services, "smollm2", "agent", agent)
    assert (view.agents, view.fit_unchecked) == ((agent,), ())
    assert served(services, agent) == {"smollm2": "smollm2@1"}


def test_too_little_disk_is_refused(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    report(
        services,
        agent,
        Metric(MEMORY_AVAILABLE, 8 * GiB),
        disk(50 * GiB, "/var/lib/outpost"),
        disk(90 * MiB, "/models"),
    )
    message = refused(services, "smollm2", "site", "hq")
    assert f"agent {agent} (edge): needs 93.8 MiB of disk but 90.0 MiB is free" in message
    assert "of memory" not in message


def test_a_model_already_on_the_agents_disk_needs_no_disk(
    services: ControlPlaneServices,
) -> None:
    holder = enroll(services, site="hq", name="holder")
    serving = enroll(services, site="hq", name="serving")
    fetching = enroll(services, site="hq", name="fetching")
    model = add_model(services)
    for agent in (holder, serving, fetching):
        report(services, agent, Metric(MEMORY_AVAILABLE, 8 * GiB), disk(50 * MiB))
    ready = ItemStatus("model", "smollm2", ItemState.READY, sha256=model.sha256)
    services.fleet.record_status(holder, AgentStatus(1, (ready,)))
    newer_failed = ItemStatus(
        "model", "smollm2", ItemState.FAILED, sha256="ab" * 32, serving_sha256=model.sha256
    )
    services.fleet.record_status(serving, AgentStatus(1, (newer_failed,)))
    partial = ItemStatus("model", "smollm2", ItemState.DOWNLOADING, sha256=model.sha256)
    services.fleet.record_status(fetching, AgentStatus(1, (partial,)))
    message = refused(services, "smollm2", "site", "hq", context_length=8192)
    assert f"agent {fetching} (fetching): needs 93.8 MiB of disk but 50.0 MiB is free" in message
    assert holder not in message
    assert serving not in message
    view = assign(services, "smollm2", "agent", holder, context_length=8192)
    assert view.agents == (holder,)
    assert assign(services, "smollm2", "agent", serving).agents == (serving,)


def test_offloading_on_an_agent_without_a_gpu_is_refused(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    report(services, agent, Metric(MEMORY_AVAILABLE, 8 * GiB), disk(50 * GiB))
    message = refused(services, "smollm2", "site", "hq", gpu_layers=-1)
    assert "needs 183.8 MiB of GPU memory for its offloaded layers but 0 B is free" in message
    view = assign(services, "smollm2", "site", "hq", gpu_layers=0)
    assert view.agents == (agent,)


def test_offloading_is_checked_against_free_gpu_memory(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    labels = {"gpu": "0", "name": "NVIDIA L4"}
    report(
        services,
        agent,
        Metric(MEMORY_AVAILABLE, 8 * GiB),
        Metric(GPU_TOTAL, 1 * GiB, labels),
        Metric(GPU_USED, 900 * MiB, labels),
        disk(50 * GiB),
    )
    message = refused(services, "smollm2", "agent", agent, gpu_layers=-1)
    assert "needs 183.8 MiB of GPU memory for its offloaded layers but 124.0 MiB is free" in message
    # Ten of its 31 layers fit in 124 MiB.
    assert assign(services, "smollm2", "agent", agent, gpu_layers=10).agents == (agent,)


def test_the_newest_telemetry_sample_counts(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    report(services, agent, Metric(MEMORY_AVAILABLE, 8 * GiB), seq=1)
    services.telemetry.ingest(
        agent,
        TelemetryBatch(
            (SequencedSample(2, Sample(T0 + timedelta(seconds=1), (Metric(MEMORY_AVAILABLE, 0),))),)
        ),
    )
    assert "but 0 B is available" in refused(services, "smollm2", "agent", agent)


def test_an_agent_that_only_said_hello_is_checked_against_its_memory(
    services: ControlPlaneServices,
) -> None:
    agent = enroll(services)
    add_model(services)
    services.fleet.record_hello(
        agent, Hello(agent, "1.0", Hardware(cpu_cores=4, memory_bytes=256 * MiB))
    )
    message = refused(services, "smollm2", "agent", agent)
    assert "but 256.0 MiB is available" in message
    services.fleet.record_hello(agent, Hello(agent, "1.0", Hardware(memory_bytes=16 * GiB)))
    # The Hello says nothing of GPUs or disk: offloading cannot be checked, so it goes through.
    view = assign(services, "smollm2", "agent", agent, gpu_layers=-1)
    assert (view.agents, view.fit_unchecked) == ((agent,), ())


def test_an_agent_that_reported_nothing_is_accepted_unchecked(
    services: ControlPlaneServices,
) -> None:
    quiet = enroll(services, site="hq", name="quiet")
    measured = enroll(services, site="hq", name="measured")
    add_model(services)
    report(services, measured, Metric(MEMORY_AVAILABLE, 8 * GiB), disk(50 * GiB))
    view = assign(services, "smollm2", "site", "hq", context_length=131_072)
    assert set(view.agents) == {quiet, measured}
    assert view.fit_unchecked == (quiet,)
    for agent in (quiet, measured):
        assert served(services, agent) == {"smollm2": "smollm2@1"}
    # The listing does not repeat the fit check.
    assert services.assignments.get(view.id).fit_unchecked == ()


def test_every_agent_that_cannot_hold_it_is_named(services: ControlPlaneServices) -> None:
    small = enroll(services, site="hq", name="small")
    tiny = enroll(services, site="hq", name="tiny")
    roomy = enroll(services, site="hq", name="roomy")
    quiet = enroll(services, site="hq", name="quiet")
    add_model(services)
    report(services, small, Metric(MEMORY_AVAILABLE, 400 * MiB), disk(50 * GiB))
    report(services, tiny, Metric(MEMORY_AVAILABLE, 100 * MiB), disk(10 * MiB))
    report(services, roomy, Metric(MEMORY_AVAILABLE, 8 * GiB), disk(50 * GiB))
    message = refused(services, "smollm2", "site", "hq")
    reasons = message.split(": ", 1)[1].split(" | ")
    assert sorted(r.split(":")[0] for r in reasons) == sorted(
        [f"agent {small} (small)", f"agent {tiny} (tiny)"]
    )
    tiny_reason = next(r for r in reasons if tiny in r)
    assert "but 100.0 MiB is available; needs 93.8 MiB of disk but 10.0 MiB is free" in tiny_reason
    assert roomy not in message
    assert quiet not in message
    for agent in (small, tiny, roomy, quiet):
        assert generation(services, agent) == 0
