"""`UsageStore`: the usage ledger's rows in the database, agents' rows once per (agent, seq)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects import postgresql, sqlite

from common.errors import InvalidArgument
from common.policy.ledger_record import LedgerRecord
from common.usage_batch import SequencedRecord, UsageBatch
from controlplane.db.database import Database, table_of
from controlplane.db.models import UsageRecordRow, utcnow
from controlplane.usage_validation import (
    BAD_SEQUENCE_NUMBER,
    BATCH_TOO_LARGE,
    MAX_SEQ,
    clean_text,
    rejection,
    row_values,
)

log = logging.getLogger("outpost.controlplane.usage")

GATEWAY_SOURCE = "gateway"
MAX_RECORDS_PER_BATCH = 1000


@dataclass(frozen=True)
class UsageIngestResult:
    """What one batch did. `acked_seq`: every row up to it was handled (stored, already
    stored, or turned away for good), so the agent may forget them; 0 when none was."""

    stored: int
    duplicates: int
    rejected: dict[str, int]  # reason -> rows turned away
    acked_seq: int


class UsageStore:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_records_per_batch: int = MAX_RECORDS_PER_BATCH,
    ) -> None:
        if max_records_per_batch < 1:
            raise InvalidArgument("max_records_per_batch must be at least 1")
        self._db = db
        self._clock = clock
        self.max_records_per_batch = max_records_per_batch
        self._insert = (sqlite if db.dialect == "sqlite" else postgresql).insert

    def now(self) -> datetime:
        return self._clock()

    def record_batch(self, agent_id: str, batch: UsageBatch) -> UsageIngestResult:
        """Stores an agent's batch in one transaction (see UsageIngestResult). Rows are handled
        in seq order; those beyond `max_records_per_batch` wait for a later batch (not acked);
        a row with a bad seq, time, outcome, tokens or cost is turned away but acked; texts are
        clipped. A row already stored (a replay) is not stored again."""
        now = self._clock()
        rejected: Counter[str] = Counter()
        ordered = sorted(batch.records, key=lambda item: item.seq)
        taken = ordered[: self.max_records_per_batch]
        if len(ordered) > len(taken):
            rejected[BATCH_TOO_LARGE] += len(ordered) - len(taken)
        source = clean_text(agent_id, 36)
        rows: list[dict[str, Any]] = []
        duplicates, previous = 0, None
        for item in taken:
            if item.seq == previous:  # the same seq twice in one batch
                duplicates += 1
                continue
            previous = item.seq
            reason = _seq_rejection(item) or rejection(item.record, now)
            if reason is not None:
                rejected[reason] += 1
                continue
            rows.append({"source": source, "seq": item.seq, "received_at": now}
                        | row_values(item.record))  # fmt: skip
        stored = self._insert_new(rows)
        duplicates += len(rows) - stored
        if rejected:
            log.warning("agent %s usage rows turned away: %s", agent_id, dict(rejected))
        if batch.dropped:
            log.warning("agent %s dropped %d usage rows (its buffer was full)", agent_id,
                        batch.dropped)  # fmt: skip
        return UsageIngestResult(
            stored=stored,
            duplicates=duplicates,
            rejected=dict(rejected),
            acked_seq=max(0, taken[-1].seq) if taken else 0,
        )

    def record(self, record: LedgerRecord, source: str = GATEWAY_SOURCE) -> bool:
        """Stores one row of the control plane's own (the gateway's); False when it is turned
        away (logged): a bad time, outcome, token count or cost."""
        now = self._clock()
        reason = rejection(record, now)
        if reason is not None:
            log.warning("usage row from %s turned away: %s", source[:36], reason)
            return False
        row = {"source": clean_text(source, 36), "seq": None, "received_at": now}
        self._insert_new([row | row_values(record)])
        return True

    def _insert_new(self, rows: list[dict[str, Any]]) -> int:
        """Inserts the rows not stored yet (the unique (source, seq) decides, also against a
        concurrent transaction with the same rows); answers how many were new."""
        if not rows:
            return 0
        table = table_of(UsageRecordRow)
        statement = (
            self._insert(table)
            .on_conflict_do_nothing(index_elements=[table.c.source, table.c.seq])
            .returning(table.c.id)
        )
        with self._db.session() as session:
            if rows[0]["seq"] is None:  # no conflict possible: NULL seqs are all distinct
                session.connection().execute(sa_insert(table), rows)
                return len(rows)
            return len(list(session.connection().execute(statement, rows).scalars()))


def _seq_rejection(item: SequencedRecord) -> str | None:
    seq = item.seq
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        return BAD_SEQUENCE_NUMBER
    return None
