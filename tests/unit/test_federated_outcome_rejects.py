"""`read_evaluation`: a site whose example count is not a finite number counts as failed
(the ServerApp writes every metric a site sends as a float, Infinity and NaN included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.federated.outcome import SiteEvaluation, read_evaluation
from controlplane.federated.run_plan import EVALUATION_FILE, write_json


@pytest.mark.parametrize("examples", [float("inf"), float("nan")])
def test_a_non_finite_example_count_counts_as_failed(tmp_path: Path, examples: float) -> None:
    losses = {"base-heldout-loss": 2.0, "adapter-heldout-loss": 1.0}
    write_json(
        tmp_path / EVALUATION_FILE,
        {
            "sites": {
                "good": {**losses, "num-examples": 4.0},
                "odd": {**losses, "num-examples": examples},
            },
            "failed": {},
        },
    )
    evaluation = read_evaluation(tmp_path)
    assert dict(evaluation.sites) == {"good": SiteEvaluation(2.0, 1.0, 4)}
    assert list(evaluation.failed) == ["odd"]
