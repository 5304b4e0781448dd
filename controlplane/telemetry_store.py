"""`TelemetryStore`: agents' telemetry in the database, stored once per (agent, seq).

Ingestion keeps a record per sample (the dedupe key: replays after an outage store nothing
twice, also when two streams deliver the same batch at once), raw points for `raw_retention`,
and per-minute rollups (count, sum, minimum, maximum per series) for `rollup_retention`;
`compact()` moves raw points into rollups and applies both retentions. Every statement is the
same on SQLite and PostgreSQL: the few expressions the dialects spell differently (a minute's
start, milliseconds since the epoch, text as JSON) live in `controlplane/db/dialect_functions`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, or_
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from common.errors import InvalidArgument, NotFound
from common.telemetry import (
    METRICS,
    Metric,
    MetricSpec,
    Sample,
    SequencedSample,
    TelemetryBatch,
)
from controlplane.db.database import Database, table_of
from controlplane.db.dialect_functions import EpochMs
from controlplane.db.models import (
    LABELS_KEY_CHARS,
    Agent,
    MetricPoint,
    MetricRollup,
    TelemetryCounters,
    TelemetrySampleRecord,
    UtcDateTime,
    utcnow,
)
from controlplane.telemetry_retention import CompactResult, TelemetryRetention
from controlplane.telemetry_validation import (
    BAD_SEQUENCE_NUMBER,
    BATCH_TOO_LARGE,
    SAMPLE_FROM_THE_FUTURE,
    SAMPLE_TOO_OLD,
    TOO_MANY_METRICS,
    WRONG_LABELS,
    aware_utc,
    reject_reason,
)

log = logging.getLogger("outpost.controlplane.telemetry")

FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew a sample's collected_at may have
MAX_SEQ = 2**63 - 1  # the seq column is a signed 64-bit integer
MAX_DROPPED = 2**53  # a `dropped` count beyond this is nonsense; counted as this
MAX_METRICS_PER_SAMPLE = 4096
MAX_NOTES = 32
MAX_NOTE_CHARS = 500
MAX_BUCKETS = 10_000
MIN_STEP = timedelta(seconds=1)


@dataclass(frozen=True)
class IngestResult:
    """What one batch did. `acked_seq`: every sample up to it was handled (stored, already
    stored, or rejected for good), so the agent may forget them; 0 when none was."""

    stored: int
    duplicates: int
    rejected: dict[str, int]  # reason -> samples or metrics turned away
    acked_seq: int


@dataclass(frozen=True)
class Counters:
    """Per agent (or summed over the fleet), since enrollment."""

    received: int = 0  # samples in batches
    stored: int = 0  # samples stored
    duplicates: int = 0  # samples already stored (replays)
    rejected: int = 0  # samples and metrics turned away for good (not: batch too large)
    dropped_by_agent: int = 0  # samples the agent's full buffer dropped
    last_sample_at: datetime | None = None  # newest collected_at stored


@dataclass(frozen=True)
class Series:
    """One label set of a metric: (bucket start, average) per step bucket that has data."""

    labels: dict[str, str]
    points: list[tuple[datetime, float]] = field(default_factory=list)


def labels_key(labels: Mapping[str, str]) -> str:
    """The canonical text of a label set: compact JSON with sorted keys, e.g. {"cpu":"0"}."""
    return json.dumps(dict(labels), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _notes(notes: Sequence[str]) -> list[str]:
    kept = [n for n in notes[:MAX_NOTES] if isinstance(n, str)]
    return [n.replace("\x00", "\N{REPLACEMENT CHARACTER}")[:MAX_NOTE_CHARS] for n in kept]


class TelemetryStore:
    def __init__(
        self,
        db: Database,
        *,
        raw_retention: timedelta = timedelta(days=1),
        rollup_retention: timedelta = timedelta(days=30),
        max_samples_per_batch: int = 1000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if raw_retention <= FUTURE_TOLERANCE:
            raise InvalidArgument(f"raw_retention must be longer than {FUTURE_TOLERANCE}")
        if rollup_retention < raw_retention:
            raise InvalidArgument("rollup_retention must be at least raw_retention")
        if max_samples_per_batch < 1:
            raise InvalidArgument("max_samples_per_batch must be at least 1")
        self._db = db
        self.raw_retention = raw_retention
        self.rollup_retention = rollup_retention
        self.max_samples_per_batch = max_samples_per_batch
        self._clock = clock
        dialect = sqlite if db.dialect == "sqlite" else postgresql
        self._upsert_insert = dialect.insert
        self._count_statement: Any = None
        self._retention = TelemetryRetention(db, raw_retention, rollup_retention, clock)

    def now(self) -> datetime:
        """The store's clock (timezone-aware UTC): what "now" means for ingestion."""
        return self._clock()

    # -- ingestion ------------------------------------------------------------------------

    def ingest(self, agent_id: str, batch: TelemetryBatch) -> IngestResult:
        """Stores a batch in one transaction; see `IngestResult`. NotFound for an unknown agent.

        Samples are handled in seq order. Those beyond `max_samples_per_batch` wait for a
        later batch (not acked); a sample more than FUTURE_TOLERANCE ahead of the clock or
        older than `raw_retention` is rejected whole but acked; metrics `validate_metric`
        refuses are dropped and counted, the rest of their sample is stored.
        """
        now = self._clock()
        rejected: Counter[str] = Counter()
        ordered = sorted(batch.samples, key=lambda item: item.seq)
        taken = ordered[: self.max_samples_per_batch]
        if len(ordered) > len(taken):
            rejected[BATCH_TOO_LARGE] += len(ordered) - len(taken)
        candidates: list[SequencedSample] = []
        duplicates = 0
        previous: int | None = None
        for item in taken:
            if item.seq == previous:  # the same seq twice in one batch
                duplicates += 1
                continue
            previous = item.seq
            at = item.sample.collected_at
            if isinstance(item.seq, bool) or not 0 <= item.seq <= MAX_SEQ:
                rejected[BAD_SEQUENCE_NUMBER] += 1
            elif at > now + FUTURE_TOLERANCE:
                rejected[SAMPLE_FROM_THE_FUTURE] += 1
            elif at < now - self.raw_retention:
                rejected[SAMPLE_TOO_OLD] += 1
            else:
                candidates.append(item)
        acked_seq = max(0, taken[-1].seq) if taken else 0
        dropped = min(max(0, int(batch.dropped)), MAX_DROPPED)

        with self._db.session() as session:
            if session.get(Agent, agent_id) is None:
                raise NotFound(f"no agent {agent_id}")
            fresh = self._insert_records(session, agent_id, candidates, now)
            duplicates += len(candidates) - len(fresh)
            points = self._points(agent_id, fresh, rejected)
            if points:
                session.connection().execute(sa_insert(table_of(MetricPoint)), points)
            self._count(
                session,
                agent_id,
                Counters(
                    received=len(batch.samples),
                    stored=len(fresh),
                    duplicates=duplicates,
                    # Deferred samples come again: only what is turned away for good counts.
                    rejected=sum(n for r, n in rejected.items() if r != BATCH_TOO_LARGE),
                    # A replayed batch repeats its `dropped`: count it with new samples only.
                    dropped_by_agent=dropped if fresh else 0,
                    last_sample_at=max((s.sample.collected_at for s in fresh), default=None),
                ),
            )
        if rejected:
            log.debug("agent %s telemetry: rejected %s", agent_id, dict(rejected))
        return IngestResult(
            stored=len(fresh), duplicates=duplicates, rejected=dict(rejected), acked_seq=acked_seq
        )

    def _insert_records(
        self, session: Session, agent_id: str, candidates: list[SequencedSample], now: datetime
    ) -> list[SequencedSample]:
        """Inserts the sample records that are new; answers those samples (the primary key
        decides, so a concurrent transaction with the same samples inserts each once)."""
        if not candidates:
            return []
        table = table_of(TelemetrySampleRecord)
        statement = (
            self._upsert_insert(table)
            .on_conflict_do_nothing(index_elements=[table.c.agent_id, table.c.seq])
            .returning(table.c.seq)
        )
        rows = [
            {
                "agent_id": agent_id,
                "seq": item.seq,
                "collected_at": item.sample.collected_at,
                "received_at": now,
                "notes": _notes(item.sample.notes),
            }
            for item in candidates
        ]
        inserted = set(session.connection().execute(statement, rows).scalars())
        return [item for item in candidates if item.seq in inserted]

    @staticmethod
    def _points(
        agent_id: str, samples: Iterable[SequencedSample], rejected: Counter[str]
    ) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        for item in samples:
            metrics = item.sample.metrics
            if len(metrics) > MAX_METRICS_PER_SAMPLE:
                rejected[TOO_MANY_METRICS] += len(metrics) - MAX_METRICS_PER_SAMPLE
                metrics = metrics[:MAX_METRICS_PER_SAMPLE]
            for metric in metrics:
                reason = reject_reason(metric)
                key = labels_key(metric.labels) if reason is None else ""
                if reason is None and len(key) > LABELS_KEY_CHARS:
                    reason = WRONG_LABELS
                if reason is not None:
                    rejected[reason] += 1
                    continue
                points.append(
                    {
                        "agent_id": agent_id,
                        "seq": item.seq,
                        "name": metric.name,
                        "labels": dict(metric.labels),
                        "labels_key": key,
                        "ts": item.sample.collected_at,
                        "value": float(metric.value),
                    }
                )
        return points

    def _count(self, session: Session, agent_id: str, add: Counters) -> None:
        if self._count_statement is None:  # built once: building it costs more than running it
            self._count_statement = self._counter_upsert()
        session.connection().execute(
            self._count_statement,
            {
                "agent_id": agent_id,
                "received": add.received,
                "stored": add.stored,
                "duplicates": add.duplicates,
                "rejected": add.rejected,
                "dropped_by_agent": add.dropped_by_agent,
                "last_sample_at": add.last_sample_at,
            },
        )

    def _counter_upsert(self) -> Any:
        table = table_of(TelemetryCounters)
        names = ("agent_id", "received", "stored", "duplicates", "rejected", "dropped_by_agent")
        values: dict[str, Any] = {name: bindparam(name) for name in names}
        values["last_sample_at"] = bindparam("last_sample_at", type_=UtcDateTime())
        statement = self._upsert_insert(table).values(**values)
        new, old = statement.excluded, table.c
        return statement.on_conflict_do_update(
            index_elements=[table.c.agent_id],
            set_={
                "received": old.received + new.received,
                "stored": old.stored + new.stored,
                "duplicates": old.duplicates + new.duplicates,
                "rejected": old.rejected + new.rejected,
                "dropped_by_agent": old.dropped_by_agent + new.dropped_by_agent,
                "last_sample_at": case(
                    (
                        and_(
                            new.last_sample_at.is_not(None),
                            or_(
                                old.last_sample_at.is_(None),
                                new.last_sample_at > old.last_sample_at,
                            ),
                        ),
                        new.last_sample_at,
                    ),
                    else_=old.last_sample_at,
                ),
            },
        )

    # -- reading --------------------------------------------------------------------------

    def latest(self, agent_id: str) -> Sample | None:
        """The agent's newest stored sample (by collected_at, then seq), or None."""
        with self._db.session() as session:
            record = session.exec(
                select(TelemetrySampleRecord)
                .where(TelemetrySampleRecord.agent_id == agent_id)
                .order_by(
                    col(TelemetrySampleRecord.collected_at).desc(),
                    col(TelemetrySampleRecord.seq).desc(),
                )
                .limit(1)
            ).first()
            if record is None:
                return None
            # name IN (...) lets the (agent_id, name, ts) index find the sample's points.
            rows = session.exec(
                select(MetricPoint.name, MetricPoint.value, MetricPoint.labels)
                .where(
                    MetricPoint.agent_id == agent_id,
                    col(MetricPoint.name).in_(list(METRICS)),
                    MetricPoint.ts == record.collected_at,
                    MetricPoint.seq == record.seq,
                )
                .order_by(col(MetricPoint.id))
            ).all()
        return Sample(
            collected_at=record.collected_at,
            metrics=tuple(Metric(name, value, labels) for name, value, labels in rows),
            notes=tuple(record.notes),
        )

    def series(
        self,
        agent_id: str,
        name: str,
        *,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> list[Series]:
        """The metric's series in [start, end): per label set, the average of each step bucket.

        Buckets start at `start`, `start + step`, ...; only buckets with data appear. Raw
        points count where they still exist, minute rollups (weighted by their count, placed
        at the minute's start) where they were compacted. `labels` keeps the series whose
        labels include all of these; None keeps every series. Sorted by labels.
        """
        spec = self._spec(name)
        start, end = aware_utc(start, "start"), aware_utc(end, "end")
        if start >= end:
            raise InvalidArgument("start must be before end")
        if step < MIN_STEP:
            raise InvalidArgument(f"step must be at least {MIN_STEP.total_seconds():g} s")
        step_ms = step // timedelta(milliseconds=1)
        buckets = math.ceil((end - start) / step)
        if buckets > MAX_BUCKETS:
            raise InvalidArgument(
                f"{buckets} buckets of {step.total_seconds():g} s: at most {MAX_BUCKETS}; "
                "use a longer step or a shorter range"
            )
        wanted = self._label_filter(spec, labels)
        start_ms = _epoch_ms(start)

        def bucket(column: Any) -> ColumnElement[int]:
            return (EpochMs(column) - start_ms) // step_ms

        raw_bucket = bucket(col(MetricPoint.ts)).label("bucket")
        raw = (
            select(
                col(MetricPoint.labels_key),
                raw_bucket,
                func.sum(MetricPoint.value),
                func.count(),
            )
            .where(
                MetricPoint.agent_id == agent_id,
                MetricPoint.name == name,
                col(MetricPoint.ts) >= start,
                col(MetricPoint.ts) < end,
            )
            .group_by(col(MetricPoint.labels_key), raw_bucket)
        )
        rollup_bucket = bucket(col(MetricRollup.minute)).label("bucket")
        rolled = (
            select(
                col(MetricRollup.labels_key),
                rollup_bucket,
                func.sum(MetricRollup.total),
                func.sum(MetricRollup.count),
            )
            .where(
                MetricRollup.agent_id == agent_id,
                MetricRollup.name == name,
                col(MetricRollup.minute) >= start,
                col(MetricRollup.minute) < end,
            )
            .group_by(col(MetricRollup.labels_key), rollup_bucket)
        )
        exact = wanted is not None and set(wanted) == set(spec.labels)
        if exact:
            assert wanted is not None
            key = labels_key(wanted)
            raw = raw.where(MetricPoint.labels_key == key)
            rolled = rolled.where(MetricRollup.labels_key == key)

        sums: dict[str, dict[int, list[float]]] = {}  # key -> bucket -> [total, count]
        with self._db.session() as session:
            for statement in (raw, rolled):
                for key, index, total, count in session.exec(statement).all():
                    if not count:
                        continue
                    index = min(max(int(index), 0), buckets - 1)
                    slot = sums.setdefault(key, {}).setdefault(index, [0.0, 0.0])
                    slot[0] += float(total)
                    slot[1] += float(count)

        result: list[Series] = []
        for key in sorted(sums):
            series_labels: dict[str, str] = json.loads(key)
            if wanted and not exact and any(series_labels.get(k) != v for k, v in wanted.items()):
                continue
            points = [
                (start + index * step, total / count)
                for index, (total, count) in sorted(sums[key].items())
            ]
            result.append(Series(labels=series_labels, points=points))
        return result

    @staticmethod
    def _spec(name: str) -> MetricSpec:
        spec = METRICS.get(name)
        if spec is None:
            raise InvalidArgument(f"unknown metric {name[:128]!r}")
        return spec

    @staticmethod
    def _label_filter(spec: MetricSpec, labels: Mapping[str, str] | None) -> dict[str, str] | None:
        if labels is None:
            return None
        unknown = sorted(set(labels) - set(spec.labels))
        if unknown:
            known = ", ".join(spec.labels) or "none"
            raise InvalidArgument(
                f"{spec.name} has no label {unknown[0][:64]!r} (its labels: {known})"
            )
        return dict(labels)

    def counters(self, agent_id: str) -> Counters:
        """The agent's counters; all zero when it never sent telemetry."""
        with self._db.session() as session:
            row = session.get(TelemetryCounters, agent_id)
        if row is None:
            return Counters()
        return Counters(
            received=row.received,
            stored=row.stored,
            duplicates=row.duplicates,
            rejected=row.rejected,
            dropped_by_agent=row.dropped_by_agent,
            last_sample_at=row.last_sample_at,
        )

    def totals(self) -> Counters:
        """The counters summed over every agent (`last_sample_at`: the newest of all)."""
        c = table_of(TelemetryCounters).c
        with self._db.session() as session:
            row = session.execute(
                sa_select(
                    func.coalesce(func.sum(c.received), 0),
                    func.coalesce(func.sum(c.stored), 0),
                    func.coalesce(func.sum(c.duplicates), 0),
                    func.coalesce(func.sum(c.rejected), 0),
                    func.coalesce(func.sum(c.dropped_by_agent), 0),
                    func.max(c.last_sample_at),
                )
            ).one()
        return Counters(
            received=int(row[0]),
            stored=int(row[1]),
            duplicates=int(row[2]),
            rejected=int(row[3]),
            dropped_by_agent=int(row[4]),
            last_sample_at=row[5],
        )

    # -- retention ------------------------------------------------------------------------

    def compact(self, now: datetime | None = None) -> CompactResult:
        """See `TelemetryRetention.compact`."""
        return self._retention.compact(now)
