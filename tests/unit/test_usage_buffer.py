"""The agent's usage buffer and recorder: rows round-trip, bounds, acks, settled usage, damage."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.usage_buffer import USAGE_FILE, UsageBuffer, UsageBufferError, month_start
from agent.usage_recorder import UsageRecorder
from common.policy.budgets import SettledUsage
from common.usage_batch import MAX_PROMPT_CHARS
from tests.usage_rows import AT, ledger_row


def test_rows_round_trip_exactly_across_a_restart(tmp_path: Path) -> None:
    rows = [
        ledger_row(),
        ledger_row(request_id="req-2", route=None, target=None, outcome="refused", attempts=()),
        ledger_row(request_id="req-3", prompt='Ünïcode prompt 🌡 "quoted"', detectors=()),
        ledger_row(request_id="req-4", forwarded=True),
    ]
    with UsageBuffer(tmp_path) as buffer:
        assert buffer.append_many(rows) == [1, 2, 3, 4]
    assert stat.S_IMODE((tmp_path / USAGE_FILE).stat().st_mode) == 0o600
    with UsageBuffer(tmp_path) as reopened:
        pending = reopened.pending_items()
        assert pending.items == tuple(enumerate(rows, start=1))
        assert pending.items[3][1].forwarded is True
        assert pending.dropped == 0
        assert reopened.append(ledger_row()) == 5


def test_a_long_prompt_is_cut(tmp_path: Path) -> None:
    with UsageBuffer(tmp_path) as buffer:
        buffer.append(ledger_row(prompt="x" * (MAX_PROMPT_CHARS + 10)))
        ((_, stored),) = buffer.pending_items().items
    assert stored.prompt == "x" * MAX_PROMPT_CHARS


def test_full_buffer_drops_the_oldest_counts_them_and_acks_forget(tmp_path: Path) -> None:
    with UsageBuffer(tmp_path, max_records=3) as buffer:
        buffer.append_many([ledger_row(request_id=f"r{i}") for i in range(5)])
        pending = buffer.pending_items()
        assert [seq for seq, _ in pending.items] == [3, 4, 5]
        assert pending.dropped == 2
        buffer.ack(4, dropped_reported=pending.dropped)
        assert [seq for seq, _ in buffer.pending_items().items] == [5]
        assert buffer.pending_items().dropped == 0
        buffer.append_many([], also_dropped=2)  # lost before reaching the disk
        assert buffer.pending_items().dropped == 2


def test_a_batch_is_bounded_in_bytes_but_holds_at_least_one_row(tmp_path: Path) -> None:
    with UsageBuffer(tmp_path) as buffer:
        buffer.append_many([ledger_row(prompt="p" * 1000) for _ in range(5)])
        assert len(buffer.pending_items(max_bytes=3500).items) == 2
        assert len(buffer.pending_items(max_bytes=10).items) == 1
        assert len(buffer.pending_items(limit=3).items) == 3


def test_settled_usage_keeps_the_month_after_acks_and_skips_refusals(tmp_path: Path) -> None:
    start = month_start(AT)
    assert start == datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        ledger_row(at=start - timedelta(seconds=1), cost_nanos=5),  # last month
        ledger_row(cost_nanos=7, prompt_tokens=1, completion_tokens=2),
        ledger_row(outcome="refused", cost_nanos=0),
        ledger_row(outcome="failed", target=None, cost_nanos=0, team="ops", key_id="9"),
    ]
    with UsageBuffer(tmp_path) as buffer:
        buffer.append_many(rows)
        buffer.ack(4, dropped_reported=0)
        assert len(buffer) == 0
    with UsageBuffer(tmp_path) as reopened:
        assert reopened.settled_since(start) == [
            SettledUsage(AT.timestamp(), "support", "7", 3, 7),
            SettledUsage(AT.timestamp(), "ops", "9", 42, 0),
        ]


def test_settled_usage_is_bounded(tmp_path: Path) -> None:
    with UsageBuffer(tmp_path, max_settled=2) as buffer:
        buffer.append_many([ledger_row(cost_nanos=n) for n in range(1, 6)])
        assert [u.cost_nanos for u in buffer.settled_since(month_start(AT))] == [4, 5]


def test_rows_stored_before_the_forwarded_mark_read_as_not_forwarded(tmp_path: Path) -> None:
    with UsageBuffer(tmp_path) as buffer:
        buffer.append_many([ledger_row(forwarded=True), ledger_row(forwarded=True)])
    with sqlite3.connect(tmp_path / USAGE_FILE) as connection:
        connection.execute("UPDATE records SET body = json_remove(body, '$.forwarded')"
                           " WHERE seq = 1")  # fmt: skip
        connection.execute("UPDATE records SET body = json_set(body, '$.forwarded', 'yes')"
                           " WHERE seq = 2")  # fmt: skip
    connection.close()
    with UsageBuffer(tmp_path) as buffer:
        ((seq, row),) = buffer.pending_items().items  # a mark that is not a bool: damaged
    assert (seq, row) == (1, ledger_row(forwarded=False))


def test_damaged_rows_are_dropped_and_a_foreign_file_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with UsageBuffer(tmp_path) as buffer:
        buffer.append_many([ledger_row(), ledger_row(), ledger_row()])
    with sqlite3.connect(tmp_path / USAGE_FILE) as connection:
        connection.execute("UPDATE records SET body = '{\"at\": 1}' WHERE seq = 2")
    connection.close()
    with UsageBuffer(tmp_path) as buffer, caplog.at_level(logging.WARNING):
        assert [seq for seq, _ in buffer.pending_items().items] == [1, 3]
    assert "damaged record 2" in caplog.text
    other = tmp_path / "other"
    other.mkdir()
    (other / USAGE_FILE).write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(UsageBufferError, match="not a database"):
        UsageBuffer(other)


def test_the_recorder_queues_without_blocking_and_writes_in_the_background(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[int, int]:
        with UsageBuffer(tmp_path) as buffer:
            written = asyncio.Event()
            recorder = UsageRecorder(buffer, written.set, max_queued=3)
            for i in range(5):  # before it runs: the queue keeps the newest 3
                recorder.record(ledger_row(request_id=f"early{i}"))
            stop = asyncio.Event()
            task = asyncio.create_task(recorder.run(stop))
            await asyncio.wait_for(written.wait(), 10)
            written.clear()
            recorder.record(ledger_row(request_id="late"))
            await asyncio.wait_for(written.wait(), 10)
            stop.set()
            await task
            recorder.record(ledger_row(request_id="after-stop"))
            assert recorder.flush() == 1
            pending = buffer.pending_items()
            ids = [r.request_id for _, r in pending.items]
            assert ids == ["early2", "early3", "early4", "late", "after-stop"]
            return len(ids), pending.dropped

    assert asyncio.run(scenario()) == (5, 2)


def test_a_cancelled_recorder_still_writes_what_it_queued(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        with UsageBuffer(tmp_path) as buffer:
            recorder = UsageRecorder(buffer)
            task = asyncio.create_task(recorder.run(asyncio.Event()))
            await asyncio.sleep(0)  # it runs and waits
            recorder.record(ledger_row(request_id="queued"))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return [r.request_id for _, r in buffer.pending_items().items]

    assert asyncio.run(scenario()) == ["queued"]
