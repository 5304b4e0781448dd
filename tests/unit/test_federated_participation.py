"""`FederatedParticipation` before enrollment: a task is reported failed, nothing is started."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.control.identity import IdentityStore
from agent.federated import participation
from agent.federated.participation import FederatedParticipation
from common.control import FederatedTask, ItemState

TASK = FederatedTask(
    job_id="0b6f2a57-3c1e-4d2b-9a61-5e8f2f3b7c11",
    dataset="notes",
    base_sha256="ab" * 32,
    fleet_port=9092,
)


class CountingStore(IdentityStore):
    """An identity store that counts how often the identity is read."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return super().load()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every SuperNodes (the SuperNode processes) the participation creates."""
    created: list[Any] = []

    def record(*args: Any) -> None:
        created.append(args)
        raise AssertionError("no SuperNode may be started")

    monkeypatch.setattr(participation, "SuperNodes", record)
    return created


def make(tmp_path: Path) -> tuple[FederatedParticipation, CountingStore]:
    state = tmp_path / "state"
    state.mkdir()
    store = CountingStore(state)
    models = tmp_path / "models"
    parts = FederatedParticipation(
        state, tmp_path / "datasets", lambda sha: models / sha, store, insecure=True
    )
    return parts, store


def test_not_enrolled_task_is_reported_failed(tmp_path: Path, started: list[Any]) -> None:
    parts, store = make(tmp_path)

    async def main() -> None:
        await parts.apply((TASK,))
        await parts.close()

    asyncio.run(main())
    assert store.loads == 1
    assert started == []
    [status] = parts.statuses()
    assert status.kind == "federated"
    assert status.name == TASK.job_id
    assert status.state is ItemState.FAILED
    assert "not enrolled" in status.error
    assert not (tmp_path / "state" / "federated").exists()


def test_not_enrolled_each_task_is_reported_then_cleared(
    tmp_path: Path, started: list[Any]
) -> None:
    parts, _ = make(tmp_path)
    other = FederatedTask(
        job_id="5d0c1e2f-8a7b-4c6d-9e0f-1a2b3c4d5e6f",
        dataset="logs",
        base_sha256="cd" * 32,
        fleet_port=9093,
    )

    asyncio.run(parts.apply((TASK, other)))
    assert sorted(s.name for s in parts.statuses()) == sorted([TASK.job_id, other.job_id])
    assert all(s.state is ItemState.FAILED for s in parts.statuses())

    asyncio.run(parts.apply(()))  # the tasks were withdrawn: nothing left to report
    assert parts.statuses() == []
    assert started == []


def test_no_tasks_starts_nothing(tmp_path: Path, started: list[Any]) -> None:
    parts, store = make(tmp_path)

    async def main() -> None:
        await parts.apply(())
        await parts.close()

    asyncio.run(main())
    assert store.loads == 0  # not even the identity is read
    assert started == []
    assert parts.statuses() == []
    assert not (tmp_path / "state" / "federated").exists()
