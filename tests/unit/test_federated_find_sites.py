"""The ServerApp's `find_sites` with real Flower messages and a fake grid: a node that does not
answer its query in time is asked again (e.g. a SuperNode still busy with the previous run's
message after a control-plane restart); one that never answers is named when the wait ends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common.federated.flower_messages import SITE_KEY
from controlplane.federated import server_app
from controlplane.federated.run_plan import RunPlan
from controlplane.federated.server_app import ParticipantsMissing, find_sites
from tests.unit.test_federated_rounds import FakeGrid, server_identity

__all__ = ["server_identity"]  # the fixture, shared
pytestmark = pytest.mark.usefixtures("server_identity")


class QueryGrid(FakeGrid):
    """Answers the n-th send_and_receive with the n-th mapping of node → site record; a node
    missing from it does not answer within the timeout."""

    def __init__(self, node_ids: Iterable[int], answers: list[Mapping[int, ConfigRecord]]):
        super().__init__(node_ids)
        self.answers = answers
        self.asked: list[list[int]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        assert all(m.metadata.message_type == "query" for m in sent)
        self.asked.append([m.metadata.dst_node_id for m in sent])
        call = len(self.asked) - 1
        answers = self.answers[call] if call < len(self.answers) else {}
        return [
            Message(RecordDict({SITE_KEY: answers[m.metadata.dst_node_id]}), reply_to=m)
            for m in sent
            if m.metadata.dst_node_id in answers
        ]


def site(agent: str) -> ConfigRecord:
    return ConfigRecord({"job-id": "j", "agent-id": agent, "ready": True})


def plan(tmp_path: Path, wait_s: float = 30.0) -> RunPlan:
    return RunPlan(
        job_id="j",
        output_dir=str(tmp_path),
        base_gguf="unused.gguf",
        agents=("agent-a", "agent-b"),
        rounds=1,
        min_participants=2,
        participant_wait_s=wait_s,
    )


@pytest.fixture(autouse=True)
def no_polling_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_app, "POLL_S", 0.0)


def test_a_node_that_did_not_answer_is_asked_again(tmp_path: Path) -> None:
    grid = QueryGrid([11, 22], [{11: site("agent-a")}, {22: site("agent-b")}])
    assert find_sites(grid, plan(tmp_path)) == {11: "agent-a", 22: "agent-b"}
    assert grid.asked == [[11, 22], [22]]  # only the silent one, with a new message


def test_a_node_that_never_answers_is_named_when_the_wait_ends(tmp_path: Path) -> None:
    grid = QueryGrid([11, 22], [{11: site("agent-a")}])
    with pytest.raises(ParticipantsMissing, match="agent-b: no SuperNode connected"):
        find_sites(grid, plan(tmp_path, wait_s=0.2))
    assert grid.asked[0] == [11, 22]
    assert all(again == [22] for again in grid.asked[1:])  # asked again, never 11
