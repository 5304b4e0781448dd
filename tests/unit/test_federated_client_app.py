"""The site's ClientApp handlers (`describe`, `train`, `evaluate`) called directly with real
Flower messages and contexts, the model loader and the trainer replaced: what a site answers
for unusable datasets and models, for another job's messages, and what a reply carries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from agent.federated import client_app
from agent.federated.client_app import SiteError, describe, evaluate, train
from agent.training import lora_training
from agent.training.lora_training import TrainingResult
from common.federated.flower_messages import (
    ADAPTER_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    SITE_KEY,
    RoundSettings,
)
from tests.unit.test_federated_rounds import (  # noqa: F401 (server_identity: a fixture)
    SHAPES,
    adapter,
    array_record,
    server_identity,
)

# Flower stamps messages with the sending task's identity, as test_federated_rounds does.
pytestmark = pytest.mark.usefixtures("server_identity")

JOB = "job-7"
OTHER_JOB = "job-9"
SHA = "ab" * 32
EXAMPLES = [{"text": f"example number {i}"} for i in range(10)]


class Loads:
    """Stands in for `_load_model`: records each call, returns a fake model."""

    def __init__(self) -> None:
        self.calls: list[Context] = []

    def __call__(self, context: Context) -> Any:
        self.calls.append(context)
        return SimpleNamespace(model="fake-model", tokenizer="fake-tokenizer")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Loads:
    recorder = Loads()
    monkeypatch.setattr(client_app, "_load_model", recorder)
    return recorder


def write_dataset(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    """A usable site's node config: a model file and a ten-example dataset."""
    model = tmp_path / "models" / f"{SHA}.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF fake")
    dataset = write_dataset(tmp_path / "datasets" / "notes", [json.dumps(e) for e in EXAMPLES])
    return {
        "job-id": JOB,
        "agent-id": "agent-a",
        "dataset-dir": str(dataset),
        "model-path": str(model),
        "base-sha256": SHA,
        "torch-cache": str(tmp_path / "torch"),
        "threads": 2,
    }


def context(node_config: Mapping[str, Any]) -> Context:
    return Context(
        run_id=7, node_id=11, node_config=dict(node_config), state=RecordDict(), run_config={}
    )


def query(job_id: str = JOB) -> Message:
    """As the ServerApp's `find_sites` asks every node."""
    content = RecordDict({CONFIG_KEY: ConfigRecord({"job-id": job_id})})
    return Message(content=content, message_type="query", dst_node_id=11)


def settings(job_id: str = JOB) -> RoundSettings:
    return RoundSettings(
        job_id=job_id,
        server_round=3,
        rank=2,
        alpha=4,
        targets=("q_proj",),
        learning_rate=0.001,
        local_steps=2,
        batch_size=1,
        max_seq_len=64,
        seed=5,
        freeze_a=False,
    )


def round_message(
    kind: str, job_id: str = JOB, tensors: Mapping[str, np.ndarray] | None = None
) -> Message:
    """A train or evaluate message: the adapter and the round settings, as FedAvg sends them."""
    content = RecordDict({CONFIG_KEY: settings(job_id).to_config()})
    if tensors is not None:
        content[ADAPTER_KEY] = array_record(tensors)
    return Message(content=content, message_type=kind, dst_node_id=11)


def site_reply(reply: Message) -> ConfigRecord:
    assert reply.metadata.message_type == "query"
    return reply.content.config_records[SITE_KEY]


def not_ready(node_config: Mapping[str, Any], loads: Loads) -> str:
    reply = describe(query(), context(node_config))
    record = site_reply(reply)
    assert record["ready"] is False
    assert record["job-id"] == JOB
    assert record["agent-id"] == "agent-a"
    metrics = reply.content.metric_records[METRICS_KEY]
    assert metrics["train-examples"] == 0
    assert metrics["heldout-examples"] == 0
    assert loads.calls == []  # an unusable site converts nothing
    reason = record["reason"]
    assert isinstance(reason, str)
    assert reason
    return reason


# describe -------------------------------------------------------------------------------------


def test_describe_ready_site_counts_examples_and_loads_its_model(
    site: dict[str, Any], loads: Loads
) -> None:
    ctx = context(site)
    reply = describe(query(), ctx)
    record = site_reply(reply)
    assert record["ready"] is True
    assert record["reason"] == ""
    assert record["job-id"] == JOB
    assert record["agent-id"] == "agent-a"
    metrics = reply.content.metric_records[METRICS_KEY]
    assert metrics["train-examples"] == len(EXAMPLES) - 2
    assert metrics["heldout-examples"] == 2  # the default 20% held out
    assert loads.calls == [ctx]  # converted now, not in the first round's time


def test_describe_for_another_job_does_not_load_the_model(
    site: dict[str, Any], loads: Loads
) -> None:
    reply = describe(query(OTHER_JOB), context(site))
    record = site_reply(reply)
    assert record["job-id"] == JOB  # the server drops nodes of other jobs by this
    assert record["ready"] is True
    assert loads.calls == []


def test_describe_without_the_base_model_file(site: dict[str, Any], loads: Loads) -> None:
    Path(site["model-path"]).unlink()
    reason = not_ready(site, loads)
    assert f"does not have the base model sha256:{SHA}" in reason


def test_describe_with_a_directory_at_the_model_path(site: dict[str, Any], loads: Loads) -> None:
    model = Path(site["model-path"])
    model.unlink()
    model.mkdir()
    assert f"does not have the base model sha256:{SHA}" in not_ready(site, loads)


def test_describe_with_the_dataset_directory_missing(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    site["dataset-dir"] = str(tmp_path / "datasets" / "absent")
    reason = not_ready(site, loads)
    assert "'absent'" in reason
    assert "not found" in reason


def test_describe_with_a_file_as_dataset_directory(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    path = tmp_path / "datasets" / "flat"
    path.write_text(json.dumps(EXAMPLES[0]) + "\n")
    site["dataset-dir"] = str(path)
    reason = not_ready(site, loads)
    assert "'flat'" in reason
    assert "not a directory" in reason


def test_describe_with_an_empty_dataset_directory(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    empty = tmp_path / "datasets" / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a .jsonl file")
    site["dataset-dir"] = str(empty)
    reason = not_ready(site, loads)
    assert "'empty'" in reason
    assert "no .jsonl files" in reason


def test_describe_with_jsonl_files_without_examples(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    blank = write_dataset(tmp_path / "datasets" / "blank", ["", "   "])
    site["dataset-dir"] = str(blank)
    reason = not_ready(site, loads)
    assert "'blank'" in reason
    assert "no examples" in reason


def test_describe_with_an_unreadable_dataset_file(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    # chmod 000 does not stop root from reading (tests may run as root): a directory named like
    # a .jsonl file cannot be read by anyone.
    folder = tmp_path / "datasets" / "locked"
    folder.mkdir()
    (folder / "data.jsonl").mkdir()
    site["dataset-dir"] = str(folder)
    reason = not_ready(site, loads)
    assert "'locked'" in reason
    assert "not a regular file" in reason


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"text": "unterminated', "malformed JSON"),
        ('["text", "a list"]', "expected a JSON object"),
        ('{"prompt": "q", "completion": "a"}', 'expected exactly one field, "text" or "messages"'),
        ('{"text": ""}', '"text" must be a non-empty string'),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role must be one of"),
    ],
)
def test_describe_with_a_malformed_dataset(
    site: dict[str, Any], loads: Loads, tmp_path: Path, line: str, expected: str
) -> None:
    good = [json.dumps(e) for e in EXAMPLES[:3]]
    folder = write_dataset(tmp_path / "datasets" / "broken", [*good, line])
    site["dataset-dir"] = str(folder)
    reason = not_ready(site, loads)
    assert reason.startswith("dataset 'broken': ")
    assert expected in reason
    assert "line 4" in reason


def test_describe_with_one_example_has_nothing_to_hold_out(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    folder = write_dataset(tmp_path / "datasets" / "single", [json.dumps(EXAMPLES[0])])
    site["dataset-dir"] = str(folder)
    reason = not_ready(site, loads)
    assert "'single'" in reason
    assert "nothing to hold out" in reason


def test_describe_truncates_a_long_reason(
    site: dict[str, Any], loads: Loads, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    site["dataset-dir"] = str(deep / "absent")  # the reason quotes the whole path
    reason = not_ready(site, loads)
    assert len(reason) == 500
    assert reason.startswith("dataset 'absent': ")


@pytest.mark.parametrize("key", ["job-id", "agent-id"])
def test_describe_with_node_config_lacking_identity_keys(
    site: dict[str, Any], loads: Loads, key: str
) -> None:
    del site[key]
    with pytest.raises(SiteError, match=f"node config lacks '{key}'"):
        describe(query(), context(site))
    assert loads.calls == []


@pytest.mark.parametrize("key", ["dataset-dir", "model-path"])
def test_describe_with_node_config_lacking_site_keys(
    site: dict[str, Any], loads: Loads, key: str
) -> None:
    site[key] = ""  # an empty value counts as missing
    assert f"node config lacks '{key}'" in not_ready(site, loads)


def test_describe_without_base_sha_when_the_model_is_missing(
    site: dict[str, Any], loads: Loads
) -> None:
    Path(site["model-path"]).unlink()
    del site["base-sha256"]
    assert "node config lacks 'base-sha256'" in not_ready(site, loads)


# train ----------------------------------------------------------------------------------------


class FakeTrainer:
    """Stands in for `train_adapter`: records its arguments, returns a fixed result."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = tensors
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> TrainingResult:
        self.calls.append(args)
        return TrainingResult(
            tensors=self.tensors,
            num_examples=8,
            metrics={
                "train_loss_first": 2.5,
                "train_loss_last": 1.25,
                "seconds": 3.0,
                "examples_seen": 16.0,
            },
        )


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    fake = FakeTrainer(adapter(0.5))
    monkeypatch.setattr(lora_training, "train_adapter", fake)
    return fake


def test_train_replies_with_only_the_adapter_and_metrics(
    site: dict[str, Any], loads: Loads, trainer: FakeTrainer
) -> None:
    sent = adapter(0.25)
    message = round_message("train", tensors=sent)
    ctx = context(site)
    reply = train(message, ctx)

    assert loads.calls == [ctx]
    [(model, tokenizer, examples, tensors, config)] = trainer.calls
    assert (model, tokenizer) == ("fake-model", "fake-tokenizer")
    assert len(examples) == len(EXAMPLES) - 2  # the held-out examples are not trained on
    assert sorted(tensors) == sorted(SHAPES)
    for key, value in tensors.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, sent[key])
    assert (config.rank, config.alpha, config.targets) == (2, 4, ("q_proj",))
    assert config.seed == 5 + 3  # the job's seed plus the round
    assert config.threads == 2

    assert reply.metadata.message_type == "train"
    assert reply.metadata.dst_node_id == message.metadata.src_node_id  # back to the server
    assert set(reply.content) == {ADAPTER_KEY, METRICS_KEY}  # no examples, no text
    returned = reply.content.array_records[ADAPTER_KEY]
    assert sorted(returned) == sorted(SHAPES)
    for key, array in returned.items():
        np.testing.assert_array_equal(array.numpy(), trainer.tensors[key])
    metrics = reply.content.metric_records[METRICS_KEY]
    assert set(metrics) == {
        NUM_EXAMPLES,
        "train-loss-first",
        "train-loss-last",
        "train-seconds",
        "load-seconds",
    }
    assert metrics[NUM_EXAMPLES] == 8
    assert metrics["train-loss-first"] == 2.5
    assert metrics["train-loss-last"] == 1.25
    assert metrics["train-seconds"] == 3.0
    load_s = metrics["load-seconds"]
    assert isinstance(load_s, float)
    assert load_s >= 0.0


def test_train_for_another_job_is_refused_before_loading(
    site: dict[str, Any], loads: Loads, trainer: FakeTrainer
) -> None:
    with pytest.raises(SiteError, match=f"takes part in job {JOB}, not {OTHER_JOB}"):
        train(round_message("train", OTHER_JOB, adapter(0.1)), context(site))
    assert loads.calls == []
    assert trainer.calls == []


def test_train_without_an_adapter(site: dict[str, Any], loads: Loads, trainer: FakeTrainer) -> None:
    with pytest.raises(SiteError, match="carries no adapter"):
        train(round_message("train"), context(site))
    assert trainer.calls == []


def test_train_with_an_unusable_dataset(
    site: dict[str, Any], loads: Loads, trainer: FakeTrainer, tmp_path: Path
) -> None:
    site["dataset-dir"] = str(tmp_path / "datasets" / "absent")
    with pytest.raises(SiteError, match="dataset 'absent'"):
        train(round_message("train", tensors=adapter(0.1)), context(site))
    assert loads.calls == []
    assert trainer.calls == []


def test_train_with_node_config_lacking_the_job(
    site: dict[str, Any], loads: Loads, trainer: FakeTrainer
) -> None:
    del site["job-id"]
    with pytest.raises(SiteError, match="node config lacks 'job-id'"):
        train(round_message("train", tensors=adapter(0.1)), context(site))
    assert loads.calls == []
    assert trainer.calls == []


# evaluate -------------------------------------------------------------------------------------


def test_evaluate_for_another_job_is_refused_before_loading(
    site: dict[str, Any], loads: Loads
) -> None:
    with pytest.raises(SiteError, match=f"takes part in job {JOB}, not {OTHER_JOB}"):
        evaluate(round_message("evaluate", OTHER_JOB, adapter(0.1)), context(site))
    assert loads.calls == []


def test_evaluate_replies_with_heldout_losses_only(
    site: dict[str, Any], loads: Loads, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, Any]] = []

    def heldout_loss(
        model: Any, tokenizer: Any, examples: Any, tensors: Any, max_seq_len: int, *, alpha: int
    ) -> float:
        calls.append((len(examples), tensors))
        assert (max_seq_len, alpha) == (64, 4)
        return 2.0 if tensors is None else 1.5

    monkeypatch.setattr(lora_training, "heldout_loss", heldout_loss)
    reply = evaluate(round_message("evaluate", tensors=adapter(0.5)), context(site))

    assert len(loads.calls) == 1
    assert [c[0] for c in calls] == [2, 2]  # the held-out examples, base then adapter
    assert calls[0][1] is None
    assert sorted(calls[1][1]) == sorted(SHAPES)
    assert set(reply.content) == {METRICS_KEY}
    metrics = reply.content.metric_records[METRICS_KEY]
    assert dict(metrics) == {
        NUM_EXAMPLES: 2,
        "base-heldout-loss": 2.0,
        "adapter-heldout-loss": 1.5,
    }
