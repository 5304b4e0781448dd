"""Usage batches through protobuf: every field both ways; impossible times and absent values."""

from __future__ import annotations

from datetime import UTC, datetime

from common.proto_convert import usage_batch_from_pb, usage_batch_to_pb
from common.usage_batch import SequencedRecord, UsageBatch
from outpost.v1 import control_pb2 as cpb
from tests.usage_rows import ledger_row


def test_a_batch_round_trips_every_field() -> None:
    batch = UsageBatch(
        records=(
            SequencedRecord(1, ledger_row(prompt="the prompt")),
            SequencedRecord(2, ledger_row(route=None, target=None, outcome="refused")),
            SequencedRecord(3, ledger_row(prompt="", route="", target="")),
            SequencedRecord(4, ledger_row(forwarded=True)),
        ),
        dropped=4,
    )
    wire = cpb.AgentMessage(usage=usage_batch_to_pb(batch)).SerializeToString()
    message = cpb.AgentMessage.FromString(wire)
    assert message.WhichOneof("body") == "usage"
    assert usage_batch_from_pb(message.usage) == batch


def test_times_no_clock_holds_become_datetime_min() -> None:
    message = cpb.UsageBatch(records=[cpb.UsageRecord(seq=1, at_us=2**63 - 1)])
    (item,) = usage_batch_from_pb(message).records
    assert item.record.at == datetime.min.replace(tzinfo=UTC)
    assert item.record.route is None
    assert item.record.prompt is None
    assert item.record.forwarded is False
