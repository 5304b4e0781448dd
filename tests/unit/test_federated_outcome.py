"""The end of a federated job: reading the sites' evaluation, the weighted held-out loss drop,
the evaluation round report, and the final adapter exported as a GGUF with its lineage."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader

from common.federated.adapter_tensors import initial_adapter, save_adapter
from common.federated.gguf_lora import lora_shapes_from_gguf
from controlplane.federated.job_spec import job_spec_from
from controlplane.federated.job_views import FederatedJobView, JobModel, Participant
from controlplane.federated.outcome import (
    ADAPTER_FILE,
    Evaluation,
    SiteEvaluation,
    export_adapter,
    read_evaluation,
)
from controlplane.federated.run_plan import EVALUATION_FILE, FINAL_ADAPTER, write_json

AGENTS = sorted(str(uuid.uuid4()) for _ in range(2))


def site(base: Any, tuned: Any, examples: Any = 10) -> dict[str, Any]:
    return {"base-heldout-loss": base, "adapter-heldout-loss": tuned, "num-examples": examples}


def write_evaluation(directory: Path, document: Any) -> None:
    (directory / EVALUATION_FILE).write_text(json.dumps(document), encoding="utf-8")


# -- read_evaluation ------------------------------------------------------------------------


def test_a_missing_evaluation_has_no_sites(tmp_path: Path) -> None:
    evaluation = read_evaluation(tmp_path)
    assert (dict(evaluation.sites), dict(evaluation.failed)) == ({}, {})
    assert evaluation.drop_pct() == 0.0
    assert evaluation.failures() == "none answered"


def test_sites_are_read_and_non_finite_losses_count_as_failed(tmp_path: Path) -> None:
    write_json(  # as the ServerApp writes it: Python's json writes NaN and Infinity
        tmp_path / EVALUATION_FILE,
        {
            "sites": {
                "a": site(2.0, 1.5, 40.0),
                "nan": site(float("nan"), 1.0),
                "inf": site(2.0, float("inf")),
                "text": site("2.0", 1.0),
                "none": site(None, 1.0),
                "absent": {"num-examples": 3.0},
            },
            "failed": {"b": "the dataset is missing", "c": "no answer within the timeout"},
        },
    )
    evaluation = read_evaluation(tmp_path)
    assert dict(evaluation.sites) == {"a": SiteEvaluation(2.0, 1.5, 40)}
    assert isinstance(evaluation.sites["a"].examples, int)
    not_finite = "its held-out losses are not finite numbers"
    assert dict(evaluation.failed) == {
        "b": "the dataset is missing",
        "c": "no answer within the timeout",
        "nan": not_finite,
        "inf": not_finite,
        "text": not_finite,
        "none": not_finite,
        "absent": not_finite,
    }
    assert evaluation.failures().startswith("absent: its held-out losses")
    assert "b: the dataset is missing; c: no answer" in evaluation.failures()


def test_a_damaged_evaluation_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / EVALUATION_FILE).write_text('{"sites": {', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        read_evaluation(tmp_path)


# -- the drop ----------------------------------------------------------------------------


def test_the_drop_is_weighted_by_each_sites_examples() -> None:
    evaluation = Evaluation(
        sites={
            "small": SiteEvaluation(base_loss=4.0, adapter_loss=1.0, examples=10),
            "large": SiteEvaluation(base_loss=2.0, adapter_loss=2.0, examples=30),
        },
        failed={},
    )
    base = (4.0 * 10 + 2.0 * 30) / 40
    tuned = (1.0 * 10 + 2.0 * 30) / 40
    assert evaluation.drop_pct() == pytest.approx(100.0 * (base - tuned) / base)
    assert evaluation.drop_pct() == pytest.approx(30.0)
    unweighted = 100.0 * ((4.0 + 2.0) / 2 - (1.0 + 2.0) / 2) / ((4.0 + 2.0) / 2)
    assert not math.isclose(evaluation.drop_pct(), unweighted)


def test_a_worse_adapter_is_a_negative_drop() -> None:
    evaluation = Evaluation({"a": SiteEvaluation(2.0, 3.0, 5)}, {})
    assert evaluation.drop_pct() == pytest.approx(-50.0)


def test_no_drop_without_examples_or_without_base_loss() -> None:
    assert Evaluation({"a": SiteEvaluation(2.0, 1.0, 0)}, {}).drop_pct() == 0.0
    assert Evaluation({"a": SiteEvaluation(0.0, 1.0, 7)}, {}).drop_pct() == 0.0
    assert Evaluation({}, {"a": "down"}).drop_pct() == 0.0


def test_the_report_is_the_evaluation_round() -> None:
    evaluation = Evaluation(
        {"b": SiteEvaluation(2.0, 1.0, 3), "a": SiteEvaluation(4.0, 3.0, 1)},
        {"c": "no answer within the timeout"},
    )
    before = datetime.now(UTC)
    report = evaluation.report(5)
    assert report.round == 5
    assert report.phase == "evaluate"
    assert report.participants == ("a", "b")
    assert dict(report.dropped) == {"c": "no answer within the timeout"}
    assert dict(report.sites) == {
        "a": {"heldout_loss": 3.0, "base_heldout_loss": 4.0, "examples": 1},
        "b": {"heldout_loss": 1.0, "base_heldout_loss": 2.0, "examples": 3},
    }
    assert dict(report.aggregate) == {"heldout_loss_drop_pct": pytest.approx(100 * 1.0 / 2.5)}
    assert report.finished_at is not None
    assert before <= report.started_at <= report.finished_at
    assert report.started_at.tzinfo is not None


# -- export ----------------------------------------------------------------------------------


def job_view(rounds: int = 4, alpha: float = 12.4) -> FederatedJobView:
    spec = job_spec_from(
        {
            "model": "smollm2",
            "agents": AGENTS,
            "dataset": "support",
            "rounds": rounds,
            "aggregation": "frozen-a",
            "lora": {"rank": 2, "alpha": alpha, "targets": ["q_proj", "v_proj"]},
        }
    )
    now = datetime.now(UTC)
    return FederatedJobView(
        id=str(uuid.uuid4()),
        state="evaluating",
        spec=spec,
        model=JobModel(id=1, name="smollm2", version="3", sha256="ab" * 32),
        current_round=rounds,
        reason="",
        adapter_model_id=None,
        flower_run_id=None,
        participants=tuple(
            Participant(agent_id=a, name=f"edge-{i}", site="", dataset="support")
            for i, a in enumerate(reversed(AGENTS))
        ),
        skipped=(),
        min_participants=2,
        metrics={},
        created_by="alice",
        created_at=now,
        started_at=now,
        finished_at=None,
        updated_at=now,
    )


def test_the_exported_adapter_carries_its_lineage(demo_model: Path, tmp_path: Path) -> None:
    shapes = lora_shapes_from_gguf(demo_model, 2, ["q_proj", "v_proj"])
    tensors = initial_adapter(shapes, seed=3)
    tensors["layers.1.v_proj.lora_B"][:] = 0.25  # not only zeros in B
    save_adapter(tmp_path / FINAL_ADAPTER, tensors)
    job = job_view()
    path = export_adapter(job, tmp_path, demo_model, drop=12.345678)
    assert path == tmp_path / ADAPTER_FILE
    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.type"] == "adapter"
    assert fields["adapter.lora.alpha"] == 12.0  # the integer alpha the sites trained with
    assert fields["outpost.base_sha256"] == "ab" * 32
    assert fields["outpost.base_model"] == "smollm2@3"
    assert fields["outpost.federated_job"] == job.id
    assert fields["outpost.rounds"] == "4"
    assert fields["outpost.aggregation"] == "frozen-a"
    assert json.loads(fields["outpost.participants"]) == AGENTS  # sorted
    assert fields["outpost.heldout_loss_drop_pct"] == "12.3457"
    assert len(reader.tensors) == len(shapes)
    written = {t.name: np.asarray(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(written["blk.1.attn_v.weight.lora_b"], 0.25)


def test_export_refuses_an_adapter_that_does_not_fit_the_base(
    demo_model: Path, tmp_path: Path
) -> None:
    shapes = lora_shapes_from_gguf(demo_model, 2, ["q_proj"])
    tensors = initial_adapter(shapes, seed=3)
    tensors["layers.0.q_proj.lora_A"] = np.zeros((2, 5), dtype=np.float32)
    save_adapter(tmp_path / FINAL_ADAPTER, tensors)
    with pytest.raises(ValueError, match="has shape"):
        export_adapter(job_view(), tmp_path, demo_model, drop=1.0)
    assert not (tmp_path / ADAPTER_FILE).exists()
