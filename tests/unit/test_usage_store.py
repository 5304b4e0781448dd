"""The control plane's usage store: once per (agent, seq), and every value of a hostile agent
checked or clipped; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from common.policy.ledger_record import AttemptSummary, LedgerRecord
from common.usage_batch import MAX_PROMPT_CHARS, SequencedRecord, UsageBatch
from controlplane.db.database import Database
from controlplane.db.models import UsageRecordRow
from controlplane.usage_store import UsageStore
from controlplane.usage_validation import (
    BAD_OUTCOME,
    BAD_SEQUENCE_NUMBER,
    BAD_TIME,
    BATCH_TOO_LARGE,
    FROM_THE_FUTURE,
    MAX_ATTEMPTS,
    MAX_DETECTORS,
    MAX_REQUEST_COST_NANOS,
    OUT_OF_RANGE,
    TOO_OLD,
)
from tests.usage_rows import AT, ledger_row

AGENT = "4f9c2b7e-1d3a-4c5b-8e6f-0a1b2c3d4e5f"
NOW = AT + timedelta(minutes=1)


def batch(*records: LedgerRecord, first: int = 1, dropped: int = 0) -> UsageBatch:
    items = tuple(SequencedRecord(first + i, r) for i, r in enumerate(records))
    return UsageBatch(records=items, dropped=dropped)


def rows(database: Database) -> list[UsageRecordRow]:
    with database.session() as session:
        found = session.exec(select(UsageRecordRow).order_by(UsageRecordRow.id)).all()  # type: ignore[arg-type]
        return [UsageRecordRow.model_validate(row) for row in found]


@pytest.fixture
def store(database: Database) -> UsageStore:
    return UsageStore(database, clock=lambda: NOW, max_records_per_batch=5)


def test_rows_are_stored_once_per_agent_and_seq(store: UsageStore, database: Database) -> None:
    first = store.record_batch(AGENT, batch(ledger_row(), ledger_row(request_id="req-2")))
    assert (first.stored, first.duplicates, first.acked_seq) == (2, 0, 2)
    again = store.record_batch(AGENT, batch(ledger_row(), ledger_row(), ledger_row(), first=2))
    assert (again.stored, again.duplicates, again.acked_seq) == (2, 1, 4)
    other = store.record_batch("another-agent", batch(ledger_row()))
    assert other.stored == 1
    stored = rows(database)
    assert [(r.source, r.seq) for r in stored] == [
        (AGENT, 1), (AGENT, 2), (AGENT, 3), (AGENT, 4), ("another-agent", 1),
    ]  # fmt: skip
    row = stored[0]
    assert row.at == AT
    assert row.day == "2026-11-27"
    assert row.received_at == NOW
    assert (row.team, row.role, row.level, row.route, row.target, row.outcome) == (
        "support", "support-agent", "internal", "everything-home", "home", "ok",
    )  # fmt: skip
    assert row.detectors == ["cards", "emails"]
    assert row.attempts == [
        {"target": "cloud", "outcome": "error", "reason": "HTTP 502", "latency_ms": 12.5},
        {"target": "home", "outcome": "ok", "reason": "", "latency_ms": 250.25},
    ]
    assert (row.prompt_tokens, row.completion_tokens, row.cost_nanos) == (12, 30, 1_234_567)
    assert row.prompt is None


def test_the_same_seq_twice_in_a_batch_counts_once(store: UsageStore) -> None:
    twice = UsageBatch((SequencedRecord(1, ledger_row()), SequencedRecord(1, ledger_row())))
    result = store.record_batch(AGENT, twice)
    assert (result.stored, result.duplicates) == (1, 1)


def test_rows_beyond_the_batch_limit_wait_and_are_not_acked(store: UsageStore) -> None:
    result = store.record_batch(AGENT, batch(*[ledger_row() for _ in range(7)]))
    assert (result.stored, result.acked_seq) == (5, 5)
    assert result.rejected == {BATCH_TOO_LARGE: 2}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"at": NOW + timedelta(minutes=6)}, FROM_THE_FUTURE),
        ({"at": NOW - timedelta(days=401)}, TOO_OLD),
        ({"at": datetime.min.replace(tzinfo=UTC)}, TOO_OLD),
        ({"at": datetime(2026, 11, 27, 12)}, BAD_TIME),  # naive
        ({"outcome": "great"}, BAD_OUTCOME),
        ({"prompt_tokens": -1}, OUT_OF_RANGE),
        ({"completion_tokens": 2**64 - 1}, OUT_OF_RANGE),
        ({"cost_nanos": MAX_REQUEST_COST_NANOS + 1}, OUT_OF_RANGE),
        ({"cost_nanos": -5}, OUT_OF_RANGE),
    ],
)
def test_bad_values_are_turned_away_but_acked(
    store: UsageStore, database: Database, change: dict[str, Any], reason: str
) -> None:
    result = store.record_batch(AGENT, batch(ledger_row(**change), ledger_row()))
    assert (result.stored, result.rejected, result.acked_seq) == (1, {reason: 1}, 2)
    assert [r.seq for r in rows(database)] == [2]


def test_bad_sequence_numbers_are_turned_away(store: UsageStore) -> None:
    for seq in (0, -3, 2**63):
        result = store.record_batch(AGENT, UsageBatch((SequencedRecord(seq, ledger_row()),)))
        assert result.rejected == {BAD_SEQUENCE_NUMBER: 1}
        assert result.stored == 0


def test_oversized_texts_lists_and_odd_numbers_are_clipped(
    store: UsageStore, database: Database
) -> None:
    hostile = ledger_row(
        request_id="r" * 1000,
        key_id="k" * 100,
        team="t\x00" * 100,
        role="x" * 64,
        level="l" * 64,
        route="r" * 64,
        target="t" * 64,
        reason="why" * 1000,
        detectors=(*tuple(f"d{i}" for i in range(200)), "d1"),
        attempts=tuple(
            AttemptSummary("a" * 99, "o" * 99, "r" * 999, float("nan")) for _ in range(100)
        ),
        latency_ms=float("inf"),
        policy_digest="f" * 200,
        prompt="p" * (MAX_PROMPT_CHARS + 1) + "\ud800",
    )
    assert store.record_batch(AGENT, batch(hostile, ledger_row(latency_ms=-4.0))).stored == 2
    row, negative = rows(database)
    assert len(row.request_id) == 128
    assert len(row.key_id) == 63
    assert len(row.reason) == 500
    assert row.team == ("t\N{REPLACEMENT CHARACTER}" * 32)[:63]
    assert max(len(row.role), len(row.level), len(row.route or ""), len(row.target or "")) == 63
    assert len(row.detectors) == MAX_DETECTORS == len(set(row.detectors))
    assert len(row.attempts) == MAX_ATTEMPTS
    assert row.attempts[0] == {
        "target": "a" * 63, "outcome": "o" * 16, "reason": "r" * 500, "latency_ms": 0.0,
    }  # fmt: skip
    assert row.latency_ms == 0.0
    assert negative.latency_ms == 0.0
    assert row.policy_digest == "f" * 64
    assert row.prompt == "p" * MAX_PROMPT_CHARS


def test_the_gateway_records_its_own_rows_without_sequence_numbers(
    store: UsageStore, database: Database
) -> None:
    assert store.record(ledger_row())
    assert store.record(ledger_row())  # no seq: never a duplicate
    assert not store.record(ledger_row(outcome="nonsense"))
    assert [(r.source, r.seq) for r in rows(database)] == [("gateway", None), ("gateway", None)]


def test_the_gateways_rows_are_stored_together_without_the_bad_ones(
    store: UsageStore, database: Database
) -> None:
    good = [ledger_row(request_id=f"g{n}") for n in range(3)]
    stored = store.record_many([good[0], ledger_row(outcome="nonsense"), *good[1:]])
    assert stored == 3
    assert [r.request_id for r in rows(database)] == ["g0", "g1", "g2"]
    assert store.record_many([]) == 0
