"""The gateway's background writer: in order on its thread, never blocking; drops and failures
counted and logged."""

from __future__ import annotations

import logging
import threading

import pytest

from controlplane.background_writer import BackgroundWriter


def test_items_are_written_in_order_and_failures_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[int] = []

    def write(item: int) -> None:
        if item == 3:
            raise RuntimeError("database down")
        written.append(item)

    writer = BackgroundWriter(write, name="test-writer", describe=lambda n: f"item {n}")
    with caplog.at_level(logging.ERROR):
        for item in range(1, 6):
            writer.record(item)
        assert writer.wait_idle(10)
    writer.close()
    assert written == [1, 2, 4, 5]
    assert (writer.written, writer.failed, writer.dropped) == (4, 1, 0)
    assert "test-writer: writing item 3 failed" in caplog.text


def test_a_full_queue_drops_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    written: list[str] = []

    def write(item: str) -> None:
        release.wait(10)
        written.append(item)

    writer = BackgroundWriter(write, name="slow-writer", describe=str, max_waiting=2)
    with caplog.at_level(logging.ERROR):
        for item in "abcdefgh":  # the thread holds one; two wait; the rest are dropped
            writer.record(item)
    assert writer.dropped >= 5
    assert "slow-writer: 2 waiting;" in caplog.text
    release.set()
    writer.close()
    assert len(written) == 8 - writer.dropped
    assert written == sorted(written)
