"""Rows agents number (seq) stored once per (source, seq): order, batch limit, replays, acks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.db.database import Database
from controlplane.usage_validation import BAD_SEQUENCE_NUMBER, BATCH_TOO_LARGE, MAX_SEQ, clean_text

_T = TypeVar("_T")
# An item's columns, or why it is turned away.
Columns = Callable[[_T], dict[str, Any] | str]


@dataclass(frozen=True)
class IngestResult:
    """What one batch did. `acked_seq`: every row up to it was handled (stored, already
    stored, or turned away for good), so the agent may forget them; 0 when none was."""

    stored: int
    duplicates: int
    rejected: dict[str, int]  # reason -> rows turned away
    acked_seq: int


class SequencedRows:
    """One table with `source`, `seq` (unique together) and `received_at` columns."""

    def __init__(self, db: Database, table: Table, max_per_batch: int) -> None:
        self._db = db
        self._table = table
        self.max_per_batch = max_per_batch
        self._insert = (sqlite if db.dialect == "sqlite" else postgresql).insert

    def ingest(
        self,
        source: str,
        items: Sequence[tuple[int, _T]],
        columns: Columns[_T],
        now: datetime,
    ) -> IngestResult:
        """Stores an agent's (seq, item) pairs in one transaction, in seq order; those beyond
        `max_per_batch` wait for a later batch (not acked); an item with a bad seq, or that
        `columns` turns away, is acked but not stored; one stored already is not stored
        again."""
        rejected: Counter[str] = Counter()
        ordered = sorted(items, key=lambda item: item[0])
        taken = ordered[: self.max_per_batch]
        if len(ordered) > len(taken):
            rejected[BATCH_TOO_LARGE] += len(ordered) - len(taken)
        rows: list[dict[str, Any]] = []
        duplicates, previous = 0, None
        for seq, item in taken:
            if seq == previous:  # the same seq twice in one batch
                duplicates += 1
                continue
            previous = seq
            values = columns(item) if _good_seq(seq) else BAD_SEQUENCE_NUMBER
            if isinstance(values, str):
                rejected[values] += 1
                continue
            rows.append({"source": clean_text(source, 36), "seq": seq, "received_at": now}
                        | values)  # fmt: skip
        stored = self.insert(rows)
        return IngestResult(
            stored=stored,
            duplicates=duplicates + len(rows) - stored,
            rejected=dict(rejected),
            acked_seq=max(0, taken[-1][0]) if taken else 0,
        )

    def insert(self, rows: list[dict[str, Any]]) -> int:
        """Inserts the rows not stored yet (the unique (source, seq) decides, also against a
        concurrent transaction with the same rows); answers how many were new. Rows without a
        seq (the gateway's) are all new."""
        if not rows:
            return 0
        table = self._table
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


def _good_seq(seq: object) -> bool:
    return not isinstance(seq, bool) and isinstance(seq, int) and 1 <= seq <= MAX_SEQ
