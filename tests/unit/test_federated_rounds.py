"""`SiteRounds` and `JobGrid` with real Flower messages and a fake grid (no Flower process):
which replies are dropped and why, FedAvg over the rest, the round files, the round offset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from common.federated.adapter_tensors import load_adapter
from common.federated.flower_messages import ADAPTER_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES
from controlplane.federated.run_plan import read_json, round_file
from controlplane.federated.server_rounds import JobGrid, RoundFailed, SiteRounds

SHAPES = {"layers.0.q_proj.lora_A": (2, 3), "layers.0.q_proj.lora_B": (4, 2)}
SITES = {11: "agent-a", 22: "agent-b", 33: "agent-c"}


class FakeGrid(Grid):
    """Answers which nodes are connected; records what is asked of it."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)
        self.runs: list[Run] = []

    def set_run(self, run: Run) -> None:
        self.runs.append(run)

    @property
    def run(self) -> Run:
        return self.runs[-1]

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return [f"id-{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return []


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ServerApp process has set before it builds messages."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def fedavg(sites: int = len(SITES)) -> FedAvg:
    return FedAvg(  # as the ServerApp builds it
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=sites,
        min_available_nodes=sites,
        weighted_by_key=NUM_EXAMPLES,
        arrayrecord_key=ADAPTER_KEY,
        configrecord_key=CONFIG_KEY,
    )


def rounds(
    directory: Path, *, first_round: int = 1, sites: Mapping[int, str] = SITES
) -> SiteRounds:
    return SiteRounds(fedavg(len(sites)), sites, SHAPES, directory, first_round=first_round)


def adapter(value: float) -> dict[str, np.ndarray]:
    return {key: np.full(shape, value, dtype=np.float32) for key, shape in SHAPES.items()}


def array_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in tensors.items()})


def wire_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """What an adapter weighs in a message (each array serialised with its header)."""
    sizes = [len(array.data) for array in array_record(tensors).values()]
    assert sum(sizes) > sum(v.nbytes for v in tensors.values())
    return sum(sizes)


def train_message(node_id: int) -> Message:
    content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})})
    return Message(content, node_id, "train")


def metrics(examples: Any = 10, loss: float = 1.5) -> MetricRecord:
    return MetricRecord(
        {NUM_EXAMPLES: examples, "train-loss-last": loss, "train-seconds": 2.0, "load-seconds": 1.0}
    )


def reply(
    node_id: int,
    tensors: Mapping[str, np.ndarray] | None = None,
    record: MetricRecord | None = None,
    *,
    with_metrics: bool = True,
) -> Message:
    content = RecordDict()
    if tensors is not None:
        content[ADAPTER_KEY] = array_record(tensors)
    if with_metrics:
        content[METRICS_KEY] = record if record is not None else metrics()
    return Message(content, reply_to=train_message(node_id))


def error_reply(node_id: int, reason: str) -> Message:
    return Message(Error(code=1, reason=reason), reply_to=train_message(node_id))


def test_a_reply_is_from_the_node_the_message_went_to() -> None:
    assert reply(22, adapter(1.0)).metadata.src_node_id == 22


def test_accepted_adapters_are_averaged_by_examples_and_the_round_is_written(
    tmp_path: Path,
) -> None:
    strategy = rounds(tmp_path)
    replies = [
        reply(11, adapter(1.0), metrics(10, loss=2.0)),
        reply(22, adapter(4.0), metrics(30, loss=1.0)),
        reply(33, adapter(100.0), metrics(60, loss=9.0)),
    ]
    arrays, aggregate = strategy.aggregate_train(1, replies)
    expected = (1.0 * 10 + 4.0 * 30 + 100.0 * 60) / 100
    assert arrays is not None
    for key, shape in SHAPES.items():
        np.testing.assert_allclose(arrays[key].numpy(), np.full(shape, expected), rtol=1e-6)
    assert aggregate is not None
    assert aggregate["train-loss-last"] == pytest.approx((2.0 * 10 + 1.0 * 30 + 9.0 * 60) / 100)
    saved = load_adapter(round_file(tmp_path, 1, "npz"), 1 << 20)
    assert set(saved) == set(SHAPES)
    for key, shape in SHAPES.items():
        np.testing.assert_allclose(saved[key], np.full(shape, expected), rtol=1e-6)
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["round"] == 1
    assert report["phase"] == "train"
    assert report["participants"] == ["agent-a", "agent-b", "agent-c"]
    assert report["dropped"] == {}
    assert report["sites"]["agent-b"][NUM_EXAMPLES] == 30.0
    assert report["sites"]["agent-c"]["train-loss-last"] == 9.0
    assert report["bytes_up"] == 3 * wire_bytes(adapter(1.0))
    assert report["train_s"] == 2.0
    assert report["load_s"] == 1.0
    assert report["aggregate"]["train-loss-last"] == pytest.approx(5.9)
    assert report["finished_at"] >= report["started_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001.json", "round-0001.npz"]


def test_bad_replies_are_dropped_with_their_reasons_and_the_rest_averaged(
    tmp_path: Path,
) -> None:
    sites = {n: f"agent-{n}" for n in range(1, 11)}
    strategy = rounds(tmp_path, sites=sites)
    wrong_shape = adapter(5.0)
    wrong_shape["layers.0.q_proj.lora_A"] = np.zeros((3, 3), dtype=np.float32)
    with_nan = adapter(5.0)
    with_nan["layers.0.q_proj.lora_B"][1, 1] = np.nan
    with_inf = adapter(5.0)
    with_inf["layers.0.q_proj.lora_A"][0, 0] = -np.inf
    missing_tensor = {"layers.0.q_proj.lora_A": np.zeros((2, 3), dtype=np.float32)}
    replies = [
        reply(1, adapter(2.0), metrics(1)),
        reply(2, adapter(8.0), metrics(3)),
        reply(3, wrong_shape),
        reply(4, with_nan),
        reply(5, with_inf),
        reply(6, adapter(5.0), with_metrics=False),
        reply(7, adapter(5.0), metrics(0)),
        reply(8, adapter(5.0), metrics(-4)),
        error_reply(9, "the dataset is missing"),
        reply(10, missing_tensor),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    expected = (2.0 * 1 + 8.0 * 3) / 4
    for key in SHAPES:
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6)
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["participants"] == ["agent-1", "agent-2"]
    dropped = report["dropped"]
    assert set(dropped) == {f"agent-{n}" for n in range(3, 11)}
    assert "has shape (3, 3), expected (2, 3)" in dropped["agent-3"]
    assert "NaN or infinite" in dropped["agent-4"]
    assert "NaN or infinite" in dropped["agent-5"]
    assert dropped["agent-6"] == "the reply lacks the adapter or its metrics"
    assert dropped["agent-7"] == "the reply's num-examples is not a positive number"
    assert dropped["agent-8"] == "the reply's num-examples is not a positive number"
    assert dropped["agent-9"] == "the dataset is missing"
    assert "lacks 1 tensor" in dropped["agent-10"]
    assert set(report["sites"]) == {"agent-1", "agent-2"}


@pytest.mark.parametrize("examples", [float("nan"), float("inf"), 0.0, -1.0, [3, 4]])
def test_num_examples_must_be_a_positive_finite_number(tmp_path: Path, examples: Any) -> None:
    strategy = rounds(tmp_path, sites={1: "good", 2: "bad"})
    replies = [reply(1, adapter(1.0), metrics(2)), reply(2, adapter(3.0), metrics(examples))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["layers.0.q_proj.lora_A"].numpy(), 1.0)
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["dropped"] == {"bad": "the reply's num-examples is not a positive number"}


def test_a_reply_without_the_adapter_is_dropped(tmp_path: Path) -> None:
    strategy = rounds(tmp_path, sites={1: "good", 2: "bad"})
    strategy.aggregate_train(1, [reply(1, adapter(1.0)), reply(2, None)])
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["dropped"] == {"bad": "the reply lacks the adapter or its metrics"}


def test_a_site_that_did_not_answer_is_reported_as_dropped(tmp_path: Path) -> None:
    strategy = rounds(tmp_path)
    strategy.aggregate_train(1, [reply(11, adapter(1.0)), reply(33, adapter(1.0))])
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["participants"] == ["agent-a", "agent-c"]
    assert list(report["dropped"]) == ["agent-b"]
    assert "no answer" in report["dropped"]["agent-b"]


def test_a_round_without_a_usable_adapter_fails_with_every_reason(tmp_path: Path) -> None:
    strategy = rounds(tmp_path, first_round=3)
    replies = [error_reply(11, "out of memory"), reply(22, adapter(float("nan")))]
    with pytest.raises(RoundFailed) as caught:
        strategy.aggregate_train(2, replies)
    message = str(caught.value)
    assert message.startswith("round 4: no usable adapter came back (")
    assert "agent-a: out of memory" in message
    assert "agent-b: adapter rejected:" in message
    assert "agent-c: no answer" in message
    report = read_json(round_file(tmp_path, 4, "json"))
    assert report["participants"] == []
    assert set(report["dropped"]) == {"agent-a", "agent-b", "agent-c"}
    assert "aggregate" not in report
    assert not round_file(tmp_path, 4, "npz").exists()
    with pytest.raises(RoundFailed, match=r"round 1: .*agent-a: no answer"):
        rounds(tmp_path).aggregate_train(1, [])


def test_an_error_reason_is_clipped(tmp_path: Path) -> None:
    strategy = rounds(tmp_path, sites={1: "good", 2: "chatty"})
    strategy.aggregate_train(1, [reply(1, adapter(1.0)), error_reply(2, "x" * 5000)])
    report = read_json(round_file(tmp_path, 1, "json"))
    assert report["dropped"]["chatty"] == "x" * 300


def test_the_first_round_offset_names_the_files_and_the_config(tmp_path: Path) -> None:
    strategy = rounds(tmp_path, first_round=5)
    grid = FakeGrid([33, 11, 22, 99])
    arrays = array_record(adapter(0.5))
    messages = list(strategy.configure_train(2, arrays, ConfigRecord({"job-id": "j"}), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 22, 33]  # never node 99
    for message in messages:
        assert message.metadata.message_type == "train"
        config = message.content.config_records[CONFIG_KEY]
        assert config["server-round"] == 6
        assert config["job-id"] == "j"
        np.testing.assert_array_equal(
            message.content.array_records[ADAPTER_KEY]["layers.0.q_proj.lora_B"].numpy(), 0.5
        )
    replies = [reply(n, adapter(float(n))) for n in SITES]
    strategy.aggregate_train(2, replies)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0006.json", "round-0006.npz"]
    report = read_json(round_file(tmp_path, 6, "json"))
    assert report["round"] == 6
    assert report["bytes_down"] == 3 * wire_bytes(adapter(0.5))


def test_evaluation_is_not_configured_per_round(tmp_path: Path) -> None:
    strategy = rounds(tmp_path)
    grid = FakeGrid(SITES)
    assert (
        list(strategy.configure_evaluate(1, array_record(adapter(0.0)), ConfigRecord(), grid)) == []
    )
    assert strategy.aggregate_evaluate(1, []) is None


def test_the_job_grid_answers_only_the_jobs_live_nodes() -> None:
    inner = FakeGrid([5, 11, 22, 7])
    grid = JobGrid(inner, SITES)
    assert list(grid.get_node_ids()) == [11, 22]  # 33 is not connected, 5 and 7 are others'
    inner.node_ids = []
    assert list(grid.get_node_ids()) == []
    inner.node_ids = [33, 22, 11]
    assert list(grid.get_node_ids()) == [11, 22, 33]
    assert list(JobGrid(inner, {}).get_node_ids()) == []


def test_the_job_grid_passes_the_rest_through() -> None:
    inner = FakeGrid([11])
    grid = JobGrid(inner, SITES)
    run = Run.create_empty(run_id=42)
    grid.set_run(run)
    assert inner.runs == [run]
    assert grid.run is run
    message = grid.create_message(RecordDict(), "train", 11, "g")
    assert (message.metadata.dst_node_id, message.metadata.group_id) == (11, "g")
    assert list(grid.push_messages([message])) == ["id-11"]
