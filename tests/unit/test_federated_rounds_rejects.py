"""Replies that pass `SiteRounds`' own checks but that Flower's FedAvg refuses: one site's
malformed reply must be dropped with a reason, not abort the round for every site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord
from flwr.supercore.task_identity import TaskIdentity

from common.federated.flower_messages import NUM_EXAMPLES
from controlplane.federated.run_plan import read_json, round_file
from tests.unit.test_federated_rounds import adapter, array_record, reply, rounds

SITES = {1: "good", 2: "odd"}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_reply_with_a_second_metric_record_is_dropped(tmp_path: Path) -> None:
    odd = reply(2, adapter(3.0))
    odd.content["extra"] = MetricRecord({"x": 1.0})
    arrays, _ = rounds(tmp_path, sites=SITES).aggregate_train(1, [reply(1, adapter(1.0)), odd])
    assert arrays is not None
    np.testing.assert_allclose(arrays["layers.0.q_proj.lora_A"].numpy(), 1.0)
    assert list(read_json(round_file(tmp_path, 1, "json"))["dropped"]) == ["odd"]


def test_a_reply_with_a_second_array_record_is_dropped(tmp_path: Path) -> None:
    odd = reply(2, adapter(3.0))
    odd.content["other"] = array_record(adapter(9.0))
    arrays, _ = rounds(tmp_path, sites=SITES).aggregate_train(1, [reply(1, adapter(1.0)), odd])
    assert arrays is not None
    np.testing.assert_allclose(arrays["layers.0.q_proj.lora_A"].numpy(), 1.0)
    assert list(read_json(round_file(tmp_path, 1, "json"))["dropped"]) == ["odd"]


def test_a_reply_with_a_list_valued_metric_is_dropped(tmp_path: Path) -> None:
    values = MetricRecord({NUM_EXAMPLES: 5, "train-loss-last": [1.0, 2.0]})
    odd = reply(2, adapter(3.0), values)
    good = reply(1, adapter(1.0), MetricRecord({NUM_EXAMPLES: 5, "train-loss-last": 1.0}))
    arrays, _ = rounds(tmp_path, sites=SITES).aggregate_train(1, [good, odd])
    assert arrays is not None
    np.testing.assert_allclose(arrays["layers.0.q_proj.lora_A"].numpy(), 1.0)
    assert list(read_json(round_file(tmp_path, 1, "json"))["dropped"]) == ["odd"]


def test_replies_with_different_metric_names_do_not_abort_the_round(tmp_path: Path) -> None:
    fewer = MetricRecord({NUM_EXAMPLES: 5, "train-loss-last": 1.0})
    replies = [reply(1, adapter(1.0)), reply(2, adapter(3.0), fewer)]
    arrays, _ = rounds(tmp_path, sites=SITES).aggregate_train(1, replies)
    assert arrays is not None
    assert round_file(tmp_path, 1, "json").exists()
