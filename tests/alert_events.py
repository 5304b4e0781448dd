"""Alert events for tests: a complete AlertEvent with whatever a test changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from common.policy.alert_notify import AlertEvent
from tests.usage_rows import AT


def alert_event(**changes: Any) -> AlertEvent:
    event = AlertEvent(
        rule="cloud-down",
        metric="error_rate",
        scope="target",
        key="cloud",
        value=0.5,
        threshold=0.05,
        op=">",
        action="route_away",
        at=AT.timestamp(),
        state="firing",
    )
    return replace(event, **changes)
