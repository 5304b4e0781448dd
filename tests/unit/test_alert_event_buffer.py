"""The agent's alert event buffer and its recorder; alert batches through protobuf."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.alert_event_buffer import (
    ALERT_EVENTS_FILE,
    AlertEventBuffer,
    AlertEventBufferError,
)
from agent.usage_recorder import AlertEventRecorder
from common.alert_batch import AlertEventBatch, SequencedAlertEvent
from common.proto_convert import alert_event_batch_from_pb, alert_event_batch_to_pb
from outpost.v1 import control_pb2 as cpb
from tests.alert_events import alert_event


def test_events_round_trip_exactly_across_a_restart(tmp_path: Path) -> None:
    events = [
        alert_event(),
        alert_event(state="cleared", reason="rule removed", value=0.0, at=1.5),
        alert_event(rule="Ünïcode 🌡", scope="all", key="*", metric="daily_cost", op="<="),
    ]
    with AlertEventBuffer(tmp_path) as buffer:
        assert buffer.append_many(events) == [1, 2, 3]
    assert stat.S_IMODE((tmp_path / ALERT_EVENTS_FILE).stat().st_mode) == 0o600
    with AlertEventBuffer(tmp_path) as reopened:
        pending = reopened.pending_items()
        assert pending.items == tuple(enumerate(events, start=1))
        reopened.ack(2, dropped_reported=0)
        assert [seq for seq, _ in reopened.pending_items().items] == [3]
        assert reopened.append(alert_event()) == 4


def test_a_full_buffer_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    with AlertEventBuffer(tmp_path, max_events=2) as buffer:
        buffer.append_many([alert_event(value=float(n)) for n in range(5)])
        pending = buffer.pending_items()
        assert [event.value for _, event in pending.items] == [3.0, 4.0]
        assert pending.dropped == 3
    with pytest.raises(ValueError, match="max_events must be at least 1"):
        AlertEventBuffer(tmp_path / "other", max_events=0)


@pytest.mark.parametrize(
    "body",
    [
        '{"at": 1}',
        "[1, 2]",
        "not json",
        '{"rule": "r", "metric": "m", "scope": "s", "key": "k", "op": ">", "action": "a",'
        ' "reason": "", "value": 1, "threshold": 1, "at": 1, "state": "burning"}',
        '{"rule": "r", "metric": "m", "scope": "s", "key": "k", "op": ">", "action": "a",'
        ' "reason": "", "value": Infinity, "threshold": 1, "at": 1, "state": "firing"}',
        '{"rule": 7, "metric": "m", "scope": "s", "key": "k", "op": ">", "action": "a",'
        ' "reason": "", "value": 1, "threshold": 1, "at": 1, "state": "firing"}',
    ],
)
def test_damaged_events_are_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    with AlertEventBuffer(tmp_path) as buffer:
        buffer.append_many([alert_event(), alert_event(), alert_event()])
    with sqlite3.connect(tmp_path / ALERT_EVENTS_FILE) as connection:
        connection.execute("UPDATE events SET body = ? WHERE seq = 2", (body,))
    connection.close()
    with AlertEventBuffer(tmp_path) as buffer, caplog.at_level(logging.WARNING):
        assert [seq for seq, _ in buffer.pending_items().items] == [1, 3]
    assert "damaged event 2" in caplog.text


def test_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ALERT_EVENTS_FILE).write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(AlertEventBufferError, match="not a database"):
        AlertEventBuffer(tmp_path)


def test_the_recorder_writes_events_in_the_background_and_when_stopped(tmp_path: Path) -> None:
    async def scenario(buffer: AlertEventBuffer) -> None:
        written = asyncio.Event()
        recorder = AlertEventRecorder(buffer, written.set, what="alert events")
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop))
        recorder.record(alert_event())
        await asyncio.wait_for(written.wait(), 10)
        assert len(buffer) == 1
        recorder.record(alert_event(state="cleared"))
        stop.set()
        await task

    with AlertEventBuffer(tmp_path) as buffer:
        asyncio.run(scenario(buffer))
        states = [event.state for _, event in buffer.pending_items().items]
    assert states == ["firing", "cleared"]


def test_a_batch_round_trips_through_protobuf_and_odd_values_pass_as_sent() -> None:
    batch = AlertEventBatch(
        events=(
            SequencedAlertEvent(1, alert_event(at=1_764_000_000.123456)),
            SequencedAlertEvent(2, alert_event(state="cleared", reason="rule changed")),
        ),
        dropped=3,
    )
    wire = cpb.AgentMessage(alert_events=alert_event_batch_to_pb(batch)).SerializeToString()
    message = cpb.AgentMessage.FromString(wire)
    assert message.WhichOneof("body") == "alert_events"
    assert alert_event_batch_from_pb(message.alert_events) == batch
    hostile = cpb.AlertEventBatch(
        events=[cpb.AlertEventRecord(seq=9, at_us=2**63 - 1, state="burning", value=math.nan)]
    )
    (item,) = alert_event_batch_from_pb(hostile).events
    assert (item.seq, item.event.state) == (9, "burning")  # the store turns it away
    assert math.isnan(item.event.value)
    ack = cpb.ControlMessage(alert_event_ack=cpb.AlertEventAck(acked_seq=5))
    assert cpb.ControlMessage.FromString(ack.SerializeToString()).alert_event_ack.acked_seq == 5
