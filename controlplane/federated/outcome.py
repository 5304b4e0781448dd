"""The end of a federated job: the sites' evaluation of the final adapter, the gate on it, and
the adapter exported as a GGUF LoRA file with its lineage."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.federated.adapter_tensors import load_adapter
from common.federated.gguf_lora import export_gguf_lora
from controlplane.federated.job_views import FederatedJobView, RoundReport
from controlplane.federated.run_plan import EVALUATION_FILE, FINAL_ADAPTER, read_json

ADAPTER_FILE = "adapter.gguf"
MAX_ADAPTER_BYTES = 1024**3


@dataclass(frozen=True)
class SiteEvaluation:
    base_loss: float
    adapter_loss: float
    examples: int


@dataclass(frozen=True)
class Evaluation:
    sites: Mapping[str, SiteEvaluation]  # agent id -> its held-out losses
    failed: Mapping[str, str]  # agent id -> why it could not evaluate

    def drop_pct(self) -> float:
        """How much the held-out loss dropped with the adapter, in %, over every evaluated
        site's examples (each site weighted by its held-out example count)."""
        total = sum(s.examples for s in self.sites.values())
        if total == 0:
            return 0.0
        base = sum(s.base_loss * s.examples for s in self.sites.values()) / total
        tuned = sum(s.adapter_loss * s.examples for s in self.sites.values()) / total
        return 100.0 * (base - tuned) / base if base > 0 else 0.0

    def failures(self) -> str:
        return "; ".join(f"{a}: {r}" for a, r in sorted(self.failed.items())) or "none answered"

    def report(self, final_round: int) -> RoundReport:
        return RoundReport(
            round=final_round,
            phase="evaluate",
            started_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
            participants=tuple(sorted(self.sites)),
            dropped=dict(self.failed),
            sites={
                agent: {
                    "heldout_loss": s.adapter_loss,
                    "base_heldout_loss": s.base_loss,
                    "examples": s.examples,
                }
                for agent, s in self.sites.items()
            },
            aggregate={"heldout_loss_drop_pct": self.drop_pct()},
        )


def read_evaluation(directory: Path) -> Evaluation:
    """The ServerApp's evaluation.json; sites whose numbers are not finite count as failed."""
    data = read_json(directory / EVALUATION_FILE) or {}
    sites: dict[str, SiteEvaluation] = {}
    failed = {str(a): str(r) for a, r in dict(data.get("failed", {})).items()}
    for agent, values in dict(data.get("sites", {})).items():
        base = values.get("base-heldout-loss")
        tuned = values.get("adapter-heldout-loss")
        examples = values.get("num-examples", 0)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (base, tuned)):
            failed[str(agent)] = "its held-out losses are not finite numbers"
            continue
        if not isinstance(examples, int | float) or not math.isfinite(examples) or examples < 1:
            failed[str(agent)] = "its held-out example count is not a positive number"
            continue
        sites[str(agent)] = SiteEvaluation(float(base), float(tuned), int(examples))
    return Evaluation(sites, failed)


def export_adapter(job: FederatedJobView, directory: Path, base_gguf: Path, drop: float) -> Path:
    """The final adapter as a GGUF LoRA file for the base, with the job's lineage in its
    metadata (outpost.*): base sha256, job, rounds, participants, the gate's measure."""
    tensors = load_adapter(directory / FINAL_ADAPTER, MAX_ADAPTER_BYTES)
    lineage = {
        "base_sha256": job.model.sha256,
        "base_model": f"{job.model.name}@{job.model.version}",
        "federated_job": job.id,
        "rounds": str(job.spec.rounds),
        "aggregation": job.spec.aggregation,
        "participants": json.dumps(sorted(p.agent_id for p in job.participants)),
        "heldout_loss_drop_pct": f"{drop:.4f}",
    }
    return export_gguf_lora(
        tensors,
        base_gguf=base_gguf,
        alpha=float(round(job.spec.lora.alpha)),  # as the sites trained it (RunPlan.alpha)
        target=directory / ADAPTER_FILE,
        metadata=lineage,
    )
