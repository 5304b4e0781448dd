"""Everything the agent measures about itself: its machine and each model it serves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.model_pool import ModelPool
from agent.telemetry.collectors import MachineTelemetry
from agent.telemetry.inference_metrics import InferenceCounts
from agent.telemetry.machine import machine_telemetry
from common.prometheus import exposition
from common.telemetry import Metric, Sample


class AgentMetrics:
    def __init__(self, pool: ModelPool, machine: MachineTelemetry) -> None:
        self._pool = pool
        self._machine = machine

    @classmethod
    def for_paths(cls, pool: ModelPool, disk_paths: Sequence[Path]) -> AgentMetrics:
        return cls(pool, machine_telemetry(disk_paths))

    def sample(self, now: datetime | None = None) -> Sample:
        machine = self._machine.collect(now or datetime.now(UTC))
        return Sample(
            collected_at=machine.collected_at,
            metrics=machine.metrics + tuple(self.model_metrics()),
            notes=machine.notes,
        )

    def model_metrics(self) -> list[Metric]:
        metrics: list[Metric] = []
        for alias, runner in self._pool.runners():
            labels = {"model": alias}
            metrics.append(Metric("outpost_model_loaded", float(runner is not None), labels))
            if runner is None:
                continue
            counts = runner.metrics.snapshot()
            metrics += _inference_metrics("outpost_model", counts, labels)
            metrics.append(Metric("outpost_model_queue_depth", runner.waiting, labels))
            for adapter, adapter_counts in sorted(counts.adapters.items()):
                adapter_labels = {"model": alias, "adapter": adapter}
                metrics += _inference_metrics("outpost_adapter", adapter_counts, adapter_labels)
        return metrics

    def prometheus(self) -> bytes:
        """Runs the collectors (psutil, NVML): call it off the event loop."""
        return exposition(lambda: self.sample().metrics)


def _inference_metrics(
    prefix: str, counts: InferenceCounts, labels: dict[str, str]
) -> list[Metric]:
    return [
        Metric(f"{prefix}_requests_total", counts.requests, labels),
        Metric(f"{prefix}_errors_total", counts.errors, labels),
        Metric(f"{prefix}_prompt_tokens_total", counts.prompt_tokens, labels),
        Metric(f"{prefix}_completion_tokens_total", counts.completion_tokens, labels),
        Metric(f"{prefix}_tokens_per_second", counts.tokens_per_second, labels),
        Metric(f"{prefix}_time_to_first_token_seconds", counts.time_to_first_token_s, labels),
    ]
