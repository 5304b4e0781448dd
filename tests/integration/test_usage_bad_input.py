"""A hostile agent's usage batches on the real control stream: bad rows are turned away or
clipped, everything handled is acked, a replay stores nothing twice, the stream stays up."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.db.models import UsageRecordRow
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


def test_hostile_usage_rows_are_checked_and_the_stream_stays_up(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)

    def row(seq: int, **fields: object) -> cpb.UsageRecord:
        values: dict[str, object] = {
            "seq": seq, "at_us": now_us, "team": "t", "level": "internal", "outcome": "ok",
        }  # fmt: skip
        return cpb.UsageRecord(**(values | fields))  # type: ignore[arg-type]

    batch = cpb.UsageBatch(
        records=[
            row(
                1,
                team="x" * 10_000,
                prompt="p" * 100_000,
                latency_ms=float("nan"),
                attempts=[cpb.UsageAttempt(target="a")] * 500,
            ),
            row(2, outcome="splendid"),
            row(3, at_us=now_us + 3_600_000_000),  # an hour ahead
            row(4, at_us=-(2**63)),  # no clock holds it
            row(5, prompt_tokens=2**64 - 1),
            row(6, cost_nanos=2**63),
            row(7, cost_nanos=1_500_000_000, completion_tokens=3),
            row(7),  # a repeat
            row(0),  # not a sequence number
        ],
        dropped=3,
    )
    # replayed whole: nothing is stored twice
    acks = sent_twice(cp, enrolled, cpb.AgentMessage(usage=batch), "usage_ack")
    assert acks == [7, 7]  # everything handled, so the agent may forget all of it
    stored = stored_from(cp, UsageRecordRow, enrolled.agent_id)
    assert [r.seq for r in stored] == [1, 7]
    first, last = stored
    assert first.team == "x" * 63
    assert len(first.prompt or "") == 16_384
    assert first.latency_ms == 0.0
    assert len(first.attempts) == 64
    assert (last.cost_nanos, last.completion_tokens) == (1_500_000_000, 3)
    with cp.api() as api:
        spend = api.get("/usage/spend", params={"group_by": "source"}).json()
    mine = next(g for g in spend["groups"] if g["source"] == enrolled.agent_id)
    assert (mine["requests"], mine["cost"]) == (2, "1.500000000")
