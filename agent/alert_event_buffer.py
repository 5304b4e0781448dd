"""`state_dir/alert_events.sqlite3`: the agent's alert firings and clearings until acked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agent.telemetry.sequenced_buffer import SequencedBuffer, SequencedBufferError, typed
from common.policy.alert_notify import AlertEvent

ALERT_EVENTS_FILE = "alert_events.sqlite3"
DEFAULT_MAX_EVENTS = 10_000  # events not acked yet; beyond, the oldest are dropped and counted


class AlertEventBufferError(SequencedBufferError):
    """The alert event buffer's database is damaged or unusable; the message names the file."""


class AlertEventBuffer(SequencedBuffer[AlertEvent]):
    """Alert events the control plane has not acknowledged yet (see SequencedBuffer)."""

    TABLE = "events"
    NOUN = "event"
    KIND = "alert event buffer"
    error = AlertEventBufferError

    def __init__(self, state_dir: Path, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        super().__init__(state_dir / ALERT_EVENTS_FILE, max_items=max_events)

    def encode(self, item: AlertEvent) -> str:
        return json.dumps(item.to_dict(), separators=(",", ":"))

    def decode(self, raw: bytes) -> AlertEvent:
        document: dict[str, Any] = typed(json.loads(raw), dict, "the event")
        state = document.get("state")
        if state not in ("firing", "cleared"):
            raise ValueError(f"state is {state!r}, not firing or cleared")

        def text(name: str) -> str:
            return typed(document.get(name), str, name)

        def number(name: str) -> float:
            return _number(document.get(name), name)

        return AlertEvent(
            rule=text("rule"),
            metric=text("metric"),
            scope=text("scope"),
            key=text("key"),
            value=number("value"),
            threshold=number("threshold"),
            op=text("op"),
            action=text("action"),
            at=number("at"),
            state="firing" if state == "firing" else "cleared",
            reason=text("reason"),
        )


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{what} is not finite")
    return float(value)
