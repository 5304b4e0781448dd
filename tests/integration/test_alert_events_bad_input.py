"""A hostile agent's alert event batches on the real control stream: bad events are turned away
or clipped, everything handled is acked, a replay stores nothing twice, the stream stays up."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.db.models import AlertEventRow
from outpost.v1 import control_pb2 as cpb
from tests.controlplane_harness import RunningControlPlane
from tests.integration.test_control_plane_bad_input import (
    cp,
    enroll_new,
    fleet,
    sent_twice,
    stored_from,
)

__all__ = ["cp", "fleet"]  # the fixtures, shared


def test_hostile_alert_events_are_checked_and_the_stream_stays_up(
    cp: RunningControlPlane,
) -> None:
    enrolled = enroll_new(cp)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)

    def event(seq: int, **fields: object) -> cpb.AlertEventRecord:
        values: dict[str, object] = {
            "seq": seq, "at_us": now_us, "rule": "r", "key": "k", "state": "firing",
        }  # fmt: skip
        return cpb.AlertEventRecord(**(values | fields))  # type: ignore[arg-type]

    batch = cpb.AlertEventBatch(
        events=[
            event(1, rule="x" * 10_000, key="\x00" * 100, reason="y" * 100_000),
            event(2, state="smouldering"),
            event(3, at_us=now_us + 3_600_000_000),  # an hour ahead
            event(4, at_us=-(2**63)),  # no clock holds it
            event(5, value=float("nan")),
            event(6, threshold=float("-inf")),
            event(7, state="cleared", value=0.25),
            event(7),  # a repeat
            event(0),  # not a sequence number
        ],
        dropped=2,
    )
    # replayed whole: nothing is stored twice
    acks = sent_twice(cp, enrolled, cpb.AgentMessage(alert_events=batch), "alert_event_ack")
    assert acks == [7, 7]  # everything handled, so the agent may forget all of it
    stored = stored_from(cp, AlertEventRow, enrolled.agent_id)
    assert [(r.seq, r.state) for r in stored] == [(1, "firing"), (7, "cleared")]
    assert (len(stored[0].rule), len(stored[0].reason)) == (63, 500)
    assert "\x00" not in stored[0].scope_key
    assert stored[1].value == 0.25
