"""Telemetry retention: raw points roll up into minute averages, and both age out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from controlplane.db.database import Database, table_of
from controlplane.db.dialect_functions import AsJson, MinuteOf
from controlplane.db.models import MetricPoint, MetricRollup, TelemetrySampleRecord
from controlplane.telemetry_validation import aware_utc

COMPACT_SLICE = timedelta(hours=1)  # compaction commits per slice of raw time
# Two compactions at once on PostgreSQL: the second finds this lock taken and does nothing.
_COMPACT_LOCK_KEY = 0x6F7574706F737431  # "outpost1"


@dataclass(frozen=True)
class CompactResult:
    rolled_up: int  # minute rollup rows written (new or added to)
    raw_deleted: int  # raw points moved into rollups
    rollups_deleted: int  # rollups past rollup_retention


class TelemetryRetention:
    def __init__(
        self,
        db: Database,
        raw_retention: timedelta,
        rollup_retention: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self.raw_retention = raw_retention
        self.rollup_retention = rollup_retention
        self._clock = clock
        self._upsert_insert = (sqlite if db.dialect == "sqlite" else postgresql).insert

    def compact(self, now: datetime | None = None) -> CompactResult:
        """Rolls raw points older than `raw_retention` into minute rollups and deletes them
        with their sample records; deletes rollups older than `rollup_retention`.

        Idempotent: each slice of raw time is rolled up and deleted in one transaction, so a
        point is counted in a rollup exactly once however often (or concurrently) this runs.
        """
        now = aware_utc(now if now is not None else self._clock(), "now")
        raw_cutoff = now - self.raw_retention
        rolled_up = raw_deleted = 0
        with self._db.session() as session:
            oldest = session.exec(select(func.min(MetricPoint.ts))).one()
        lower = oldest
        while lower is not None and lower < raw_cutoff:
            upper = min(lower + COMPACT_SLICE, raw_cutoff)
            written, deleted = self._compact_slice(upper)
            rolled_up += written
            raw_deleted += deleted
            lower = upper
        with self._db.session() as session:
            if not self._compaction_lock(session):
                return CompactResult(rolled_up, raw_deleted, 0)
            session.exec(
                delete(TelemetrySampleRecord).where(
                    col(TelemetrySampleRecord.collected_at) < raw_cutoff
                )
            )
            rollups_deleted = session.exec(
                delete(MetricRollup).where(col(MetricRollup.minute) < now - self.rollup_retention)
            ).rowcount
        return CompactResult(rolled_up, raw_deleted, rollups_deleted)

    def _compaction_lock(self, session: Session) -> bool:
        """Serialises compactions: SQLite's write lock does; PostgreSQL takes an advisory lock
        for the transaction (False: another compaction holds it)."""
        if self._db.dialect != "postgresql":
            return True
        return bool(
            session.execute(func.pg_try_advisory_xact_lock(_COMPACT_LOCK_KEY).select()).scalar()
        )

    def _compact_slice(self, upper: datetime) -> tuple[int, int]:
        """Rolls up and deletes the raw points before `upper`: (rollup rows, points)."""
        points = table_of(MetricPoint)
        rollups = table_of(MetricRollup)
        with self._db.session() as session:
            if self._db.dialect == "postgresql":
                # One snapshot for both statements: what is deleted is what was rolled up,
                # also when points before `upper` commit in between.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if not self._compaction_lock(session):
                return 0, 0
            minute = MinuteOf(points.c.ts)
            aggregate = (
                sa_select(
                    points.c.agent_id,
                    points.c.name,
                    points.c.labels_key,
                    minute,
                    AsJson(points.c.labels_key),
                    func.count(),
                    func.sum(points.c.value),
                    func.min(points.c.value),
                    func.max(points.c.value),
                )
                .where(points.c.ts < upper)
                .group_by(points.c.agent_id, points.c.name, points.c.labels_key, minute)
            )
            statement = self._upsert_insert(rollups).from_select(
                [
                    "agent_id",
                    "name",
                    "labels_key",
                    "minute",
                    "labels",
                    "count",
                    "total",
                    "minimum",
                    "maximum",
                ],
                aggregate,
            )
            new, old = statement.excluded, rollups.c
            statement = statement.on_conflict_do_update(
                index_elements=[old.agent_id, old.name, old.labels_key, old.minute],
                set_={
                    "count": old.count + new.count,
                    "total": old.total + new.total,
                    "minimum": case((new.minimum < old.minimum, new.minimum), else_=old.minimum),
                    "maximum": case((new.maximum > old.maximum, new.maximum), else_=old.maximum),
                },
            )
            connection = session.connection()
            written = connection.execute(
                statement.execution_options(preserve_rowcount=True)
            ).rowcount
            deleted = connection.execute(delete(points).where(points.c.ts < upper)).rowcount
        return max(written, 0), max(deleted, 0)
