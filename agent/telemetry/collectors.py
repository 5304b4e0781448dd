"""What every collector returns, and `MachineTelemetry`, which runs them into one `Sample`.

A collector is a small object with a `name` and a `collect()` that returns a `Reading`: the
metrics it could read and notes on what it could not. Collectors of the machine (psutil) are in
`agent.telemetry.machine`, of NVIDIA GPUs (NVML) in `agent.telemetry.gpu`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from common.telemetry import Metric, Sample, validate_metric

log = logging.getLogger(__name__)

# Distinct failure messages logged at most once each; past this many, new ones are not logged.
_LOGGED_MESSAGES_MAX = 256


@dataclass(frozen=True)
class Reading:
    metrics: tuple[Metric, ...] = ()
    notes: tuple[str, ...] = ()


class Collector(Protocol):
    @property
    def name(self) -> str: ...

    def collect(self) -> Reading: ...


class MachineTelemetry:
    """Runs each collector; one that raises costs its own metrics and a note, never the sample.

    Metrics that fail `validate_metric` (a sensor reading 3000 °C, say) are dropped with a note,
    so the agent never sends what the control plane would reject.
    """

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = tuple(collectors)
        self._logged: set[str] = set()

    def collect(self, now: datetime | None = None) -> Sample:
        collected_at = now if now is not None else datetime.now(UTC)
        metrics: list[Metric] = []
        notes: list[str] = []
        for collector in self._collectors:
            try:
                reading = collector.collect()
            except Exception as exc:
                message = f"{collector.name} collector failed: {type(exc).__name__}: {exc}"
                self._log_once(message)
                notes.append(message)
                continue
            notes.extend(reading.notes)
            for metric in reading.metrics:
                reason = validate_metric(metric)
                if reason is None:
                    metrics.append(metric)
                else:
                    notes.append(f"{collector.name}: dropped a metric: {reason}")
        return Sample(collected_at=collected_at, metrics=tuple(metrics), notes=tuple(notes))

    def _log_once(self, message: str) -> None:
        if message in self._logged or len(self._logged) >= _LOGGED_MESSAGES_MAX:
            return
        self._logged.add(message)
        log.warning("telemetry: %s", message)
