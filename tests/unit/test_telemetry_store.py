"""Telemetry storage: dedupe by (agent, seq), bad input, series, compaction (SQLite, PostgreSQL)."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from common.errors import InvalidArgument, NotFound
from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane.db.database import Database
from controlplane.db.models import MetricPoint, MetricRollup, TelemetrySampleRecord
from controlplane.services import ControlPlaneServices
from controlplane.telemetry_retention import CompactResult
from controlplane.telemetry_store import (
    Counters,
    Series,
    TelemetryStore,
    labels_key,
)
from controlplane.telemetry_validation import (
    BATCH_TOO_LARGE,
    SAMPLE_FROM_THE_FUTURE,
    SAMPLE_TOO_OLD,
    UNKNOWN_METRIC,
    VALUE_NOT_A_NUMBER,
    VALUE_NOT_FINITE,
    VALUE_OUT_OF_RANGE,
    WRONG_LABELS,
)

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
CPU = "outpost_cpu_utilization_ratio"
MEMORY = "outpost_memory_used_bytes"
LOAD = "outpost_load_average"
DAY = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class FakeCertificate:
    serial: str = field(default_factory=lambda: uuid.uuid4().hex)
    not_before: datetime = T0 - timedelta(minutes=5)
    not_after: datetime = T0 + timedelta(days=30)
    pem: str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"


def enroll(services: ControlPlaneServices, name: str = "edge-1") -> str:
    token, _ = services.tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="test")
    agent_id = str(uuid.uuid4())
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=agent_id, now=T0)
        services.fleet.enroll(
            session, agent_id=agent_id, name=name, grant=grant, certificate=FakeCertificate()
        )
    return agent_id


def sample(
    seq: int, at: datetime, metrics: Iterable[Metric] = (), notes: Iterable[str] = ()
) -> SequencedSample:
    return SequencedSample(seq, Sample(at, tuple(metrics), tuple(notes)))


def machine(cpu: float = 0.25, memory: float = 1e9) -> list[Metric]:
    return [Metric(CPU, cpu, {"cpu": "total"}), Metric(MEMORY, memory)]


def batch(*samples: SequencedSample, dropped: int = 0) -> TelemetryBatch:
    return TelemetryBatch(tuple(samples), dropped)


@dataclass
class Env:
    services: ControlPlaneServices
    store: TelemetryStore
    clock: Clock
    agent: str

    def rows(self, model: type[MetricPoint | TelemetrySampleRecord | MetricRollup]) -> int:
        with self.services.db.session() as session:
            return int(session.exec(select(func.count()).select_from(model)).one())


@pytest.fixture
def env(database: Database) -> Env:
    clock = Clock()
    services = ControlPlaneServices.build(database, clock=clock)
    return Env(services, services.telemetry, clock, enroll(services))


# -- ingestion ------------------------------------------------------------------------------


def test_ingest_stores_acks_and_serves_the_latest_sample(env: Env) -> None:
    first = sample(1, T0 - timedelta(seconds=10), machine(0.5))
    second = sample(2, T0 - timedelta(seconds=5), machine(0.75, 2e9), notes=["no GPU: no driver"])
    result = env.store.ingest(env.agent, batch(first, second, dropped=3))
    assert (result.stored, result.duplicates, result.rejected, result.acked_seq) == (2, 0, {}, 2)
    assert env.rows(TelemetrySampleRecord) == 2
    assert env.rows(MetricPoint) == 4

    latest = env.store.latest(env.agent)
    assert latest == Sample(
        second.sample.collected_at, tuple(machine(0.75, 2e9)), ("no GPU: no driver",)
    )
    assert env.store.counters(env.agent) == Counters(
        received=2, stored=2, dropped_by_agent=3, last_sample_at=second.sample.collected_at
    )


def test_an_agent_without_telemetry_has_none(env: Env) -> None:
    assert env.store.latest(env.agent) is None
    assert env.store.counters(env.agent) == Counters()
    assert env.store.series(env.agent, CPU, start=T0 - DAY, end=T0, step=timedelta(hours=1)) == []


def test_an_unknown_agent_is_not_found(env: Env) -> None:
    with pytest.raises(NotFound):
        env.store.ingest(str(uuid.uuid4()), batch(sample(1, T0, machine())))
    assert env.rows(TelemetrySampleRecord) == 0


def test_a_replayed_batch_stores_nothing_new(env: Env) -> None:
    replay = batch(*(sample(seq, T0 - timedelta(seconds=60 - seq), machine()) for seq in (1, 2, 3)))
    assert env.store.ingest(env.agent, replay).stored == 3
    again = env.store.ingest(env.agent, replay)
    assert (again.stored, again.duplicates, again.rejected, again.acked_seq) == (0, 3, {}, 3)
    assert (env.rows(TelemetrySampleRecord), env.rows(MetricPoint)) == (3, 6)
    counters = env.store.counters(env.agent)
    assert (counters.received, counters.stored, counters.duplicates) == (6, 3, 3)


def test_gaps_order_and_repeats_within_a_batch(env: Env) -> None:
    at = T0 - timedelta(minutes=1)
    result = env.store.ingest(
        env.agent,
        batch(*(sample(seq, at + timedelta(seconds=seq), machine()) for seq in (9, 1, 5, 2, 5))),
    )
    assert (result.stored, result.duplicates, result.acked_seq) == (4, 1, 9)
    late = env.store.ingest(env.agent, batch(sample(3, at, machine()), sample(4, at, machine())))
    assert (late.stored, late.acked_seq) == (2, 4)
    with env.services.db.session() as session:
        seqs = session.exec(
            select(TelemetrySampleRecord.seq).order_by(col(TelemetrySampleRecord.seq))
        )
        assert list(seqs) == [1, 2, 3, 4, 5, 9]


def test_an_oversized_batch_is_stored_in_part_and_acked_up_to_the_last_stored(
    env: Env, database: Database
) -> None:
    store = TelemetryStore(database, max_samples_per_batch=5, clock=env.clock)
    samples = [sample(seq, T0 - timedelta(seconds=60 - seq), machine()) for seq in range(1, 9)]
    first = store.ingest(env.agent, batch(*samples))
    assert (first.stored, first.rejected, first.acked_seq) == (5, {BATCH_TOO_LARGE: 3}, 5)
    rest = store.ingest(env.agent, batch(*samples[first.acked_seq :]))
    assert (rest.stored, rest.duplicates, rest.rejected, rest.acked_seq) == (3, 0, {}, 8)
    assert env.rows(TelemetrySampleRecord) == 8
    counters = store.counters(env.agent)  # deferred samples were not lost: not rejected
    assert (counters.received, counters.stored, counters.rejected) == (11, 8, 0)


def test_bad_metrics_are_dropped_and_counted_and_the_rest_is_kept(env: Env) -> None:
    good = [
        Metric(CPU, 0.5, {"cpu": "total"}),
        Metric("outpost_disk_free_bytes", 1e9, {"path": "/var/lib/outpost \x00 ünï"}),
        Metric("outpost_temperature_celsius", -20.0, {"sensor": "acpi", "label": ""}),
    ]
    bad = [
        Metric(CPU, math.nan, {"cpu": "0"}),
        Metric(CPU, math.inf, {"cpu": "1"}),
        Metric(MEMORY, -1.0),
        Metric(CPU, 7.5, {"cpu": "total"}),  # a ratio of 750 %
        Metric(MEMORY, 1e30),  # absurd
        Metric("outpost_made_up", 1.0),
        Metric("'; DROP TABLE metric_points; --", 1.0),
        Metric(CPU, 0.5),  # its label is missing
        Metric(MEMORY, 1.0, {"extra": "x"}),
        Metric(CPU, "0.5", {"cpu": "total"}),  # type: ignore[arg-type]
    ]
    result = env.store.ingest(
        env.agent, batch(sample(1, T0, bad[:4] + good + bad[4:], notes=["n\x00te", "x" * 5000]))
    )
    assert (result.stored, result.acked_seq) == (1, 1)
    assert result.rejected == {
        VALUE_NOT_FINITE: 2,
        VALUE_OUT_OF_RANGE: 3,
        UNKNOWN_METRIC: 2,
        WRONG_LABELS: 2,
        VALUE_NOT_A_NUMBER: 1,
    }
    latest = env.store.latest(env.agent)
    assert latest is not None
    assert latest.metrics == tuple(good)
    assert latest.notes[0] == "n\N{REPLACEMENT CHARACTER}te"
    assert len(latest.notes[1]) == 500
    assert env.store.counters(env.agent).rejected == 10


def test_samples_from_the_future_or_too_old_are_rejected_but_acked(env: Env) -> None:
    result = env.store.ingest(
        env.agent,
        batch(
            sample(1, T0 - DAY - timedelta(seconds=1), machine()),
            sample(2, T0 - DAY + timedelta(seconds=1), machine()),
            sample(3, T0 + timedelta(minutes=4), machine()),
            sample(4, T0 + timedelta(minutes=6), machine()),
        ),
    )
    assert result.stored == 2
    assert result.rejected == {SAMPLE_TOO_OLD: 1, SAMPLE_FROM_THE_FUTURE: 1}
    assert result.acked_seq == 4
    with env.services.db.session() as session:
        seqs = session.exec(
            select(TelemetrySampleRecord.seq).order_by(col(TelemetrySampleRecord.seq))
        )
        assert list(seqs) == [2, 3]
    counters = env.store.counters(env.agent)
    assert (counters.received, counters.stored, counters.rejected) == (4, 2, 2)
    assert counters.last_sample_at == T0 + timedelta(minutes=4)


def test_concurrent_ingestion_of_the_same_batches_stores_each_sample_once(env: Env) -> None:
    rounds, threads, per_batch = 3, 4, 40
    results = []
    lock = threading.Lock()
    for round_ in range(rounds):
        first = round_ * per_batch + 1
        shared = batch(
            *(
                sample(seq, T0 - timedelta(seconds=1000 - seq), machine())
                for seq in range(first, first + per_batch)
            )
        )
        barrier = threading.Barrier(threads)

        def run(shared: TelemetryBatch = shared, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            result = env.store.ingest(env.agent, shared)
            with lock:
                results.append(result)

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert len(results) == rounds * threads
    assert sum(r.stored for r in results) == rounds * per_batch
    assert sum(r.duplicates for r in results) == rounds * per_batch * (threads - 1)
    assert {r.acked_seq for r in results} == {per_batch * (i + 1) for i in range(rounds)}
    assert env.rows(TelemetrySampleRecord) == rounds * per_batch
    assert env.rows(MetricPoint) == rounds * per_batch * 2
    counters = env.store.counters(env.agent)
    assert (counters.received, counters.stored) == (
        rounds * per_batch * threads,
        rounds * per_batch,
    )
    assert counters.duplicates == rounds * per_batch * (threads - 1)


def test_totals_sum_every_agent(env: Env) -> None:
    other = enroll(env.services, "edge-2")
    env.store.ingest(env.agent, batch(sample(1, T0, machine()), dropped=2))
    env.store.ingest(other, batch(sample(1, T0, machine()), sample(2, T0, [Metric("x", 1)])))
    env.store.ingest(other, batch(sample(2, T0, machine()), dropped=-5))  # nonsense: counts as 0
    assert env.store.totals() == Counters(
        received=4, stored=3, duplicates=1, rejected=1, dropped_by_agent=2, last_sample_at=T0
    )


# -- series and compaction ------------------------------------------------------------------

START = T0 - timedelta(minutes=10)  # a whole minute
STEP = timedelta(seconds=5)


def cpu_value(i: int) -> float:
    return (i % 7) / 10


def load_value(i: int, period: str) -> float:
    return i * (2 if period == "5m" else 1) / 100


def fill(env: Env, samples: int = 120) -> None:
    """Ten minutes of samples every 5 s: cpu total, load 1m and 5m."""
    env.store.ingest(
        env.agent,
        batch(
            *(
                sample(
                    i + 1,
                    START + i * STEP,
                    [
                        Metric(CPU, cpu_value(i), {"cpu": "total"}),
                        Metric(LOAD, load_value(i, "1m"), {"period": "1m"}),
                        Metric(LOAD, load_value(i, "5m"), {"period": "5m"}),
                    ],
                )
                for i in range(samples)
            )
        ),
    )


def expected(values: list[float], per_bucket: int) -> list[float]:
    return [
        sum(values[i : i + per_bucket]) / len(values[i : i + per_bucket])
        for i in range(0, len(values), per_bucket)
    ]


def averages(series: Series) -> list[float]:
    return [value for _, value in series.points]


def assert_same(found: list[Series], wanted: list[Series]) -> None:
    """Equal labels and bucket starts; averages up to the order the database summed in."""
    assert [s.labels for s in found] == [s.labels for s in wanted]
    for new, old in zip(found, wanted, strict=True):
        assert [at for at, _ in new.points] == [at for at, _ in old.points]
        assert averages(new) == pytest.approx(averages(old))


def test_series_averages_per_step_and_per_label_set(env: Env) -> None:
    fill(env)
    step = timedelta(minutes=1)
    found = env.store.series(env.agent, LOAD, start=START, end=T0, step=step)
    assert [s.labels for s in found] == [{"period": "1m"}, {"period": "5m"}]
    for series in found:
        assert [at for at, _ in series.points] == [START + i * step for i in range(10)]
        values = [load_value(i, series.labels["period"]) for i in range(120)]
        assert averages(series) == pytest.approx(expected(values, 12))
    only = env.store.series(
        env.agent, LOAD, start=START, end=T0, step=step, labels={"period": "5m"}
    )
    assert_same(only, found[1:])
    # Unaligned range and step: buckets start at `start`; the first holds 7 samples.
    odd = env.store.series(
        env.agent,
        CPU,
        start=START + timedelta(seconds=25),
        end=START + timedelta(seconds=95),
        step=timedelta(seconds=35),
        labels={},
    )
    assert [at for at, _ in odd[0].points] == [START + timedelta(seconds=s) for s in (25, 60)]
    assert averages(odd[0]) == pytest.approx(
        [sum(cpu_value(i) for i in range(5, 12)) / 7, sum(cpu_value(i) for i in range(12, 19)) / 7]
    )
    assert (
        env.store.series(env.agent, CPU, start=START, end=T0, step=step, labels={"cpu": "0"}) == []
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "outpost_made_up"}, "unknown metric"),
        ({"start": T0, "end": T0}, "start must be before end"),
        ({"step": timedelta(milliseconds=999)}, "at least 1 s"),
        ({"start": T0 - timedelta(seconds=10_001), "step": timedelta(seconds=1)}, "10001 buckets"),
        ({"labels": {"core": "0"}}, "has no label 'core'"),
        ({"start": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_series_refuses_bad_arguments(env: Env, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "name": CPU,
        "start": T0 - DAY,
        "end": T0,
        "step": timedelta(minutes=1),
        "labels": None,
    }
    arguments.update(kwargs)
    with pytest.raises(InvalidArgument, match=message):
        env.store.series(env.agent, **arguments)  # type: ignore[arg-type]


def rollups(env: Env) -> list[tuple[str, str, datetime, int, float, float, float, dict[str, str]]]:
    with env.services.db.session() as session:
        rows = session.exec(
            select(MetricRollup).order_by(
                col(MetricRollup.name), col(MetricRollup.labels_key), col(MetricRollup.minute)
            )
        ).all()
        return [
            (r.name, r.labels_key, r.minute, r.count, r.total, r.minimum, r.maximum, r.labels)
            for r in rows
        ]


def test_compact_rolls_up_deletes_and_is_idempotent(env: Env) -> None:
    fill(env)
    step = timedelta(minutes=1)
    before = env.store.series(env.agent, LOAD, start=START, end=T0, step=step)
    # Raw points older than START + 5 min 30 s go: minute 5 is split between rollup and raw.
    cut = START + timedelta(minutes=5, seconds=30) + DAY
    result = env.store.compact(cut)
    assert result == CompactResult(rolled_up=3 * 6, raw_deleted=3 * 66, rollups_deleted=0)
    assert env.store.compact(cut) == CompactResult(0, 0, 0)
    assert env.rows(TelemetrySampleRecord) == 120 - 66
    first = rollups(env)
    assert len(first) == 18
    name, key, minute, count, total, low, high, labels = first[0]
    assert (name, key, minute, count, labels) == (
        CPU,
        labels_key({"cpu": "total"}),
        START,
        12,
        {"cpu": "total"},
    )
    values = [cpu_value(i) for i in range(12)]
    assert (total, low, high) == pytest.approx((sum(values), min(values), max(values)))
    assert [row[3] for row in first if row[0] == CPU] == [12, 12, 12, 12, 12, 6]

    # Raw and rolled-up points together give the same averages as before.
    assert_same(env.store.series(env.agent, LOAD, start=START, end=T0, step=step), before)

    # The rest of minute 5 is added to its rollup, not counted again.
    later = START + timedelta(minutes=6) + DAY
    assert env.store.compact(later) == CompactResult(
        rolled_up=3, raw_deleted=3 * 6, rollups_deleted=0
    )
    assert env.store.compact(later) == CompactResult(0, 0, 0)
    second = rollups(env)
    assert [row[3] for row in second if row[0] == CPU] == [12] * 6
    minute5 = [cpu_value(i) for i in range(60, 72)]
    assert second[5][4:7] == pytest.approx((sum(minute5), min(minute5), max(minute5)))
    assert_same(env.store.series(env.agent, LOAD, start=START, end=T0, step=step), before)

    # Everything raw is gone a day later; rollups go after their retention.
    assert env.store.compact(T0 + DAY).raw_deleted == 3 * 48
    assert (env.rows(MetricPoint), env.rows(TelemetrySampleRecord)) == (0, 0)
    assert env.store.latest(env.agent) is None
    assert env.store.compact(START + timedelta(minutes=3) + timedelta(days=30)) == CompactResult(
        0, 0, 3 * 3
    )
    assert env.rows(MetricRollup) == 3 * 7
    assert env.store.compact(T0 + timedelta(days=31)).rollups_deleted == 3 * 7


def test_series_at_a_step_shorter_than_a_minute_uses_minute_starts_for_rollups(env: Env) -> None:
    fill(env, samples=24)  # two minutes
    env.store.compact(START + timedelta(minutes=1) + DAY)
    found = env.store.series(
        env.agent, CPU, start=START, end=START + timedelta(minutes=2), step=timedelta(seconds=30)
    )
    values = [cpu_value(i) for i in range(24)]
    assert [at for at, _ in found[0].points] == [
        START,
        START + timedelta(seconds=60),
        START + timedelta(seconds=90),
    ]
    assert averages(found[0]) == pytest.approx(
        [sum(values[:12]) / 12, sum(values[12:18]) / 6, sum(values[18:]) / 6]
    )


def test_store_settings_are_checked(database: Database) -> None:
    with pytest.raises(InvalidArgument, match="rollup_retention"):
        TelemetryStore(database, raw_retention=DAY, rollup_retention=timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="max_samples_per_batch"):
        TelemetryStore(database, max_samples_per_batch=0)
