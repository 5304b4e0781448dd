"""`UsageStore`: the usage ledger's rows in the database, agents' rows once per (agent, seq)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from common.errors import InvalidArgument
from common.policy.ledger_record import LedgerRecord
from common.usage_batch import UsageBatch
from controlplane.db.database import Database, table_of
from controlplane.db.models import UsageRecordRow, utcnow
from controlplane.sequenced_rows import IngestResult, SequencedRows
from controlplane.usage_validation import clean_text, rejection, row_values

log = logging.getLogger("outpost.controlplane.usage")

GATEWAY_SOURCE = "gateway"
MAX_RECORDS_PER_BATCH = 1000
UsageIngestResult = IngestResult


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
        self._clock = clock
        self._rows = SequencedRows(db, table_of(UsageRecordRow), max_records_per_batch)
        self.max_records_per_batch = max_records_per_batch

    def now(self) -> datetime:
        return self._clock()

    def record_batch(self, agent_id: str, batch: UsageBatch) -> UsageIngestResult:
        """Stores an agent's batch in one transaction (see SequencedRows.ingest): a row with a
        bad seq, time, outcome, tokens or cost is turned away but acked; texts are clipped."""
        now = self._clock()

        def columns(record: LedgerRecord) -> dict[str, Any] | str:
            return rejection(record, now) or row_values(record)

        items = [(item.seq, item.record) for item in batch.records]
        result = self._rows.ingest(agent_id, items, columns, now)
        if result.rejected:
            log.warning("agent %s usage rows turned away: %s", agent_id, result.rejected)
        if batch.dropped:
            log.warning("agent %s dropped %d usage rows (its buffer was full)", agent_id,
                        batch.dropped)  # fmt: skip
        return result

    def record(self, record: LedgerRecord, source: str = GATEWAY_SOURCE) -> bool:
        """Stores one row of the control plane's own (the gateway's); False when it is turned
        away (logged): a bad time, outcome, token count or cost."""
        return self.record_many([record], source) == 1

    def record_many(self, records: Sequence[LedgerRecord], source: str = GATEWAY_SOURCE) -> int:
        """Stores the control plane's own rows in one transaction; how many were stored (the
        others are turned away and logged, as by `record`)."""
        now = self._clock()
        rows = []
        for record in records:
            reason = rejection(record, now)
            if reason is not None:
                log.warning("usage row from %s turned away: %s", source[:36], reason)
                continue
            row = {"source": clean_text(source, 36), "seq": None, "received_at": now}
            rows.append(row | row_values(record))
        return self._rows.insert(rows)
