"""Federated tasks in desired states: stored in a new generation, kept by every other change,
bounded, and carried over the wire (protobuf) unchanged."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest
from sqlmodel import select

from common.control import (
    MAX_FEDERATED_TASKS,
    DesiredState,
    FederatedTask,
    ModelAssignment,
    PolicyDocument,
)
from common.errors import InvalidArgument
from common.proto_convert import desired_state_from_pb, desired_state_to_pb
from controlplane.db.database import Database
from controlplane.db.models import Agent, AuditEvent
from controlplane.desired_state import DesiredStates
from controlplane.services import ControlPlaneServices
from outpost.v1 import control_pb2 as cpb

AGENT = "3f0e1c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SMOL = ModelAssignment(alias="smol", path="/models/smol.gguf", context_length=2048)


def task(n: int = 0, **changes: object) -> FederatedTask:
    values: dict[str, object] = {
        "job_id": str(uuid.UUID(int=n + 1)),
        "dataset": f"support-{n}",
        "base_sha256": f"{n:x}" * 64 if n < 16 else "a" * 64,
        "fleet_port": 9092,
        "threads": 2,
        "nice": 10,
    }
    return FederatedTask(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture
def database(tmp_path: Path, migrated_sqlite: Path) -> Iterator[Database]:
    shutil.copyfile(migrated_sqlite, tmp_path / "outpost.db")
    db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def desired(database: Database) -> DesiredStates:
    with database.session() as session:
        for agent_id in (AGENT, OTHER):
            session.add(
                Agent(id=agent_id, name="edge", site="berlin", enrolled_at=datetime.now(UTC))
            )
    return ControlPlaneServices.build(database).desired


def set_tasks(
    db: Database, desired: DesiredStates, tasks: list[FederatedTask], agent_id: str = AGENT
) -> DesiredState:
    with db.session() as session:
        return desired.set_federated_tasks(session, agent_id, tasks, actor="runner")


def test_tasks_are_stored_in_a_new_generation_keeping_models_and_labels(
    database: Database, desired: DesiredStates
) -> None:
    with database.session() as session:
        desired.set_models(session, AGENT, [SMOL], actor="alice")
        desired.set_labels(session, AGENT, {"tier": "gold"}, actor="alice")
    tasks = [task(1), task(2, threads=4, nice=0)]
    state = set_tasks(database, desired, tasks)
    assert state.generation == 3
    assert state.federated_tasks == tuple(tasks)
    assert state.models == (SMOL,)
    assert dict(state.labels) == {"tier": "gold"}
    assert desired.current(AGENT) == state
    assert desired.current(OTHER).federated_tasks == ()
    with database.session() as session:
        (event,) = session.exec(
            select(AuditEvent).where(AuditEvent.action == "desired_state.set_federated_tasks")
        ).all()
    assert event.actor == "runner"
    assert event.target == f"agent:{AGENT}"
    assert event.detail["generation"] == 3
    assert [t["job_id"] for t in event.detail["federated_tasks"]] == [t.job_id for t in tasks]


def test_other_changes_keep_the_tasks(database: Database, desired: DesiredStates) -> None:
    tasks = (task(1), task(2))
    set_tasks(database, desired, list(tasks))
    with database.session() as session:
        assert desired.set_labels(session, AGENT, {"a": "b"}, actor="bob").federated_tasks == tasks
    with database.session() as session:
        assert desired.set_models(session, AGENT, [SMOL], actor="bob").federated_tasks == tasks
    policy = PolicyDocument(version=1, digest="d" * 64, document="version: 1\n")
    with database.session() as session:
        states = desired.set_policy_for_all(session, policy, actor="carol")
    assert states[AGENT].federated_tasks == tasks
    assert states[OTHER].federated_tasks == ()
    assert desired.current(AGENT).federated_tasks == tasks
    with database.session() as session:
        states = desired.set_models_for_site(session, "berlin", [SMOL], actor="dave")
    assert states[AGENT].federated_tasks == tasks
    with database.session() as session:
        states = desired.set_inference_keys_for_all(session, actor="erin")
    assert states[AGENT].federated_tasks == tasks
    current = desired.current(AGENT)
    assert current.generation == 6
    assert current.federated_tasks == tasks
    assert dict(current.labels) == {"a": "b"}
    assert current.models == (SMOL,)


def test_an_empty_list_ends_every_task(database: Database, desired: DesiredStates) -> None:
    set_tasks(database, desired, [task(1)])
    state = set_tasks(database, desired, [])
    assert (state.generation, state.federated_tasks) == (2, ())
    assert desired.current(AGENT).federated_tasks == ()


def test_at_most_eight_tasks(database: Database, desired: DesiredStates) -> None:
    assert MAX_FEDERATED_TASKS == 8
    eight = [task(n) for n in range(8)]
    assert set_tasks(database, desired, eight).federated_tasks == tuple(eight)
    with pytest.raises(InvalidArgument, match="at most 8 jobs"):
        set_tasks(database, desired, [task(n) for n in range(9)])
    current = desired.current(AGENT)
    assert (current.generation, current.federated_tasks) == (1, tuple(eight))


def test_an_actor_is_required(database: Database, desired: DesiredStates) -> None:
    with database.session() as session, pytest.raises(InvalidArgument):
        desired.set_federated_tasks(session, AGENT, [task(1)], actor="")


# -- protobuf --------------------------------------------------------------------------------


def test_federated_tasks_round_trip_over_the_wire() -> None:
    state = DesiredState(
        generation=9,
        models=(SMOL,),
        labels=MappingProxyType({"tier": "gold"}),
        federated_tasks=(
            task(1),
            task(2, fleet_port=65535, threads=256, nice=19),
            task(3, threads=1, nice=0),
        ),
    )
    wire = desired_state_to_pb(state).SerializeToString()
    decoded = desired_state_from_pb(cpb.DesiredState.FromString(wire))
    assert decoded == state
    assert desired_state_from_pb(cpb.DesiredState.FromString(b"")).federated_tasks == ()


def test_a_state_with_eight_tasks_is_read() -> None:
    state = DesiredState(generation=1, federated_tasks=tuple(task(n) for n in range(8)))
    decoded = desired_state_from_pb(desired_state_to_pb(state))
    assert decoded.federated_tasks == state.federated_tasks


def test_more_than_eight_tasks_on_the_wire_are_refused() -> None:
    message = desired_state_to_pb(DesiredState(generation=1))
    for n in range(9):
        message.federated_tasks.add(
            job_id=str(uuid.UUID(int=n + 1)), dataset="d", base_sha256="a" * 64, fleet_port=1
        )
    with pytest.raises(InvalidArgument, match="more than 8 federated tasks"):
        desired_state_from_pb(cpb.DesiredState.FromString(message.SerializeToString()))


def test_task_fields_are_passed_as_sent_for_the_agent_to_check() -> None:
    message = cpb.DesiredState(
        generation=2,
        federated_tasks=[
            cpb.FederatedTask(job_id="../x", dataset="a/b", base_sha256="zz", fleet_port=70000)
        ],
    )
    (decoded,) = desired_state_from_pb(message).federated_tasks
    assert (decoded.job_id, decoded.dataset, decoded.base_sha256) == ("../x", "a/b", "zz")
    assert decoded.fleet_port == 70000
    assert (decoded.threads, decoded.nice) == (0, 0)  # proto3 zero values, not the defaults
