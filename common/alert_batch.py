"""Alert events as an agent ships them: numbered per agent, in batches with drop counts."""

from __future__ import annotations

from dataclasses import dataclass

from common.policy.alert_notify import AlertEvent


@dataclass(frozen=True)
class SequencedAlertEvent:
    """An alert event with the agent's sequence number: stored once per (agent, seq)."""

    seq: int
    event: AlertEvent


@dataclass(frozen=True)
class AlertEventBatch:
    events: tuple[SequencedAlertEvent, ...]
    dropped: int = 0  # events the agent's full buffer dropped since its last batch
