"""Desired states: one generation per change, validation, listeners told only after commit."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlmodel import col, select

from common.control import AdapterAssignment, DesiredState, ModelAssignment
from common.errors import InvalidArgument, NotFound
from controlplane.db.database import Database
from controlplane.db.models import Agent, AuditEvent, DesiredStateRecord
from controlplane.desired_state import DesiredStates
from controlplane.services import ControlPlaneServices

AGENT = "3f0e1c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SMOL = ModelAssignment(alias="smol", path="/models/smol.gguf", context_length=2048)
BIG = ModelAssignment(alias="big.v2", path="/models/big.gguf", gpu_layers=-1, queue_depth=0)


@pytest.fixture
def desired(database: Database) -> DesiredStates:
    with database.session() as session:
        for agent_id in (AGENT, OTHER):
            session.add(Agent(id=agent_id, name="edge", enrolled_at=datetime.now(UTC)))
    return ControlPlaneServices.build(database).desired


def set_models(
    db: Database, desired: DesiredStates, models: list[ModelAssignment], agent_id: str = AGENT
) -> DesiredState:
    with db.session() as session:
        return desired.set_models(session, agent_id, models, actor="alice")


def set_labels(db: Database, desired: DesiredStates, labels: dict[str, str]) -> DesiredState:
    with db.session() as session:
        return desired.set_labels(session, AGENT, labels, actor="bob")


def desired_generation(db: Database, agent_id: str = AGENT) -> int:
    with db.session() as session:
        agent = session.get(Agent, agent_id)
        assert agent is not None
        return agent.desired_generation


def test_an_agent_without_changes_is_at_generation_zero(desired: DesiredStates) -> None:
    state = desired.current(AGENT)
    assert state.generation == 0
    assert state.models == ()
    assert dict(state.labels) == {}
    assert desired.current("no-such-agent").generation == 0


def test_each_change_is_the_next_generation_and_keeps_the_rest(
    database: Database, desired: DesiredStates
) -> None:
    first = set_models(database, desired, [SMOL])
    assert (first.generation, first.models, dict(first.labels)) == (1, (SMOL,), {})
    second = set_labels(database, desired, {"tier": "gold"})
    assert (second.generation, second.models, dict(second.labels)) == (2, (SMOL,), {"tier": "gold"})
    third = set_models(database, desired, [BIG, SMOL])
    assert (third.generation, third.models, dict(third.labels)) == (
        3,
        (BIG, SMOL),
        {"tier": "gold"},
    )
    assert desired.current(AGENT) == third
    assert desired_generation(database) == 3
    assert set_models(database, desired, []).models == ()
    assert desired.current(AGENT).generation == 4
    # Other agents count on their own.
    assert set_models(database, desired, [SMOL], agent_id=OTHER).generation == 1
    assert desired_generation(database, OTHER) == 1
    with database.session() as session:
        records = session.exec(
            select(DesiredStateRecord).where(DesiredStateRecord.agent_id == AGENT)
        ).all()
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    assert sorted(r.generation for r in records) == [1, 2, 3, 4]
    assert [(e.actor, e.action, e.detail["generation"]) for e in events[:3]] == [
        ("alice", "desired_state.set_models", 1),
        ("bob", "desired_state.set_labels", 2),
        ("alice", "desired_state.set_models", 3),
    ]


def test_listeners_hear_of_a_change_only_after_it_commits(
    database: Database, desired: DesiredStates
) -> None:
    heard: list[str] = []
    desired.add_listener(lambda states: heard.extend(sorted(states)))
    with database.session() as session:
        desired.set_models(session, AGENT, [SMOL], actor="alice")
        desired.set_labels(session, AGENT, {"a": "b"}, actor="alice")
        desired.set_models(session, OTHER, [SMOL], actor="alice")
        assert heard == []  # flushed, not committed
    assert heard == sorted([AGENT, OTHER])
    assert desired.current(AGENT).generation == 2


def test_listeners_hear_nothing_of_a_rolled_back_change(
    database: Database, desired: DesiredStates
) -> None:
    heard: list[str] = []
    desired.add_listener(lambda states: heard.extend(sorted(states)))

    def change_then_fail() -> None:
        with database.session() as session:
            desired.set_models(session, AGENT, [SMOL], actor="alice")
            raise RuntimeError("something after the change failed")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert heard == []
    assert desired.current(AGENT).generation == 0
    assert desired_generation(database) == 0
    set_models(database, desired, [BIG])  # the next commit reports only its own change
    assert heard == [AGENT]
    assert desired.current(AGENT).generation == 1


def test_a_failing_listener_neither_undoes_the_change_nor_silences_others(
    database: Database, desired: DesiredStates
) -> None:
    heard: list[str] = []

    def broken(states: object) -> None:
        raise RuntimeError("listener bug")

    desired.add_listener(broken)
    desired.add_listener(lambda states: heard.extend(sorted(states)))
    assert set_models(database, desired, [SMOL]).generation == 1
    assert heard == [AGENT]
    assert desired.current(AGENT).models == (SMOL,)


def test_concurrent_changes_get_distinct_generations(
    database: Database, desired: DesiredStates
) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def change(n: int) -> None:
        barrier.wait()
        try:
            set_models(database, desired, [replace(SMOL, alias=f"m{n}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=change, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert desired.current(AGENT).generation == 4
    assert desired_generation(database) == 4


def test_changing_an_unknown_agent_is_not_found(database: Database, desired: DesiredStates) -> None:
    with pytest.raises(NotFound):
        set_models(database, desired, [SMOL], agent_id="00000000-0000-4000-8000-000000000000")


BAD_MODELS = {
    "bad alias": [replace(SMOL, alias="has space")],
    "empty alias": [replace(SMOL, alias="")],
    "long alias": [replace(SMOL, alias="a" * 64)],
    "unicode alias": [replace(SMOL, alias="smöl")],
    "duplicate alias": [SMOL, replace(BIG, alias=SMOL.alias)],
    "relative path": [replace(SMOL, path="models/smol.gguf")],
    "empty path": [replace(SMOL, path="")],
    "newline in path": [replace(SMOL, path="/models/a\nb.gguf")],
    "context too small": [replace(SMOL, context_length=63)],
    "context too large": [replace(SMOL, context_length=1_048_577)],
    "gpu layers": [replace(SMOL, gpu_layers=-2)],
    "queue negative": [replace(SMOL, queue_depth=-1)],
    "queue too deep": [replace(SMOL, queue_depth=1025)],
    "bool as int": [replace(SMOL, queue_depth=True)],
    "too many": [replace(SMOL, alias=f"m{i}") for i in range(65)],
}


@pytest.mark.parametrize("models", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_invalid_assignments_are_refused(
    database: Database, desired: DesiredStates, models: list[ModelAssignment]
) -> None:
    with pytest.raises(InvalidArgument):
        set_models(database, desired, models)
    assert desired.current(AGENT).generation == 0


def test_the_limits_themselves_are_accepted(database: Database, desired: DesiredStates) -> None:
    edge = [
        replace(SMOL, alias=f"m{i}", context_length=64 if i % 2 else 1_048_576, queue_depth=1024)
        for i in range(64)
    ]
    assert set_models(database, desired, edge).models == tuple(edge)


@pytest.mark.parametrize(
    "labels", [{"k": "v\n"}, {"k" * 64: "v"}, {f"k{i}": "v" for i in range(33)}, {"k": "ü"}]
)
def test_invalid_labels_are_refused(
    database: Database, desired: DesiredStates, labels: dict[str, str]
) -> None:
    with pytest.raises(InvalidArgument):
        set_labels(database, desired, labels)
    assert desired.current(AGENT).generation == 0


# -- LoRA adapters of registry models ----------------------------------------------------------

LORA = AdapterAssignment("sql", "b" * 64, 468_992, "sql-lora", "1")
REGISTRY = ModelAssignment(
    alias="chat",
    sha256="a" * 64,
    size_bytes=98_362_432,
    model_name="smollm2",
    model_version="1",
    adapters=(replace(LORA, name="poet", sha256="c" * 64), LORA),
)


def test_adapters_survive_the_stored_json(database: Database, desired: DesiredStates) -> None:
    plain = DesiredStates(database)  # no registry resolver: the models are stored as given
    state = set_models(database, plain, [REGISTRY, SMOL])
    assert state.models == (REGISTRY, SMOL)
    assert plain.current(AGENT) == state
    with database.session() as session:
        record = session.exec(select(DesiredStateRecord)).one()
    assert record.spec["models"][0]["adapters"][1] == {
        "name": "sql",
        "sha256": "b" * 64,
        "size_bytes": 468_992,
        "registry_name": "sql-lora",
        "registry_version": "1",
    }
    assert record.spec["models"][1]["adapters"] == []


BAD_ADAPTERS = {
    "on a path model": [replace(SMOL, adapters=(LORA,))],
    "bad name": [replace(REGISTRY, adapters=(replace(LORA, name="a:b"),))],
    "empty name": [replace(REGISTRY, adapters=(replace(LORA, name=""),))],
    "duplicate name": [replace(REGISTRY, adapters=(LORA, replace(LORA, sha256="c" * 64)))],
    "bad sha256": [replace(REGISTRY, adapters=(replace(LORA, sha256="B" * 64),))],
    "no size": [replace(REGISTRY, adapters=(replace(LORA, size_bytes=0),))],
    "too many": [replace(REGISTRY, adapters=tuple(replace(LORA, name=f"a{i}") for i in range(17)))],
    "not an adapter": [replace(REGISTRY, adapters=("sql",))],  # type: ignore[arg-type]
}


@pytest.mark.parametrize("models", BAD_ADAPTERS.values(), ids=BAD_ADAPTERS.keys())
def test_invalid_adapters_are_refused(
    database: Database, desired: DesiredStates, models: list[ModelAssignment]
) -> None:
    with pytest.raises(InvalidArgument):
        set_models(database, DesiredStates(database), models)
    assert desired.current(AGENT).generation == 0
