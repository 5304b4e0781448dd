"""The gateway's background writer: waiting items written together, in order, on its thread;
never blocking; drops and failures counted and logged."""

from __future__ import annotations

import logging
import threading

import pytest

from controlplane.background_writer import MAX_BATCH, BackgroundWriter


class HeldWriter:
    """Records each batch; the first one blocks until `release` is set, so that the items
    recorded meanwhile wait together. A batch holding `failing` raises."""

    def __init__(self, failing: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._failing = failing

    def write(self, batch: list[int]) -> None:
        self.batches.append(list(batch))
        if len(self.batches) == 1:
            self.started.set()
            self.release.wait(10)
        if self._failing in batch:
            raise RuntimeError("database down")


def run(held: HeldWriter, items: list[int]) -> BackgroundWriter[int]:
    writer = BackgroundWriter(held.write, name="test-writer", describe=lambda n: f"item {n}")
    writer.record(items[0])
    assert held.started.wait(10)
    for item in items[1:]:
        writer.record(item)
    held.release.set()
    assert writer.wait_idle(10)
    writer.close()
    return writer


def test_items_waiting_are_written_together_in_order() -> None:
    held = HeldWriter()
    writer = run(held, [1, 2, 3, 4, 5])
    assert held.batches == [[1], [2, 3, 4, 5]]
    assert (writer.written, writer.failed, writer.dropped) == (5, 0, 0)


def test_a_batch_is_at_most_max_batch_items() -> None:
    held = HeldWriter()
    items = list(range(MAX_BATCH + 6))
    writer = run(held, items)
    assert [len(batch) for batch in held.batches] == [1, MAX_BATCH, 5]
    assert [item for batch in held.batches for item in batch] == items
    assert writer.written == len(items)


def test_a_failed_batch_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    held = HeldWriter(failing=3)
    with caplog.at_level(logging.ERROR):
        writer = run(held, [1, 2, 3, 4, 5])
    assert (writer.written, writer.failed, writer.dropped) == (1, 4, 0)
    assert "test-writer: writing item 2 and 3 more failed" in caplog.text


def test_a_full_queue_drops_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    writing = threading.Event()
    written: list[str] = []

    def write(batch: list[str]) -> None:
        writing.set()
        release.wait(10)
        written.extend(batch)

    writer = BackgroundWriter(write, name="slow-writer", describe=str, max_waiting=2)
    with caplog.at_level(logging.ERROR):
        writer.record("a")
        assert writing.wait(10)  # the thread holds "a"
        for item in "bcdefgh":  # two wait; the rest are dropped
            writer.record(item)
    assert writer.dropped == 5
    assert "slow-writer: 2 waiting;" in caplog.text
    release.set()
    writer.close()
    assert len(written) == 8 - writer.dropped
    assert written == sorted(written)
