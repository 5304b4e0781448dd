"""The agent's on-disk telemetry buffer: sequence numbers, bounds, acks, restarts, damage."""

from __future__ import annotations

import logging
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.telemetry.buffer import BUFFER_FILE, TelemetryBuffer, TelemetryBufferError
from common.telemetry import Labels, Metric, Sample

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def sample(index: int = 0) -> Sample:
    return Sample(
        collected_at=NOW + timedelta(seconds=5 * index),
        metrics=(Metric("outpost_memory_used_bytes", float(index)),),
    )


def seqs(buffer: TelemetryBuffer, limit: int = 500) -> list[int]:
    return [item.seq for item in buffer.pending(limit).samples]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def buffer(state_dir: Path) -> Iterator[TelemetryBuffer]:
    with TelemetryBuffer(state_dir) as opened:
        yield opened


def test_sequence_numbers_start_at_one_and_increase(buffer: TelemetryBuffer) -> None:
    assert buffer.next_seq == 1
    assert len(buffer) == 0
    assert buffer.pending().samples == ()
    assert [buffer.append(sample(i)) for i in range(4)] == [1, 2, 3, 4]
    assert buffer.next_seq == 5
    assert len(buffer) == 4


def test_creates_a_private_directory_and_file(state_dir: Path) -> None:
    TelemetryBuffer(state_dir).close()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / BUFFER_FILE).stat().st_mode) == 0o600


def test_numbering_samples_and_drops_survive_a_restart(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir, max_samples=2) as first:
        for i in range(3):
            first.append(sample(i))
    with TelemetryBuffer(state_dir, max_samples=2) as second:
        batch = second.pending()
        assert [item.seq for item in batch.samples] == [2, 3]
        assert [item.sample for item in batch.samples] == [sample(1), sample(2)]
        assert batch.dropped == 1
        assert second.append(sample(3)) == 4


def test_numbers_are_never_reused_after_everything_was_acked(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir) as first:
        first.append(sample(0))
        first.append(sample(1))
        first.ack(2, dropped_reported=0)
        assert len(first) == 0
    with TelemetryBuffer(state_dir) as second:
        assert second.next_seq == 3
        assert second.append(sample(2)) == 3


def test_a_full_buffer_drops_the_oldest_and_counts_them(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir, max_samples=3) as buffer:
        for i in range(5):
            buffer.append(sample(i))
        batch = buffer.pending()
        assert len(buffer) == 3
        assert [item.seq for item in batch.samples] == [3, 4, 5]
        assert [item.sample for item in batch.samples] == [sample(2), sample(3), sample(4)]
        assert batch.dropped == 2


def test_ack_deletes_up_to_seq_and_subtracts_what_was_reported(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir, max_samples=3) as buffer:
        for i in range(5):
            buffer.append(sample(i))
        batch = buffer.pending(limit=2)
        assert [item.seq for item in batch.samples] == [3, 4]
        assert batch.dropped == 2
        buffer.append(sample(5))  # drops seq 3 while the batch is in flight
        assert buffer.pending().dropped == 3
        buffer.ack(batch.samples[-1].seq, dropped_reported=batch.dropped)
        assert seqs(buffer) == [5, 6]
        assert buffer.pending().dropped == 1  # the drop that happened after the batch


def test_the_bound_counts_only_what_is_held(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir, max_samples=3) as buffer:
        for i in range(3):
            buffer.append(sample(i))
        buffer.ack(2, dropped_reported=0)
        buffer.append(sample(3))
        buffer.append(sample(4))
        assert (seqs(buffer), buffer.pending().dropped) == ([3, 4, 5], 0)
    with TelemetryBuffer(state_dir, max_samples=2) as smaller:  # shrunk between runs
        smaller.append(sample(5))
        assert (seqs(smaller), smaller.pending().dropped) == ([5, 6], 2)


def test_repeated_late_and_excessive_acks_are_harmless(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TelemetryBuffer(state_dir, max_samples=3) as buffer:
        for i in range(5):
            buffer.append(sample(i))  # holds 3, 4, 5; dropped 2
        buffer.ack(4, dropped_reported=1)
        assert (seqs(buffer), buffer.pending().dropped) == ([5], 1)
        buffer.ack(4, dropped_reported=1)  # repeated
        buffer.ack(3, dropped_reported=1)  # late
        buffer.ack(0, dropped_reported=1)
        assert (seqs(buffer), buffer.pending().dropped) == ([5], 1)
        with caplog.at_level(logging.WARNING, logger="agent.telemetry.buffer"):
            buffer.ack(99, dropped_reported=7)  # never issued: acks what was, never below 0
        assert "99" in caplog.text
        assert (len(buffer), buffer.pending().dropped) == (0, 0)
        assert buffer.append(sample(5)) == 6
        assert seqs(buffer) == [6]
        buffer.ack(6, dropped_reported=0)
        assert len(buffer) == 0


def test_pending_respects_order_and_limit_and_changes_nothing(buffer: TelemetryBuffer) -> None:
    for i in range(7):
        buffer.append(sample(i))
    assert seqs(buffer, limit=3) == [1, 2, 3]
    assert seqs(buffer, limit=3) == [1, 2, 3]
    assert seqs(buffer, limit=1) == [1]
    assert seqs(buffer) == list(range(1, 8))
    buffer.ack(2, dropped_reported=0)
    assert seqs(buffer, limit=3) == [3, 4, 5]
    assert len(buffer) == 5
    with pytest.raises(ValueError, match="limit"):
        buffer.pending(limit=0)


def test_samples_round_trip_exactly(state_dir: Path) -> None:
    original = Sample(
        collected_at=datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        metrics=(
            Metric("outpost_cpu_utilization_ratio", 0.1, {"cpu": "total"}),
            Metric("outpost_cpu_utilization_ratio", 1e-300, {"cpu": "3"}),
            Metric("outpost_network_sent_bytes_total", 2**60, {"interface": "eth0"}),
            Metric(
                "outpost_temperature_celsius", -12.5, {"sensor": "acpitz", "label": "Ünïcode 🌡"}
            ),
            Metric("outpost_memory_used_bytes", 1234567.0),
        ),
        notes=("no NVIDIA driver: Driver Not Loaded", 'quotes " and \\ backslash'),
    )
    empty = Sample(collected_at=NOW)
    with TelemetryBuffer(state_dir) as buffer:
        buffer.append(original)
        buffer.append(empty)
        assert [item.sample for item in buffer.pending().samples] == [original, empty]
    with TelemetryBuffer(state_dir) as reopened:
        restored = reopened.pending().samples[0].sample
    assert restored == original
    assert restored.collected_at == datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert restored.collected_at.utcoffset() == timedelta(0)
    assert [type(m.value) for m in restored.metrics] == [type(m.value) for m in original.metrics]
    assert all(isinstance(m.labels, Labels) for m in restored.metrics)


def test_damaged_rows_are_skipped_and_removed(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TelemetryBuffer(state_dir) as buffer:
        for i in range(6):
            buffer.append(sample(i))
    damage = {
        2: "not json",
        3: b"\xff\xfe invalid utf-8",
        4: '{"collected_at": "2025-06-01T12:00:00", "metrics": [], "notes": []}',  # naive
        5: '{"collected_at": "2025-06-01T12:00+00:00", "metrics": [["x", "1", {}]], "notes": []}',
    }
    with sqlite3.connect(state_dir / BUFFER_FILE) as connection:
        for seq, body in damage.items():
            connection.execute("UPDATE samples SET body = ? WHERE seq = ?", (body, seq))
    connection.close()
    with TelemetryBuffer(state_dir) as buffer, caplog.at_level(logging.WARNING):
        batch = buffer.pending(limit=2)
        assert [item.seq for item in batch.samples] == [1, 6]
        assert [item.sample for item in batch.samples] == [sample(0), sample(5)]
        assert batch.dropped == 0
        assert len(buffer) == 2
        assert seqs(buffer) == [1, 6]
        for seq in damage:
            assert f"damaged sample {seq}" in caplog.text
        buffer.ack(6, dropped_reported=batch.dropped)
        assert (len(buffer), buffer.pending().dropped) == (0, 0)


def test_a_file_that_is_not_a_database_is_a_clear_error(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / BUFFER_FILE
    path.write_bytes(b"this is not an SQLite database\n" * 64)
    with pytest.raises(TelemetryBufferError, match="not a database") as raised:
        TelemetryBuffer(state_dir)
    assert str(path) in str(raised.value)


def test_a_corrupted_database_is_a_clear_error(state_dir: Path) -> None:
    with TelemetryBuffer(state_dir) as buffer:
        for i in range(400):
            buffer.append(sample(i))
    path = state_dir / BUFFER_FILE
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xa5" * 4096  # a page of the table, overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(TelemetryBufferError) as raised:
        TelemetryBuffer(state_dir)
    assert str(path) in str(raised.value)


def test_a_foreign_database_is_a_clear_error(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / BUFFER_FILE
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, data TEXT)")
    connection.close()
    with pytest.raises(TelemetryBufferError) as raised:
        TelemetryBuffer(state_dir)
    assert str(path) in str(raised.value)


def test_bad_arguments_and_use_after_close(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_samples"):
        TelemetryBuffer(state_dir, max_samples=0)
    buffer = TelemetryBuffer(state_dir)
    with pytest.raises(ValueError, match="dropped_reported"):
        buffer.ack(1, dropped_reported=-1)
    buffer.close()
    buffer.close()
    with pytest.raises(TelemetryBufferError, match=BUFFER_FILE):
        buffer.append(sample())


def test_concurrent_appends_get_unique_gap_free_numbers(buffer: TelemetryBuffer) -> None:
    threads_count, per_thread = 8, 50
    results: list[list[int]] = [[] for _ in range(threads_count)]
    start = threading.Barrier(threads_count)

    def work(index: int) -> None:
        start.wait()
        for i in range(per_thread):
            results[index].append(buffer.append(sample(i)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    issued = sorted(seq for chunk in results for seq in chunk)
    assert issued == list(range(1, threads_count * per_thread + 1))
    assert all(chunk == sorted(chunk) for chunk in results)
    assert seqs(buffer, limit=1000) == issued
