"""The agent's on-disk, bounded buffer of telemetry samples, numbered with per-agent sequences."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from agent.telemetry.sequenced_buffer import (
    Pending,
    SequencedBuffer,
    SequencedBufferError,
    typed,
)
from common.telemetry import Labels, Metric, Sample, SequencedSample, TelemetryBatch

BUFFER_FILE = "telemetry.sqlite3"
DEFAULT_MAX_SAMPLES = 17_280  # 24 h at one sample per 5 s


class TelemetryBufferError(SequencedBufferError):
    """The telemetry buffer's database is damaged or unusable; the message names the file."""


class TelemetryBuffer(SequencedBuffer[Sample]):
    """`state_dir/telemetry.sqlite3`: the samples the control plane has not acknowledged yet
    (see SequencedBuffer for numbering, bounds, acks and damage)."""

    TABLE = "samples"
    NOUN = "sample"
    KIND = "telemetry buffer"
    error = TelemetryBufferError

    def __init__(self, state_dir: Path, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        super().__init__(state_dir / BUFFER_FILE, max_items=max_samples)

    @property
    def max_samples(self) -> int:
        return self.max_items

    def encode(self, item: Sample) -> str:
        return _encode(item)

    def decode(self, raw: bytes) -> Sample:
        return _decode(raw)

    def pending(self, limit: int = 500) -> TelemetryBatch:
        """The oldest `limit` unacked samples in seq order; damaged rows are logged and deleted."""
        return telemetry_batch(self.pending_items(limit))


def telemetry_batch(pending: Pending[Sample]) -> TelemetryBatch:
    return TelemetryBatch(
        samples=tuple(SequencedSample(seq, sample) for seq, sample in pending.items),
        dropped=pending.dropped,
    )


def _encode(sample: Sample) -> str:
    document = {
        "collected_at": sample.collected_at.isoformat(),
        "metrics": [[m.name, m.value, dict(m.labels)] for m in sample.metrics],
        "notes": list(sample.notes),
    }
    return json.dumps(document, separators=(",", ":"))


def _decode(raw: bytes) -> Sample:
    document = typed(json.loads(raw), dict, "the sample")
    metrics = []
    for item in typed(document.get("metrics"), list, "metrics"):
        name, value, labels = typed(item, list, "a metric")
        labels = typed(labels, dict, "labels")
        if not all(isinstance(text, str) for text in (name, *labels, *labels.values())):
            raise TypeError("a metric name or label is not a string")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric value is {type(value).__name__}")
        metrics.append(Metric(name, value, Labels(labels)))
    notes = typed(document.get("notes"), list, "notes")
    if not all(isinstance(note, str) for note in notes):
        raise TypeError("a note is not a string")
    collected_at = datetime.fromisoformat(typed(document.get("collected_at"), str, "collected_at"))
    return Sample(collected_at=collected_at, metrics=tuple(metrics), notes=tuple(notes))
