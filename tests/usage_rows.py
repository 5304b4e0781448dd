"""Ledger rows for tests: a complete LedgerRecord with whatever a test changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from common.policy.ledger_record import AttemptSummary, LedgerRecord

AT = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def ledger_row(**changes: Any) -> LedgerRecord:
    row = LedgerRecord(
        at=AT,
        request_id="req-1",
        key_id="7",
        team="support",
        role="support-agent",
        level="internal",
        route="everything-home",
        target="home",
        outcome="ok",
        reason="role support-agent: internal",
        detectors=("cards", "emails"),
        attempts=(
            AttemptSummary("cloud", "error", "HTTP 502", 12.5),
            AttemptSummary("home", "ok", "", 250.25),
        ),
        prompt_tokens=12,
        completion_tokens=30,
        latency_ms=263.0,
        cost_nanos=1_234_567,
        policy_digest="ab" * 32,
        prompt=None,
    )
    return replace(row, **changes)
