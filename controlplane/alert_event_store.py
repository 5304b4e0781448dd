"""`AlertEventStore`: alert firings and clearings in the database, agents' once per (agent, seq)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlmodel import col

from common.alert_batch import AlertEventBatch
from common.errors import InvalidArgument
from common.policy.alert_notify import AlertEvent
from controlplane.db.database import Database, table_of
from controlplane.db.models import ALERT_STATES, ID_CHARS, REASON_CHARS, AlertEventRow, utcnow
from controlplane.sequenced_rows import IngestResult, SequencedRows
from controlplane.usage_validation import (
    BAD_TIME,
    FROM_THE_FUTURE,
    FUTURE_TOLERANCE,
    MAX_AGE,
    TOO_OLD,
    clean_text,
)

log = logging.getLogger("outpost.controlplane.alerts")

GATEWAY_SOURCE = "gateway"
MAX_EVENTS_PER_BATCH = 1000
MAX_FIRING = 10_000  # rows of the firing answer
# Reasons an event is turned away (counted in IngestResult.rejected).
BAD_STATE = "bad state"
BAD_NUMBER = "value or threshold not finite"


def _columns(event: AlertEvent, now: datetime) -> dict[str, Any] | str:
    """The columns of an acceptable event, texts clipped; else why it is turned away."""
    at_s = event.at
    if isinstance(at_s, bool) or not isinstance(at_s, int | float) or not math.isfinite(at_s):
        return BAD_TIME
    try:
        at = datetime.fromtimestamp(at_s, UTC)
    except (OverflowError, OSError, ValueError):
        return BAD_TIME
    if at > now + FUTURE_TOLERANCE:
        return FROM_THE_FUTURE
    if at < now - MAX_AGE:
        return TOO_OLD
    if event.state not in ALERT_STATES:
        return BAD_STATE
    numbers = (event.value, event.threshold)
    if not all(isinstance(n, int | float) and math.isfinite(n) for n in numbers):
        return BAD_NUMBER
    return {
        "at": at,
        "rule": clean_text(event.rule, ID_CHARS),
        "metric": clean_text(event.metric, 32),
        "scope": clean_text(event.scope, 16),
        "scope_key": clean_text(event.key, ID_CHARS),
        "state": event.state,
        "value": float(event.value),
        "threshold": float(event.threshold),
        "op": clean_text(event.op, 4),
        "action": clean_text(event.action, 32),
        "reason": clean_text(event.reason, REASON_CHARS),
    }


class AlertEventStore:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_events_per_batch: int = MAX_EVENTS_PER_BATCH,
    ) -> None:
        if max_events_per_batch < 1:
            raise InvalidArgument("max_events_per_batch must be at least 1")
        self._db = db
        self._clock = clock
        self._rows = SequencedRows(db, table_of(AlertEventRow), max_events_per_batch)

    def record_batch(self, agent_id: str, batch: AlertEventBatch) -> IngestResult:
        """Stores an agent's batch in one transaction (see SequencedRows.ingest): an event with
        a bad seq, time, state or number is turned away but acked; texts are clipped."""
        now = self._clock()
        items = [(item.seq, item.event) for item in batch.events]
        result = self._rows.ingest(agent_id, items, lambda e: _columns(e, now), now)
        if result.rejected:
            log.warning("agent %s alert events turned away: %s", agent_id, result.rejected)
        if batch.dropped:
            log.warning("agent %s dropped %d alert events (its buffer was full)", agent_id,
                        batch.dropped)  # fmt: skip
        return result

    def record(self, event: AlertEvent, source: str = GATEWAY_SOURCE) -> bool:
        """Stores one event of the control plane's own (the gateway's); False when it is
        turned away (logged)."""
        return self.record_many([event], source) == 1

    def record_many(self, events: Sequence[AlertEvent], source: str = GATEWAY_SOURCE) -> int:
        """Stores the control plane's own events in one transaction; how many were stored."""
        now = self._clock()
        rows = []
        for event in events:
            values = _columns(event, now)
            if isinstance(values, str):
                log.warning("alert event from %s turned away: %s", source[:36], values)
                continue
            rows.append({"source": clean_text(source, 36), "seq": None, "received_at": now}
                        | values)  # fmt: skip
        return self._rows.insert(rows)

    def events(
        self,
        *,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, int] | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[AlertEventRow]:
        """Events newest first (by time, then id) in [since, until); `before` (time, id)
        continues a page; `filters`: column name -> value."""
        at, row_id = col(AlertEventRow.at), col(AlertEventRow.id)
        table = table_of(AlertEventRow)
        statement = select(AlertEventRow)
        if since is not None:
            statement = statement.where(at >= since)
        if until is not None:
            statement = statement.where(at < until)
        for name, value in (filters or {}).items():
            statement = statement.where(table.c[name] == value)
        if before is not None:
            statement = statement.where(
                or_(at < before[0], and_(at == before[0], row_id < before[1]))
            )
        statement = statement.order_by(at.desc(), row_id.desc()).limit(limit)
        with self._db.session() as session:
            return [AlertEventRow.model_validate(r) for r in session.scalars(statement)]

    def firing(self) -> tuple[list[AlertEventRow], bool]:
        """The latest event of each (source, rule, key) where it is a firing, newest first;
        True when more than MAX_FIRING were found (the newest MAX_FIRING are answered)."""
        latest = select(func.max(col(AlertEventRow.id))).group_by(
            col(AlertEventRow.source), col(AlertEventRow.rule), col(AlertEventRow.scope_key)
        )
        statement = (
            select(AlertEventRow)
            .where(col(AlertEventRow.id).in_(latest), col(AlertEventRow.state) == "firing")
            .order_by(col(AlertEventRow.at).desc(), col(AlertEventRow.id).desc())
            .limit(MAX_FIRING + 1)
        )
        with self._db.session() as session:
            rows = [AlertEventRow.model_validate(r) for r in session.scalars(statement)]
        return rows[:MAX_FIRING], len(rows) > MAX_FIRING
