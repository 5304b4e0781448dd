"""Everything the agent measures about itself: its machine and each model it serves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.model_pool import ModelPool
from agent.telemetry.collectors import MachineTelemetry
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
            metrics += [
                Metric("outpost_model_requests_total", counts.requests, labels),
                Metric("outpost_model_errors_total", counts.errors, labels),
                Metric("outpost_model_prompt_tokens_total", counts.prompt_tokens, labels),
                Metric("outpost_model_completion_tokens_total", counts.completion_tokens, labels),
                Metric("outpost_model_tokens_per_second", counts.tokens_per_second, labels),
                Metric(
                    "outpost_model_time_to_first_token_seconds",
                    counts.time_to_first_token_s,
                    labels,
                ),
                Metric("outpost_model_queue_depth", runner.waiting, labels),
            ]
        return metrics

    def prometheus(self) -> bytes:
        """Runs the collectors (psutil, NVML): call it off the event loop."""
        return exposition(lambda: self.sample().metrics)
